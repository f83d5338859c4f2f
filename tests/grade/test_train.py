"""Grade end to end on fake stacked cases: slices -> ResNet18 via fit (patient-level val AUC) -> evaluation."""

import json

import mlflow
import pandas as pd
import pytest
import torch

from medflow import tracking
from medflow.grade.evaluate import evaluate
from medflow.grade.slices import write_slices
from medflow.grade.train import class_weights, train
from medflow.train import load_checkpoint

PARAMS = {
    "weights": "none", "conv1_init": "mean", "epochs": 2, "patience": 0, "monitor": "val_auc", "batch_size": 8,
    "lr": 0.001, "weight_decay": 0.0, "class_weights": "balanced", "augment": {"hflip": True, "intensity": 0.1},
}


@pytest.fixture(scope="module")
def run(cases, tmp_path_factory):
    stacks, split_csv = cases
    tmp = tmp_path_factory.mktemp("graderun")
    uri = tracking.resolve_uri("", str(tmp))
    tracking.create_store(uri)
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    torch.set_num_threads(1)
    try:
        write_slices(stacks, split_csv, tmp / "slices.h5", select="top_k", top_k=3, min_tumour_pixels=5, size=32)
        result = train(tmp / "slices.h5", tmp / "model.pt", tmp / "curves.png", PARAMS, aggregate_rule="mean", threads=1, seed=0, rule="test")
        metrics = evaluate(tmp / "slices.h5", split_csv, tmp / "model.pt", metrics_path=tmp / "metrics.json", patients_path=tmp / "patients.csv",
                           slices_out_path=tmp / "slice_predictions.csv", roc_path=tmp / "roc.png", confusion_path=tmp / "confusion.png",
                           aggregate_rule="max", threshold=0.5, batch_size=16, threads=1, rule="test")
    finally:
        mp.undo()
    return {"tmp": tmp, "uri": uri, "result": result, "metrics": metrics, "split": pd.read_csv(split_csv)}


def test_training_monitors_patient_level_val_auc(run):
    hist = run["result"].history
    assert len(hist) == 2 and {"val_auc", "val_slice_auc", "val_loss"} <= set(hist[0])
    ckpt = load_checkpoint(run["tmp"] / "model.pt")
    best = max(h["val_auc"] for h in hist)
    assert ckpt["monitor"] == "val_auc" and ckpt["score"] == best
    # Ties of the coarse patient AUC go to the later epoch.
    assert ckpt["epoch"] == max(int(h["epoch"]) for h in hist if h["val_auc"] == best)
    assert ckpt["meta"]["in_channels"] == 4 and ckpt["meta"]["classes"] == ["LGG", "HGG"]


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
    assert patients.set_index("id")["prob_hgg"].to_dict() == pytest.approx(slices.groupby("id")["prob_hgg"].max().to_dict(), abs=1e-5)
    assert ((patients["prob_hgg"] >= 0.5) == (patients["pred"] == "HGG")).all()
    assert (tmp / "roc.png").stat().st_size > 1000 and (tmp / "confusion.png").exists()


def test_evaluation_run_is_linked_to_training(run):
    client = mlflow.MlflowClient(run["uri"])
    exp = client.get_experiment_by_name("brats_grade")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert runs["resnet18-test"].data.tags["training_run_id"] == runs["resnet18"].info.run_id
    assert "val_auc" in runs["resnet18"].data.metrics


def test_balanced_class_weights():
    import numpy as np

    w = class_weights(np.array([0, 1, 1, 1]), "balanced")
    assert w.tolist() == pytest.approx([2.0, 2 / 3])
    assert class_weights(np.array([0, 1]), "none") is None
