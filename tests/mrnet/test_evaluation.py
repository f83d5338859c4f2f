"""Stacking and evaluation from the training jobs' prediction files (no training here)."""

import json

import numpy as np
import pandas as pd
import pytest

from medflow.errors import InputError
from medflow.mrnet import evaluation as ev

PLANES = ("axial", "coronal", "sagittal")


@pytest.fixture
def jobs(tmp_path):
    """Fold file (2 folds over 40 train exams, 20 valid) and prediction CSVs as mrnet_train writes them."""
    rng = np.random.default_rng(0)
    train = [f"{i:04d}" for i in range(40)]
    valid = [f"{i:04d}" for i in range(40, 60)]
    label = {e: int(i % 3 == 0) for i, e in enumerate(train + valid)}
    folds = pd.DataFrame({"id": train + valid, "split": ["train"] * 40 + ["valid"] * 20,
                          "fold": [str(i % 2) for i in range(40)] + ["valid"] * 20})
    folds.to_csv(tmp_path / "folds.csv", index=False)
    strength = {"axial": 0.1, "coronal": 0.5, "sagittal": 0.3}

    def prob(ids, plane):
        return [float(np.clip(0.3 + strength[plane] * label[e] + rng.normal(0, 0.15), 0, 1)) for e in ids]

    preds = {}
    for plane in PLANES:
        preds[plane] = {}
        for fold in ("0", "1"):
            ids = [e for e, f in zip(train, folds["fold"]) if f == fold]
            df = pd.DataFrame({"id": ids, "role": "heldout", "label": [label[e] for e in ids], "prob": prob(ids, plane)})
            preds[plane][fold] = tmp_path / f"{plane}_{fold}.csv"
            df.to_csv(preds[plane][fold], index=False)
        df = pd.concat([pd.DataFrame({"id": valid, "role": "valid", "label": [label[e] for e in valid], "prob": prob(valid, plane)}),
                        pd.DataFrame({"id": train, "role": "in_sample", "label": [label[e] for e in train], "prob": prob(train, plane)})])
        preds[plane]["all"] = tmp_path / f"{plane}_all.csv"
        df.to_csv(preds[plane]["all"], index=False)
    return tmp_path, preds


def _outputs(d):
    return ev.Outputs(d / "metrics.json", d / "predictions.csv", d / "roc.png", d / "stacker.json")


def test_evaluate_task_writes_metrics_predictions_roc_and_stacker(jobs):
    d, preds = jobs
    m = ev.evaluate_task("acl", preds, d / "folds.csv", _outputs(d), fit_on="out_of_fold", tracking=False)
    assert json.loads((d / "metrics.json").read_text()) == m
    assert m["n_valid"] == 20 and m["n_valid_positive"] == sum(i % 3 == 0 for i in range(40, 60))
    assert set(m["planes"]) == set(PLANES)
    for rep in [*m["planes"].values(), m["stacked"]]:
        assert {"auc", "accuracy", "sensitivity", "specificity"} <= set(rep)
    assert m["planes"]["coronal"]["auc"] > 0.8 and m["stacked"]["auc"] > 0.8
    assert m["stacking"]["fit_on"] == "out_of_fold" and m["stacking"]["n_fit"] == 40
    table = pd.read_csv(d / "predictions.csv", dtype={"id": str})
    assert table.columns.tolist() == ["id", "label", "axial", "coronal", "sagittal", "stacked"]
    assert table["id"].tolist() == [f"{i:04d}" for i in range(40, 60)]
    assert (d / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from medflow.mrnet.stacking import Stacker

    st = Stacker.load(d / "stacker.json")
    np.testing.assert_allclose(st.predict_proba(table), table["stacked"], atol=2e-6)


def test_in_sample_stacking_uses_the_all_train_models_only(jobs):
    d, preds = jobs
    only_all = {p: {"all": f["all"]} for p, f in preds.items()}
    m = ev.evaluate_task("acl", only_all, d / "folds.csv", _outputs(d), fit_on="in_sample", tracking=False)
    assert m["stacking"]["fit_on"] == "in_sample" and m["stacking"]["n_fit"] == 40
    with pytest.raises(ValueError, match="no out-of-fold prediction files"):
        ev.evaluate_task("acl", only_all, d / "folds.csv", _outputs(d), fit_on="out_of_fold", tracking=False)


def test_a_fold_model_predicting_its_own_training_exam_is_refused(jobs):
    d, preds = jobs
    bad = pd.read_csv(preds["axial"]["0"], dtype={"id": str})
    bad.loc[0, "id"] = "0001"  # an exam of fold 1, i.e. one fold 0's model trained on
    bad.to_csv(preds["axial"]["0"], index=False)
    with pytest.raises(InputError, match="do not match fold 0") as err:
        ev.evaluate_task("acl", preds, d / "folds.csv", _outputs(d), tracking=False)
    assert err.value.path == str(preds["axial"]["0"])


def test_summary_table(jobs):
    d, preds = jobs
    paths = {}
    for task in ("abnormal", "acl", "meniscus"):
        (d / task).mkdir()
        ev.evaluate_task(task, preds, d / "folds.csv", _outputs(d / task), tracking=False)
        paths[task] = d / task / "metrics.json"
    table = ev.summarise(paths, d / "summary.csv")
    assert table["task"].tolist() == ["abnormal", "acl", "meniscus"]
    assert {"auc_axial", "auc_coronal", "auc_sagittal", "auc_stacked", "sensitivity_stacked"} <= set(table.columns)
    assert pd.read_csv(d / "summary.csv").shape == (3, len(table.columns))
