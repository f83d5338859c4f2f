"""Stacking and evaluation from the training jobs' prediction files (no training here)."""

import json
import logging

import numpy as np
import pandas as pd
import pytest

from medflow.errors import InputError
from medflow.mrnet import evaluation as ev

PLANES = ("axial", "coronal", "sagittal")


@pytest.fixture
def jobs(tmp_path):
    """Fold file (2 folds over 40 train exams, 20 valid) and prediction CSVs as mrnet_train writes them.

    Held-out and valid probabilities share one distribution (coronal the most informative plane); the
    all-train models' in-sample probabilities are nearly separable, axial the most (overconfident on
    their own training exams, as real models are), so an in-sample fit weighs the planes differently.
    Each file lists its exams in its own order, so stacking must align the planes by exam id.
    Returns (folder, plane -> fold -> CSV path, {"heldout"/"in_sample": plane -> {id: prob}}).
    """
    rng = np.random.default_rng(0)
    train = [f"{i:04d}" for i in range(40)]
    valid = [f"{i:04d}" for i in range(40, 60)]
    label = {e: int(i % 3 == 0) for i, e in enumerate(train + valid)}
    folds = pd.DataFrame({"id": train + valid, "split": ["train"] * 40 + ["valid"] * 20,
                          "fold": [str(i % 2) for i in range(40)] + ["valid"] * 20})
    folds.to_csv(tmp_path / "folds.csv", index=False)
    strength = {"axial": 0.1, "coronal": 0.5, "sagittal": 0.3}
    in_sample_strength = {"axial": 0.8, "coronal": 0.4, "sagittal": 0.6}

    def prob(ids, plane, in_sample=False):
        if in_sample:
            return [float(np.clip(0.5 + in_sample_strength[plane] * (label[e] - 0.5) + rng.normal(0, 0.05), 0, 1)) for e in ids]
        return [float(np.clip(0.3 + strength[plane] * label[e] + rng.normal(0, 0.15), 0, 1)) for e in ids]

    def write(df, path):
        df.sample(frac=1, random_state=int(rng.integers(1 << 31))).to_csv(path, index=False)

    preds, truth = {}, {"heldout": {}, "in_sample": {}}
    for plane in PLANES:
        preds[plane], truth["heldout"][plane] = {}, {}
        for fold in ("0", "1"):
            ids = [e for e, f in zip(train, folds["fold"]) if f == fold]
            df = pd.DataFrame({"id": ids, "role": "heldout", "label": [label[e] for e in ids], "prob": prob(ids, plane)})
            truth["heldout"][plane].update(zip(df["id"], df["prob"]))
            preds[plane][fold] = tmp_path / f"{plane}_{fold}.csv"
            write(df, preds[plane][fold])
        in_sample = pd.DataFrame({"id": train, "role": "in_sample", "label": [label[e] for e in train],
                                  "prob": prob(train, plane, in_sample=True)})
        truth["in_sample"][plane] = dict(zip(in_sample["id"], in_sample["prob"]))
        df = pd.concat([pd.DataFrame({"id": valid, "role": "valid", "label": [label[e] for e in valid], "prob": prob(valid, plane)}),
                        in_sample])
        preds[plane]["all"] = tmp_path / f"{plane}_all.csv"
        write(df, preds[plane]["all"])
    truth["label"] = label
    return tmp_path, preds, truth


def _outputs(d):
    return ev.Outputs(d / "metrics.json", d / "predictions.csv", d / "roc.png", d / "stacker.json")


