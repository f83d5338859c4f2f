"""OCT evaluation: per-class precision/recall, the top-k table, the headline with its patient bootstrap, and
oct_evaluate's files and MLflow run on the tiny tree (conftest ``run``)."""

import json
import math

import mlflow
import numpy as np
import pandas as pd
import pytest

from medflow.evaluation.headline import headline_block
from medflow.oct.evaluate import headline, macro_recall_of, multiclass_report, top_k_table

from .conftest import BOOTSTRAP, EVAL_SEED

CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]


def test_multiclass_report_per_class_precision_recall():
    y = [0, 0, 1, 1, 2, 3]
    pred = [0, 1, 1, 1, 3, 3]
    r = multiclass_report(y, pred, CLASSES)
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["per_class"]["CNV"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert r["per_class"]["DME"]["precision"] == pytest.approx(2 / 3) and r["per_class"]["DME"]["recall"] == 1.0
    assert r["per_class"]["DRUSEN"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}  # never predicted
    assert r["macro_recall"] == pytest.approx((0.5 + 1 + 0 + 1) / 4)
    assert r["n"] == 6


def test_top_k_table_orders_classes_by_probability():
    p = np.array([[0.1, 0.6, 0.2, 0.1], [0.25, 0.05, 0.3, 0.4]])
    df = top_k_table(["a", "b"], np.log(p), CLASSES, k=3)
    assert list(df.columns) == [
        "id",
        "top1",
        "prob1",
        "top2",
        "prob2",
        "top3",
        "prob3",
        "p_CNV",
        "p_DME",
        "p_DRUSEN",
        "p_NORMAL",
    ]
    assert df.loc[0, ["top1", "top2", "top3"]].tolist() == ["DME", "DRUSEN", "CNV"]
    assert df.loc[1, ["top1", "top2", "top3"]].tolist() == ["NORMAL", "DRUSEN", "CNV"]
    assert df.loc[1, "prob1"] == pytest.approx(0.4)
    assert np.allclose(df[[f"p_{c}" for c in CLASSES]].sum(axis=1), 1)
    assert len(top_k_table(["a", "b"], np.log(p), CLASSES, k=9).filter(like="top").columns) == 4


# Eight patients, 1-3 images each; only patients e and g have DRUSEN images.
PATIENTS = np.array(["a", "a", "b", "c", "c", "c", "d", "e", "f", "f", "g", "h"])
Y = np.array([0, 0, 1, 0, 3, 3, 1, 2, 3, 3, 2, 1])
PRED = np.array([0, 1, 1, 0, 3, 0, 1, 3, 3, 3, 2, 0])


def _by_hand(n_boot, seed, level):
    """The cluster bootstrap written out: draw patients (sorted ids, numpy's default_rng), take all their images."""
    ids = np.unique(PATIENTS)
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(n_boot, len(ids)))
    acc, rec = [], []
    for row in draws:
        idx = np.concatenate([np.flatnonzero(PATIENTS == ids[k]) for k in row])
        y, p = Y[idx], PRED[idx]
        acc.append(np.mean(y == p))
        if set(Y) <= set(y):  # a resample without DRUSEN (neither e nor g) has no macro recall: skipped
            rec.append(np.mean([np.mean(p[y == c] == c) if (y == c).any() else 0.0 for c in range(4)]))
    a = 100 * (1 - level) / 2
    return np.percentile(acc, [a, 100 - a]), np.percentile(rec, [a, 100 - a]), len(rec)


def test_headline_is_the_report_with_a_patient_cluster_bootstrap():
    h = headline(Y, PRED, PATIENTS, 4, n_boot=400, seed=5, level=0.9)
    report = multiclass_report(Y, PRED, CLASSES)
    assert headline_block(h) == h and list(h) == ["accuracy", "macro_recall"]
    assert h["accuracy"]["value"] == report["accuracy"] == pytest.approx(8 / 12)
    assert h["macro_recall"]["value"] == report["macro_recall"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2 + 3 / 4) / 4)
    assert h["accuracy"]["n"] == h["macro_recall"]["n"] == 8  # patients, not the 12 images
    acc_ci, rec_ci, n_valid = _by_hand(400, 5, 0.9)
    assert 200 < n_valid < 400  # some resamples lack DRUSEN: the interval is over the others
    assert [h["accuracy"]["ci_low"], h["accuracy"]["ci_high"]] == pytest.approx(acc_ci)
    assert [h["macro_recall"]["ci_low"], h["macro_recall"]["ci_high"]] == pytest.approx(rec_ci)
    for entry in h.values():
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]


