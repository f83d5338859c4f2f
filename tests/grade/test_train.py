"""brats_grade_train: ResNet18 via fit on the fixture's slices, selected on patient-level val AUC (run in conftest)."""

from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from medflow.grade.train import TrainParams, class_weights
from medflow.params import from_config
from medflow.train import load_checkpoint
from tests.grade.conftest import SLICES, STACK_PREP, TRAIN


def test_training_monitors_patient_level_val_auc(run):
    hist = run["result"].history
    assert len(hist) == 2 and {"val_auc", "val_slice_auc", "val_loss"} <= set(hist[0])
    ckpt = load_checkpoint(run["tmp"] / "model.pt")
    best = max(h["val_auc"] for h in hist)
    assert ckpt["monitor"] == "val_auc" and ckpt["score"] == best
    # Ties of the coarse patient AUC go to the later epoch.
    assert ckpt["epoch"] == max(int(h["epoch"]) for h in hist if h["val_auc"] == best)
    assert ckpt["meta"]["in_channels"] == 4 and ckpt["meta"]["classes"] == ["LGG", "HGG"]
    assert ckpt["meta"]["aggregate"] == "mean"


def test_checkpoint_records_its_pipeline_and_the_preprocessing_of_its_inputs(run):
    meta = load_checkpoint(run["tmp"] / "model.pt")["meta"]
    assert meta["pipeline"] == "brats_grade"
    # The slice parameters come from the slice file (what made the training data), the stack's from the rule.
    assert meta["preprocessing"] == {
        "slices": SLICES,
        "modalities": ["flair", "t1", "t1ce", "t2"],
        "stack": STACK_PREP,
    }


def test_training_run_is_named_after_the_rule(run):
    client = mlflow.MlflowClient(run["uri"])
    exp = client.get_experiment_by_name("brats_grade")
    (train_run,) = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "brats_grade_train"]
    assert train_run.info.run_id == run["result"].run_id == load_checkpoint(run["tmp"] / "model.pt")["mlflow_run_id"]
    assert "val_auc" in train_run.data.metrics
    p = train_run.data.params
    assert p["aggregate"] == "mean" and p["seed"] == "0" and p["augment.hflip"] == "True" and p["n_train_cases"] == "8"


def test_params_take_the_rules_blocks_and_reject_typos():
    cfg = yaml.safe_load((Path(__file__).parents[2] / "config" / "config.yaml").read_text())["brats"]["grade"]
    params = from_config(TrainParams, {"train": cfg["train"], "aggregate": cfg["aggregate"]})
    assert params.train.augment.intensity == cfg["train"]["augment"]["intensity"]
    assert params.aggregate == cfg["aggregate"]
    with pytest.raises(ValueError, match="'lr_rate'"):
        from_config(TrainParams, {"train": {**TRAIN, "lr_rate": 1.0}, "aggregate": "mean"})
    with pytest.raises(ValueError, match="'aggregate'"):
        from_config(TrainParams, {"train": TRAIN})


def test_balanced_class_weights():
    w = class_weights(np.array([0, 1, 1, 1]), "balanced")
    assert w.tolist() == pytest.approx([2.0, 2 / 3])
    assert class_weights(np.array([0, 1]), "none") is None
    assert class_weights(np.array([1, 1]), "balanced") is None  # one class: no weighting rather than inf
