"""Stacking and evaluation from the training jobs' prediction files (no training here)."""

import json
import logging

import numpy as np
import pandas as pd
import pytest

from medflow import io
from medflow.errors import InputError
from medflow.mrnet import evaluate as ev
from medflow.params import from_config
from medflow.train import Job

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
    folds = pd.DataFrame(
        {
            "id": train + valid,
            "split": ["train"] * 40 + ["valid"] * 20,
            "fold": [str(i % 2) for i in range(40)] + ["valid"] * 20,
        }
    )
    folds.to_csv(tmp_path / "folds.csv", index=False)
    strength = {"axial": 0.1, "coronal": 0.5, "sagittal": 0.3}
    in_sample_strength = {"axial": 0.8, "coronal": 0.4, "sagittal": 0.6}

    def prob(ids, plane, in_sample=False):
        if in_sample:
            return [
                float(np.clip(0.5 + in_sample_strength[plane] * (label[e] - 0.5) + rng.normal(0, 0.05), 0, 1))
                for e in ids
            ]
        return [float(np.clip(0.3 + strength[plane] * label[e] + rng.normal(0, 0.15), 0, 1)) for e in ids]

    def write(df, path):
        df.sample(frac=1, random_state=int(rng.integers(1 << 31))).to_csv(path, index=False)

    preds, truth = {}, {"heldout": {}, "in_sample": {}}
    for plane in PLANES:
        preds[plane], truth["heldout"][plane] = {}, {}
        for fold in ("0", "1"):
            ids = [e for e, f in zip(train, folds["fold"]) if f == fold]
            df = pd.DataFrame(
                {"id": ids, "role": "heldout", "label": [label[e] for e in ids], "prob": prob(ids, plane)}
            )
            truth["heldout"][plane].update(zip(df["id"], df["prob"]))
            preds[plane][fold] = tmp_path / f"{plane}_{fold}.csv"
            write(df, preds[plane][fold])
        in_sample = pd.DataFrame(
            {
                "id": train,
                "role": "in_sample",
                "label": [label[e] for e in train],
                "prob": prob(train, plane, in_sample=True),
            }
        )
        truth["in_sample"][plane] = dict(zip(in_sample["id"], in_sample["prob"]))
        df = pd.concat(
            [
                pd.DataFrame(
                    {"id": valid, "role": "valid", "label": [label[e] for e in valid], "prob": prob(valid, plane)}
                ),
                in_sample,
            ]
        )
        preds[plane]["all"] = tmp_path / f"{plane}_all.csv"
        write(df, preds[plane]["all"])
    truth["label"] = label
    return tmp_path, preds, truth


def _outputs(d):
    return {
        "metrics": d / "metrics.json",
        "predictions": d / "predictions.csv",
        "roc": d / "roc.png",
        "stacker": d / "stacker.json",
    }


def _evaluate(d, preds, out=None, task="acl", *, bootstrap=None, seed=0, **stacking):
    """``ev.evaluate`` as the rule calls it: the plane x fold files of ``preds`` (plane -> fold -> CSV) as
    flat lists, plane by plane, with a train.json per job; ``stacking``: the ``mrnet.evaluate`` block."""
    planes, folds = list(preds), list(next(iter(preds.values())))
    summaries = []
    for plane in planes:
        for fold in folds:
            summaries.append(d / f"{plane}_{fold}_train.json")
            io.write_json(summaries[-1], {"mlflow_run_id": ""})
    inputs = {
        "folds": d / "folds.csv",
        "predictions": [preds[p][f] for p in planes for f in folds],
        "summaries": summaries,
    }
    params = from_config(
        ev.EvaluateParams,
        {
            "task": task,
            "planes": planes,
            "folds": folds,
            "evaluate": stacking,
            "bootstrap": bootstrap or {"bootstrap_samples": 200, "confidence": 0.95},
        },
    )
    return ev.evaluate(inputs, _outputs(out or d), params, Job(seed=seed, track=False))