def test_macro_recall_resample_without_a_class_of_the_test_set_is_undefined():
    fn = macro_recall_of([0, 1, 3], 4)  # DRUSEN absent from the test set: it counts 0, as in the report
    assert fn(np.array([0, 1, 3]), np.array([0, 1, 3])) == 0.75
    assert multiclass_report([0, 1, 3], [0, 1, 3], CLASSES)["macro_recall"] == 0.75
    assert math.isnan(fn(np.array([0, 0, 3]), np.array([0, 0, 3])))


def test_metrics_predictions_and_confusion_are_written(run):
    tmp, split = run["tmp"], run["split"]
    metrics = json.loads((tmp / "metrics.json").read_text())
    n_test = int((split["split"] == "test").sum())
    assert metrics["n"] == n_test and 0 <= metrics["accuracy"] <= 1
    assert set(metrics["per_class"]) == set(CLASSES)
    assert sum(map(sum, metrics["confusion_matrix"])) == n_test
    preds = pd.read_csv(tmp / "predictions.csv", dtype={"patient": str, "id": str})
    assert len(preds) == n_test
    assert list(preds.columns[:8]) == ["id", "patient", "label", "correct", "top1", "prob1", "top2", "prob2"]
    assert set(preds["id"]) == set(split.loc[split["split"] == "test", "id"])
    assert (preds["prob1"] >= preds["prob2"]).all()
    assert (preds["correct"] == (preds["top1"] == preds["label"])).all()
    assert (tmp / "confusion.png").stat().st_size > 1000 and (tmp / "curves.png").exists()


def test_metrics_headline_over_test_patients(run):
    tmp, split = run["tmp"], run["split"]
    metrics = json.loads((tmp / "metrics.json").read_text())
    h = headline_block(metrics["headline"])
    assert list(h) == ["accuracy", "macro_recall"]
    test = split[split["split"] == "test"]
    n_patients = test["patient"].nunique()
    assert n_patients < len(test)  # some patients have several images: n counts patients
    for name, entry in h.items():
        assert entry["value"] == metrics[name]
        assert entry["n"] == n_patients == metrics["n_patients"]
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    # The headline recomputed from predictions.csv with the job's seed: the same resamples, the same numbers.
    preds = pd.read_csv(tmp / "predictions.csv", dtype={"patient": str, "id": str})
    y = preds["label"].map(CLASSES.index).to_numpy()
    pred = preds["top1"].map(CLASSES.index).to_numpy()
    again = headline(
        y,
        pred,
        preds["patient"],
        4,
        n_boot=BOOTSTRAP["bootstrap_samples"],
        seed=EVAL_SEED,
        level=BOOTSTRAP["confidence"],
    )
    assert again == h


def test_evaluation_run_is_tagged_with_the_training_run(run):
    client = mlflow.MlflowClient(run["uri"])
    exp = client.get_experiment_by_name("oct")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    ev = runs["oct_evaluate"]
    assert ev.data.tags["training_run_id"] == runs["oct_train"].info.run_id == run["result"].run_id
    assert ev.data.tags["snakemake_rule"] == "oct_evaluate"
    h = run["report"]["headline"]
    assert ev.data.metrics["test_accuracy"] == pytest.approx(run["report"]["accuracy"])
    assert ev.data.metrics["test_macro_recall_ci_low"] == pytest.approx(h["macro_recall"]["ci_low"])
    assert ev.data.metrics["test_accuracy_n"] == h["accuracy"]["n"]
    assert ev.data.metrics["test_recall_DRUSEN"] == pytest.approx(run["report"]["per_class"]["DRUSEN"]["recall"])
    assert ev.data.params["bootstrap_samples"] == str(BOOTSTRAP["bootstrap_samples"])
    assert "val_loss" in runs["oct_train"].data.metrics
