"""oct_train on the tiny tree (conftest ``run``): checkpoint contents, logged counts, MLflow run, lone last batch."""

import dataclasses

import mlflow
import pytest

from medflow.oct.train import TrainParams, train
from medflow.params import from_config
from medflow.train import Job, load_checkpoint

from .conftest import TRAIN


def test_checkpoint_holds_class_to_idx_and_preprocessing(run):
    ckpt = load_checkpoint(run["tmp"] / "model.pt")
    meta = ckpt["meta"]
    assert meta["class_to_idx"] == {"CNV": 0, "DME": 1, "DRUSEN": 2, "NORMAL": 3}
    assert meta["image_size"] == 32 and meta["resize"] == 36 and meta["model"]["hidden"] == 16
    assert meta["parameters"]["trainable"] == 2 * 25088 + 25088 * 16 + 16 + 16 * 4 + 4


def test_parameter_counts_are_logged(run):
    counts = load_checkpoint(run["tmp"] / "model.pt")["meta"]["parameters"]
    assert f"{counts['total']:,} parameters in total, {counts['trainable']:,} trainable" in run["log"]


def test_training_run_is_named_after_the_rule_with_val_metrics_per_epoch(run):
    client = mlflow.MlflowClient(run["uri"])
    exp = client.get_experiment_by_name("oct")
    (r,) = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "oct_train"]
    assert r.info.run_id == run["result"].run_id and r.data.tags["snakemake_rule"] == "oct_train"
    history = client.get_metric_history(r.info.run_id, "val_loss")
    assert [m.value for m in history] == pytest.approx([h["val_loss"] for h in run["result"].history])
    assert r.data.params["lr"] == "0.001" and r.data.params["seed"] == "0"


def test_params_are_typed_and_unknown_keys_rejected():
    p = from_config(TrainParams, {"root": "/data", "train": TRAIN})
    assert p.train.augment.crop_scale == (0.8, 1.0) and p.train.augment.hflip is True
    assert dataclasses.asdict(p.train)["augment"]["rotation"] == 15
    with pytest.raises(ValueError, match="'lrate'"):
        from_config(TrainParams, {"root": "/data", "train": {**TRAIN, "lrate": 1}})


def test_a_last_batch_of_one_image_does_not_stop_training(run, monkeypatch):
    """The head's BatchNorm cannot train on one image: a train set of k x batch + 1 images (the demo's
    241 at batch 16, say) must still train."""
    tmp = run["tmp"]
    split = run["split"]
    n_train = int((split["split"] == "train").sum())
    assert n_train >= 3
    params = from_config(
        TrainParams, {"root": str(run["root"]), "train": {**TRAIN, "epochs": 1, "batch_size": n_train - 1}}
    )
    result = train(
        {"split": tmp / "split.csv"},
        {"checkpoint": tmp / "lone.pt", "curves": tmp / "lone.png"},
        params,
        Job(threads=1, seed=0, track=False),
    )
    assert len(result.history) == 1 and (tmp / "lone.pt").exists()
