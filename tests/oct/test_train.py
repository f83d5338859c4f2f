"""OCT end to end on a tiny tree: ingest -> train (medflow.train.fit) -> evaluate, MLflow runs linked."""

import json
import logging

import mlflow
import pandas as pd
import pytest
import torch

from medflow import tracking
from medflow.ingest.oct import ingest
from medflow.oct.evaluate import evaluate
from medflow.oct.train import train
from medflow.synthetic.oct import generate
from medflow.train import load_checkpoint

PARAMS = {
    "image_size": 32, "resize": 36,
    "augment": {"crop_scale": [0.8, 1.0], "rotation": 15, "brightness": 0.2, "contrast": 0.2, "hflip": True},
    "weights": "none", "head": "classifier", "head_batchnorm": True, "hidden": 16, "dropout": 0.4,
    "epochs": 1, "patience": 0, "monitor": "val_loss", "batch_size": 8, "lr": 0.001,
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("octrun")
    uri = tracking.resolve_uri("", str(tmp))
    tracking.create_store(uri)
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    root = tmp / "OCT2017"
    generate(root, {"patients": {"train": 2, "val": 1, "test": 1}, "images_per_patient": [1, 2], "height": [36, 48], "aspect": [1.0, 1.4]}, seed=0)
    ingest(root, tmp / "manifest.csv", tmp / "split.csv", val_source="folder", val_fraction=0.1, seed=0)
    torch.set_num_threads(1)
    logger = logging.getLogger("medflow.oct.train")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        result = train(root, tmp / "split.csv", tmp / "model.pt", tmp / "curves.png", PARAMS, threads=1, seed=0, rule="test")
        report = evaluate(root, tmp / "split.csv", tmp / "model.pt", tmp / "metrics.json", tmp / "predictions.csv", tmp / "confusion.png",
                          top_k=2, batch_size=16, threads=1, rule="test")
    finally:
        logger.removeHandler(handler)
        mp.undo()
    yield {"tmp": tmp, "uri": uri, "result": result, "report": report, "log": "\n".join(r.getMessage() for r in records)}


def test_checkpoint_holds_class_to_idx_and_preprocessing(run):
    ckpt = load_checkpoint(run["tmp"] / "model.pt")
    meta = ckpt["meta"]
    assert meta["class_to_idx"] == {"CNV": 0, "DME": 1, "DRUSEN": 2, "NORMAL": 3}
    assert meta["image_size"] == 32 and meta["resize"] == 36 and meta["model"]["hidden"] == 16
    assert meta["parameters"]["trainable"] == 2 * 25088 + 25088 * 16 + 16 + 16 * 4 + 4


def test_parameter_counts_are_logged(run):
    counts = load_checkpoint(run["tmp"] / "model.pt")["meta"]["parameters"]
    assert f"{counts['total']:,} parameters in total, {counts['trainable']:,} trainable" in run["log"]


def test_metrics_predictions_and_confusion_are_written(run):
    tmp = run["tmp"]
    metrics = json.loads((tmp / "metrics.json").read_text())
    split = pd.read_csv(tmp / "split.csv")
    n_test = int((split["split"] == "test").sum())
    assert metrics["n"] == n_test and 0 <= metrics["accuracy"] <= 1
    assert set(metrics["per_class"]) == {"CNV", "DME", "DRUSEN", "NORMAL"}
    assert sum(map(sum, metrics["confusion_matrix"])) == n_test
    preds = pd.read_csv(tmp / "predictions.csv", dtype={"patient": str})
    assert len(preds) == n_test and list(preds.columns[:8]) == ["id", "patient", "label", "correct", "top1", "prob1", "top2", "prob2"]
    assert set(preds["id"]) == set(split.loc[split["split"] == "test", "id"])
    assert (preds["prob1"] >= preds["prob2"]).all()
    assert (preds["correct"] == (preds["top1"] == preds["label"])).all()
    assert (tmp / "confusion.png").stat().st_size > 1000 and (tmp / "curves.png").exists()


def test_evaluation_run_is_tagged_with_the_training_run(run):
    client = mlflow.MlflowClient(run["uri"])
    exp = client.get_experiment_by_name("oct")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert runs["vgg16-test"].data.tags["training_run_id"] == runs["vgg16"].info.run_id == run["result"].run_id
    assert runs["vgg16-test"].data.metrics["test_accuracy"] == pytest.approx(run["report"]["accuracy"])
    assert "val_loss" in runs["vgg16"].data.metrics


def test_a_last_batch_of_one_image_does_not_stop_training(run, monkeypatch):
    """The head's BatchNorm cannot train on one image: a train set of k x batch + 1 images (the demo's
    241 at batch 16, say) must still train."""
    tmp = run["tmp"]
    split = pd.read_csv(tmp / "split.csv")
    n_train = int((split["split"] == "train").sum())
    assert n_train >= 3
    monkeypatch.setenv("MLFLOW_TRACKING_URI", run["uri"])
    params = {**PARAMS, "batch_size": n_train - 1}  # n_train % batch == 1
    result = train(tmp / "OCT2017", tmp / "split.csv", tmp / "lone.pt", tmp / "lone.png", params, threads=1, seed=0, rule="test")
    assert len(result.history) == 1 and (tmp / "lone.pt").exists()
