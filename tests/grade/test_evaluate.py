"""brats_grade_evaluate: patient-level metrics, the headline block with bootstrap intervals, MLflow linkage."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from medflow.evaluation.classification import binary_report
from medflow.grade.evaluate import Bootstrap, EvaluateParams, cam_patients, evaluate, headline
from medflow.params import from_config
from tests.grade.conftest import BOOTSTRAP, EVAL_OUTPUTS


def test_evaluation_is_per_patient_with_slice_auc_beside_it(run):
    tmp, split = run["tmp"], run["split"]
    metrics = json.loads((tmp / "metrics.json").read_text())
    test_ids = sorted(split.loc[split["split"] == "test", "id"])
    assert metrics["patient"]["n"] == len(test_ids) and metrics["slice"]["n"] == 3 * len(test_ids)
    assert {"auc", "balanced_accuracy", "sensitivity", "specificity", "confusion_matrix"} <= set(metrics["patient"])
    assert metrics["aggregate"] == "max" and metrics["positive_class"] == "HGG"
    patients = pd.read_csv(tmp / "patients.csv")
    assert patients["id"].tolist() == test_ids and set(patients["grade"]) == {"HGG", "LGG"}
    slices = pd.read_csv(tmp / "slice_predictions.csv")
    # The patient probability is the configured aggregate (max) of its slices.
    expected = slices.groupby("id")["prob_hgg"].max().to_dict()
    assert patients.set_index("id")["prob_hgg"].to_dict() == pytest.approx(expected, abs=1e-5)
    assert ((patients["prob_hgg"] >= 0.5) == (patients["pred"] == "HGG")).all()
    assert (tmp / "roc.png").stat().st_size > 1000 and (tmp / "confusion.png").exists()


def test_headline_is_the_patient_metrics_with_intervals(run):
    metrics = json.loads((run["tmp"] / "metrics.json").read_text())
    hl, patient = metrics["headline"], metrics["patient"]
    assert set(hl) == {"auc", "balanced_accuracy"}
    patients = pd.read_csv(run["tmp"] / "patients.csv")
    y = (patients["grade"] == "HGG").astype(int).to_numpy()
    report = binary_report(y, patients["prob_hgg"].to_numpy(), 0.5)  # a recomputation from the written CSV
    for name in hl:
        assert hl[name]["value"] == patient[name] == pytest.approx(report[name], abs=1e-6)
        assert hl[name]["n"] == len(patients) == patient["n"]
        assert hl[name]["ci_low"] <= hl[name]["value"] <= hl[name]["ci_high"]


def _hand_bootstrap(fn, y, p, n_boot, seed, level):
    """The headline interval spelled out: resample patients, skip resamples without a number, percentiles."""
    draws = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    stats = np.array([fn(y[d], p[d]) for d in draws])
    stats = stats[~np.isnan(stats)]
    a = 100 * (1 - level) / 2
    return tuple(np.percentile(stats, [a, 100 - a]))


def test_headline_intervals_match_a_hand_bootstrap_over_patients():
    from sklearn.metrics import roc_auc_score

    # 2 LGG among 8 patients: about one resample in ten holds no LGG, has no balanced accuracy and is skipped.
    y = np.array([0, 1, 1, 0, 1, 1, 1, 1])
    prob = np.array([0.6, 0.9, 0.4, 0.2, 0.7, 0.55, 0.3, 0.8])
    boot = Bootstrap(bootstrap_samples=300, confidence=0.9)
    hl = headline(y, prob, 0.5, boot, seed=7)

    def bacc(y_, p_):
        if len(set(y_)) < 2:
            return np.nan
        pred = p_ >= 0.5
        return (np.mean(pred[y_ == 1]) + np.mean(~pred[y_ == 0])) / 2

    def auc(y_, p_):
        return roc_auc_score(y_, p_) if len(set(y_)) == 2 else np.nan

    for name, fn in (("auc", auc), ("balanced_accuracy", bacc)):
        assert hl[name]["value"] == pytest.approx(fn(y, prob), abs=1e-12)
        by_hand = _hand_bootstrap(fn, y, prob, 300, 7, 0.9)
        assert (hl[name]["ci_low"], hl[name]["ci_high"]) == pytest.approx(by_hand, abs=1e-12)
        assert hl[name]["ci_low"] < hl[name]["value"] < hl[name]["ci_high"] and hl[name]["n"] == len(y)
    assert headline(y, prob, 0.5, boot, seed=8)["auc"]["ci_low"] != hl["auc"]["ci_low"]  # the seed is used


def test_headline_bootstrap_uses_the_jobs_seed_and_the_config(run):
    ((args, kwargs),) = run["headline_args"]
    assert args[2:] == (0.5, Bootstrap(**BOOTSTRAP), run["seed"]) and not kwargs
    patients = pd.read_csv(run["tmp"] / "patients.csv")
    y = (patients["grade"] == "HGG").astype(int).to_numpy()
    assert args[0].tolist() == y.tolist() and np.allclose(args[1], patients["prob_hgg"], atol=1e-6)
    again = headline(y, patients["prob_hgg"].to_numpy(), 0.5, Bootstrap(**BOOTSTRAP), seed=run["seed"])
    for name, entry in run["metrics"]["headline"].items():  # the CSV holds 6 decimals; NaN equals NaN here
        np.testing.assert_allclose(
            [again[name]["ci_low"], again[name]["ci_high"]], [entry["ci_low"], entry["ci_high"]], atol=1e-5
        )


def test_evaluation_run_is_named_after_the_rule_and_linked_to_training(run):
    client = mlflow.MlflowClient(run["uri"])
    exp = client.get_experiment_by_name("brats_grade")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    ev = runs["brats_grade_evaluate"]
    assert ev.data.tags["training_run_id"] == runs["brats_grade_train"].info.run_id
    hl = run["metrics"]["headline"]
    assert ev.data.metrics["test_auc"] == hl["auc"]["value"]
    assert ev.data.metrics["test_balanced_accuracy_n"] == hl["balanced_accuracy"]["n"]
    assert ev.data.metrics["test_slice_n"] == run["metrics"]["slice"]["n"]
    assert ev.data.params == {"aggregate": "max", "threshold": "0.5"}


def test_params_take_the_rules_blocks():
    root = Path(__file__).parents[2]
    cfg = yaml.safe_load((root / "config" / "config.yaml").read_text())
    g, ev = cfg["brats"]["grade"], cfg["evaluation"]
    # As brats_grade_evaluate passes them: the bootstrap keys of `evaluation`, its `cams` beside them.
    bootstrap = {k: ev[k] for k in ("bootstrap_samples", "confidence")}
    params = from_config(
        EvaluateParams,
        {"aggregate": g["aggregate"], "evaluate": g["evaluate"], "bootstrap": bootstrap, "cams": ev["cams"]},
    )
    assert params.bootstrap.bootstrap_samples == ev["bootstrap_samples"] and params.cams == ev["cams"]
    assert params.evaluate.threshold == g["evaluate"]["threshold"]
    with pytest.raises(ValueError, match="'bootstrap'"):
        from_config(EvaluateParams, {"aggregate": "mean", "evaluate": g["evaluate"]})


def test_cams_of_test_patients_are_drawn_both_grades_first(run):
    cams = run["outputs"]["cams"]
    split = run["split"].set_index("id")
    pngs = sorted(p.stem for p in cams.glob("*.png"))
    assert len(pngs) == run["params"].cams == 3 and all(split.at[c, "split"] == "test" for c in pngs)
    assert set(split.loc[pngs, "grade"]) == {"HGG", "LGG"}
    assert all((cams / f"{c}.png").stat().st_size > 2000 for c in pngs)


def test_cam_patients_alternate_the_grades_by_id():
    patients = pd.DataFrame({"id": ["d", "a", "c", "b", "e"], "label": [1, 1, 0, 1, 1]})
    assert cam_patients(patients, 4) == ["a", "c", "b", "d"]
    assert cam_patients(patients, 10) == ["a", "c", "b", "d", "e"] and cam_patients(patients, 0) == []


def test_drawing_cams_changes_no_metric(run, cases, tmp_path):
    """The same evaluation without CAMs (and without MLflow) writes the same metrics and predictions."""
    from dataclasses import replace

    from medflow.train import Job

    outputs = {k: tmp_path / v for k, v in EVAL_OUTPUTS.items()}
    inputs = {"slices": run["tmp"] / "slices.h5", "split": cases[1], "checkpoint": run["tmp"] / "model.pt"}
    job = Job(threads=1, seed=run["seed"], bf16=False, track=False)
    metrics = evaluate(inputs, outputs, replace(run["params"], cams=0), job)
    assert not list(outputs["cams"].glob("*.png"))
    assert metrics == run["metrics"]
    assert outputs["metrics"].read_text() == run["outputs"]["metrics"].read_text()
    for key in ("patients", "slices"):
        assert outputs[key].read_text() == run["outputs"][key].read_text()