def test_evaluate_writes_metrics_predictions_roc_and_stacker(jobs, caplog):
    d, preds, truth = jobs
    caplog.set_level(logging.INFO, logger="medflow.mrnet.evaluate")
    m = _evaluate(d, preds)  # the defaults
    assert json.loads((d / "metrics.json").read_text()) == m
    assert m["task"] == "acl"
    st = m["stacking"]
    assert (st["C"], st["class_weight"], st["planes"]) == (1.0, "balanced", list(PLANES))
    coef, intercept = _reference_fit(truth, "heldout", C=1.0)
    np.testing.assert_allclose(st["coef"], coef, rtol=1e-4, atol=1e-6)
    # The rule log's one-line summary: task, each plane's and the stack's valid AUC, how the stacker was fitted.
    aucs = ", ".join(f"{p} {m['planes'][p]['auc']:.3f}" for p in PLANES)
    assert caplog.messages[-1] == (
        f"acl: valid AUC {aucs} | stacked {m['stacked']['auc']:.3f} (stacker fitted out_of_fold "
        f"on 40 exams, coef {[round(c, 3) for c in st['coef']]})"
    )
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
    assert st.extra == {"task": "acl", "pipeline": "mrnet"}  # no checkpoints given: no hashes recorded
    np.testing.assert_allclose(st.predict_proba(table), table["stacked"], atol=2e-6)


def test_in_sample_stacking_uses_the_all_train_models_only(jobs):
    d, preds, _ = jobs
    only_all = {p: {"all": f["all"]} for p, f in preds.items()}
    m = _evaluate(d, only_all, fit_on="in_sample")
    assert m["stacking"]["fit_on"] == "in_sample" and m["stacking"]["n_fit"] == 40
    with pytest.raises(ValueError, match="^no out-of-fold prediction files: "):
        _evaluate(d, only_all, fit_on="out_of_fold")


def test_a_fold_model_predicting_its_own_training_exam_is_refused(jobs):
    d, preds, _ = jobs
    bad = pd.read_csv(preds["axial"]["0"], dtype={"id": str})
    bad.loc[0, "id"] = "0001"  # an exam of fold 1, i.e. one fold 0's model trained on
    bad.to_csv(preds["axial"]["0"], index=False)
    with pytest.raises(InputError, match="do not match fold 0") as err:
        _evaluate(d, preds)
    assert err.value.path == str(preds["axial"]["0"])


def test_summary_table(jobs):
    d, preds, _ = jobs
    paths = {}
    for task in ("abnormal", "acl", "meniscus"):
        (d / task).mkdir()
        _evaluate(d, preds, d / task, task)
        paths[task] = d / task / "metrics.json"
    table = ev.summarise(paths, {"table": d / "summary.csv", "metrics": d / "summary.json"})
    assert table["task"].tolist() == ["abnormal", "acl", "meniscus"]
    assert {"auc_axial", "auc_coronal", "auc_sagittal", "auc_stacked", "sensitivity_stacked"} <= set(table.columns)
    assert pd.read_csv(d / "summary.csv").shape == (3, len(table.columns))
    # The pipeline's headline: each task's stacked valid AUC, its entry copied from the task's own headline.
    summary = json.loads((d / "summary.json").read_text())
    assert list(summary["headline"]) == ["abnormal_auc", "acl_auc", "meniscus_auc"]
    for task, path in paths.items():
        own = json.loads(path.read_text())["headline"]
        assert summary["headline"][f"{task}_auc"] == own["auc"] and summary["tasks"][task] == own
        assert own["auc"]["value"] == table.loc[table["task"] == task, "auc_stacked"].item()


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
        m = _evaluate(d, preds, d / fit_on, fit_on=fit_on, C=C)
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
    m = _evaluate(d, preds, C=C, class_weight="none")
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
        _evaluate(d, no_fold_1)
    extra = pd.read_csv(preds["coronal"]["all"], dtype={"id": str})
    extra = pd.concat([extra, pd.DataFrame({"id": ["0060"], "role": ["valid"], "label": [0], "prob": [0.2]})])
    extra.to_csv(preds["coronal"]["all"], index=False)
    with pytest.raises(ValueError, match="plane predictions cover different exams"):
        _evaluate(d, preds)
    # One plane lists a valid exam twice and misses another: as many rows as the others, not the same exams.
    dup = pd.read_csv(preds["axial"]["all"], dtype={"id": str})
    dup.loc[dup["id"] == "0041", "id"] = "0040"  # both negatives
    dup.to_csv(preds["axial"]["all"], index=False)
    extra.loc[extra["id"] != "0060"].to_csv(preds["coronal"]["all"], index=False)
    with pytest.raises(ValueError, match="not a one-to-one merge"):
        _evaluate(d, preds)
    with pytest.raises(ValueError, match="mrnet.evaluate.fit_on must be one of"):
        _evaluate(d, preds, fit_on="in-sample")