def test_evaluate_task_writes_metrics_predictions_roc_and_stacker(jobs, caplog):
    d, preds, truth = jobs
    caplog.set_level(logging.INFO, logger="medflow.mrnet.evaluate")
    m = ev.evaluate_task("acl", preds, d / "folds.csv", _outputs(d), tracking=False)  # the defaults
    assert json.loads((d / "metrics.json").read_text()) == m
    assert m["task"] == "acl"
    st = m["stacking"]
    assert (st["C"], st["class_weight"], st["planes"]) == (1.0, "balanced", list(PLANES))
    coef, intercept = _reference_fit(truth, "heldout", C=1.0)
    np.testing.assert_allclose(st["coef"], coef, rtol=1e-4, atol=1e-6)
    # The rule log's one-line summary: task, each plane's and the stack's valid AUC, how the stacker was fitted.
    aucs = ", ".join(f"{p} {m['planes'][p]['auc']:.3f}" for p in PLANES)
    assert caplog.messages[-1] == (f"acl: valid AUC {aucs} | stacked {m['stacked']['auc']:.3f} (stacker fitted out_of_fold "
                                   f"on 40 exams, coef {[round(c, 3) for c in st['coef']]})")
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
    assert st.extra == {"task": "acl"}
    np.testing.assert_allclose(st.predict_proba(table), table["stacked"], atol=2e-6)


def test_in_sample_stacking_uses_the_all_train_models_only(jobs):
    d, preds, _ = jobs
    only_all = {p: {"all": f["all"]} for p, f in preds.items()}
    m = ev.evaluate_task("acl", only_all, d / "folds.csv", _outputs(d), fit_on="in_sample", tracking=False)
    assert m["stacking"]["fit_on"] == "in_sample" and m["stacking"]["n_fit"] == 40
    with pytest.raises(ValueError, match="^no out-of-fold prediction files: "):
        ev.evaluate_task("acl", only_all, d / "folds.csv", _outputs(d), fit_on="out_of_fold", tracking=False)


def test_a_fold_model_predicting_its_own_training_exam_is_refused(jobs):
    d, preds, _ = jobs
    bad = pd.read_csv(preds["axial"]["0"], dtype={"id": str})
    bad.loc[0, "id"] = "0001"  # an exam of fold 1, i.e. one fold 0's model trained on
    bad.to_csv(preds["axial"]["0"], index=False)
    with pytest.raises(InputError, match="do not match fold 0") as err:
        ev.evaluate_task("acl", preds, d / "folds.csv", _outputs(d), tracking=False)
    assert err.value.path == str(preds["axial"]["0"])


def test_summary_table(jobs):
    d, preds, _ = jobs
    paths = {}
    for task in ("abnormal", "acl", "meniscus"):
        (d / task).mkdir()
        ev.evaluate_task(task, preds, d / "folds.csv", _outputs(d / task), tracking=False)
        paths[task] = d / task / "metrics.json"
    table = ev.summarise(paths, d / "summary.csv")
    assert table["task"].tolist() == ["abnormal", "acl", "meniscus"]
    assert {"auc_axial", "auc_coronal", "auc_sagittal", "auc_stacked", "sensitivity_stacked"} <= set(table.columns)
    assert pd.read_csv(d / "summary.csv").shape == (3, len(table.columns))


def _reference_fit(truth, rows: str, C: float, class_weight: str | None = "balanced"):
    """scikit-learn's logistic regression on the fixture's own ``rows`` probabilities (``heldout``:
    the fold models' held-out rows concatenated; ``in_sample``: the all-train models'), one row per
    train exam with its planes' probabilities side by side -> (coef (3,), intercept)."""
    from sklearn.linear_model import LogisticRegression

    ids = sorted(truth[rows]["axial"])
    X = np.array([[truth[rows][p][e] for p in PLANES] for e in ids])
    y = np.array([truth["label"][e] for e in ids])
    lr = LogisticRegression(C=C, class_weight=class_weight).fit(X, y)
    return lr.coef_[0], lr.intercept_[0]