def test_headline_is_the_valid_auc_of_stack_and_planes_with_a_bootstrap_over_valid_exams(jobs):
    """The headline: ``auc`` (stacked) and ``auc_<plane>``, each the AUC the report below it gives, over
    the 20 valid exams, with a seeded percentile interval from the ``evaluation`` block."""
    from sklearn.metrics import roc_auc_score

    from medflow.evaluation.headline import auc_metric, headline_block
    from medflow.mrnet.stacking import Stacker

    d, preds, _ = jobs
    # Noise for coronal's valid predictions, so that the stack's AUC and each plane's all differ.
    coronal = pd.read_csv(preds["coronal"]["all"], dtype={"id": str})
    is_valid = coronal["role"] == "valid"
    coronal.loc[is_valid, "prob"] = np.random.default_rng(1).random(is_valid.sum())
    coronal.to_csv(preds["coronal"]["all"], index=False)
    m = _evaluate(d, preds, bootstrap={"bootstrap_samples": 300, "confidence": 0.9}, seed=7)
    h = m["headline"]
    assert headline_block(h) == h and list(h) == ["auc", "auc_axial", "auc_coronal", "auc_sagittal"]
    assert h["auc"]["value"] == m["stacked"]["auc"]
    assert len({entry["value"] for entry in h.values()}) == 4
    # By hand: the fixture's own valid probabilities (written at full precision) and the saved stacker.
    valid = {
        p: pd.read_csv(preds[p]["all"], dtype={"id": str}).query("role == 'valid'").sort_values("id") for p in PLANES
    }
    y = valid["axial"]["label"].to_numpy()
    for p in PLANES:
        assert (
            h[f"auc_{p}"]["value"]
            == m["planes"][p]["auc"]
            == pytest.approx(roc_auc_score(y, valid[p]["prob"]), abs=1e-12)
        )
    X = pd.DataFrame({p: valid[p]["prob"].to_numpy() for p in PLANES})
    assert h["auc"]["value"] == pytest.approx(
        roc_auc_score(y, Stacker.load(d / "stacker.json").predict_proba(X)), abs=1e-12
    )
    for entry in h.values():
        assert entry["n"] == 20 == m["n_valid"] and entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    # The interval is the bootstrap the config asks for (samples, confidence, seed), over exams.
    assert h["auc_axial"] == auc_metric(y, valid["axial"]["prob"].to_numpy(), n_boot=300, seed=7, level=0.9)
    assert h["auc_axial"]["ci_high"] - h["auc_axial"]["ci_low"] > 0.1
    wider = _evaluate(d, preds, bootstrap={"bootstrap_samples": 300, "confidence": 0.99}, seed=7)["headline"][
        "auc_axial"
    ]
    assert wider["ci_low"] < h["auc_axial"]["ci_low"] and wider["ci_high"] >= h["auc_axial"]["ci_high"]
    assert (
        _evaluate(d, preds, seed=8)["headline"]["auc_axial"]["ci_low"]
        != _evaluate(d, preds, seed=7)["headline"]["auc_axial"]["ci_low"]
    )