def test_out_of_fold_stacker_is_fitted_on_the_held_out_rows(jobs):
    """The stacker reported as out_of_fold has the coefficients of a fit on the fold models' held-out
    rows, not of one on the (overconfident) in-sample rows; in_sample has the in-sample fit's."""
    from medflow.mrnet.stacking import Stacker

    d, preds, truth = jobs
    C = 0.5
    fits = {rows: _reference_fit(truth, rows, C) for rows in ("heldout", "in_sample")}
    # The fixture makes the two fits clearly different: coronal leads held out, axial in sample.
    assert np.argmax(fits["heldout"][0]) == 1 and np.argmax(fits["in_sample"][0]) == 0
    assert np.abs(fits["heldout"][0] - fits["in_sample"][0]).max() > 1.0
    for fit_on, rows in (("out_of_fold", "heldout"), ("in_sample", "in_sample")):
        (d / fit_on).mkdir()
        m = ev.evaluate_task("acl", preds, d / "folds.csv", _outputs(d / fit_on), fit_on=fit_on, C=C, tracking=False)
        st = Stacker.load(d / fit_on / "stacker.json")
        coef, intercept = fits[rows]
        for got in (m["stacking"], {"coef": st.coef, "intercept": st.intercept}):
            np.testing.assert_allclose(got["coef"], coef, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(got["intercept"], intercept, rtol=1e-4, atol=1e-6)
        other = fits["in_sample" if rows == "heldout" else "heldout"]
        assert np.abs(np.asarray(st.coef) - other[0]).max() > 1.0
        assert (st.fit_on, st.C, st.n_fit, st.planes) == (fit_on, C, 40, list(PLANES))
        assert (m["stacking"]["n_fit"], m["stacking"]["C"]) == (40, C)
        # The reported fit-set AUCs are those of the rows the stacker was fitted on.
        from sklearn.metrics import roc_auc_score

        ids = sorted(truth[rows]["axial"])
        for p in PLANES:
            want = roc_auc_score([truth["label"][e] for e in ids], [truth[rows][p][e] for e in ids])
            assert m["stacking"]["fit_set_auc"][p] == pytest.approx(want, abs=1e-9)
    # The tutorial's unweighted fit, when asked for.
    m = ev.evaluate_task("acl", preds, d / "folds.csv", _outputs(d), C=C, class_weight="none", tracking=False)
    coef, intercept = _reference_fit(truth, "heldout", C, class_weight=None)
    np.testing.assert_allclose(m["stacking"]["coef"], coef, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m["stacking"]["intercept"], intercept, rtol=1e-4, atol=1e-6)
    assert m["stacking"]["class_weight"] == "none"


def test_incomplete_predictions_are_refused_not_stacked_on_fewer_exams(jobs):
    """A fold model's predictions missing, or one plane predicting exams the others did not: an error
    naming the problem, never a stacker fitted or evaluated on whatever exams happen to be common."""
    d, preds, _ = jobs
    no_fold_1 = {p: {f: path for f, path in by.items() if f != "1"} for p, by in preds.items()}
    with pytest.raises(ValueError, match=r"no out-of-fold prediction for 20 train exams \(folds given: \['0'\]\)"):
        ev.evaluate_task("acl", no_fold_1, d / "folds.csv", _outputs(d), tracking=False)
    extra = pd.read_csv(preds["coronal"]["all"], dtype={"id": str})
    extra = pd.concat([extra, pd.DataFrame({"id": ["0060"], "role": ["valid"], "label": [0], "prob": [0.2]})])
    extra.to_csv(preds["coronal"]["all"], index=False)
    with pytest.raises(ValueError, match="plane predictions cover different exams"):
        ev.evaluate_task("acl", preds, d / "folds.csv", _outputs(d), tracking=False)
    # One plane lists a valid exam twice and misses another: as many rows as the others, not the same exams.
    dup = pd.read_csv(preds["axial"]["all"], dtype={"id": str})
    dup.loc[dup["id"] == "0041", "id"] = "0040"  # both negatives
    dup.to_csv(preds["axial"]["all"], index=False)
    extra.loc[extra["id"] != "0060"].to_csv(preds["coronal"]["all"], index=False)
    with pytest.raises(ValueError, match="not a one-to-one merge"):
        ev.evaluate_task("acl", preds, d / "folds.csv", _outputs(d), tracking=False)
    with pytest.raises(ValueError, match="mrnet.stacking.fit_on must be one of"):
        ev.evaluate_task("acl", preds, d / "folds.csv", _outputs(d), fit_on="in-sample", tracking=False)
