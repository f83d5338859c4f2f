"""Training both variants through medflow.train.fit; validation scores through medflow.rsna.predict."""

import mlflow
import numpy as np
import pytest
import torch

from medflow.evaluation.classification import binary_report
from medflow.params import from_config
from medflow.rsna import train as tr
from medflow.rsna.data import read_info
from medflow.rsna.preprocess import PreprocessConfig, preprocessing_record
from medflow.train import Job, load_checkpoint
from tests.rsna.conftest import TRAIN, VARIANTS


def test_augment_is_seeded_and_keeps_the_shape():
    x = torch.randn(4, 1, 16, 16)
    torch.manual_seed(1)
    a = tr.augment(x, 0.1, 10, 0.1, True)
    torch.manual_seed(1)
    b = tr.augment(x, 0.1, 10, 0.1, True)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert torch.equal(tr.augment(x, 0, 0, 0, False), x)


def test_params_come_from_the_config_block_and_reject_typos_and_unknown_variants():
    p = from_config(tr.TrainParams, {"variant": "image_only", "train": TRAIN})
    assert p.train.augment == tr.Augment(translate=0.05, rotate_deg=5, scale=0.05, hflip=True)
    assert p.train.model_config().channels == [4, 8] and p.train.model_config().meta_hidden == 4
    with pytest.raises(ValueError, match="variant must be one of"):
        from_config(tr.TrainParams, {"variant": "both", "train": TRAIN})
    with pytest.raises(ValueError, match="unknown key 'epoch'"):
        from_config(tr.TrainParams, {"variant": "image_only", "train": {**TRAIN, "epoch": 3}})


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_writes_the_best_checkpoint_with_what_evaluation_needs(trained, prepared, variant):
    result = trained["results"][variant]
    assert len(result.history) == 2 and "val_auc" in result.history[0]
    ckpt = load_checkpoint(trained["checkpoints"][variant])  # weights_only=True
    assert ckpt["meta"]["variant"] == variant and ckpt["meta"]["use_meta"] == (variant == "with_metadata")
    assert ckpt["meta"]["meta_features"][-1] == "view_PA" and ckpt["meta"]["size"] == 24
    # what prediction needs: the pipeline, and every preprocessing parameter of the HDF5 it was trained on
    assert ckpt["meta"]["pipeline"] == "rsna"
    assert ckpt["meta"]["preprocessing"] == read_info(prepared / "images.h5").preprocessing
    assert ckpt["meta"]["preprocessing"] == preprocessing_record(PreprocessConfig(size=24), 120.0)
    assert ckpt["monitor"] == "val_auc" and ckpt["epoch"] == result.best_epoch
    assert ckpt["score"] == max(row["val_auc"] for row in result.history)
    d = trained["checkpoints"][variant].parent
    assert (d / "curves.png").stat().st_size > 0 and not (d / "model.pt.resume").exists()


def test_training_runs_are_named_by_rule_and_variant(trained):
    client = mlflow.MlflowClient(trained["uri"])
    for variant in VARIANTS:
        run = client.get_run(trained["results"][variant].run_id)
        assert run.info.run_name == f"rsna_train/{variant}" and run.data.tags["variant"] == variant
        assert run.data.params["variant"] == variant and run.data.params["augment.rotate_deg"] == "5"
        assert load_checkpoint(trained["checkpoints"][variant])["mlflow_run_id"] == run.info.run_id


def test_validation_scores_are_computed_by_predict(prepared, tmp_path, monkeypatch):
    """fit's validation goes through medflow.rsna.predict: its outputs give val loss and AUC."""
    seen = []
    real = tr.predict

    def spy(model, loader, device, *, bf16=True):
        out = real(model, loader, device, bf16=bf16)
        seen.append(out)
        return out

    monkeypatch.setattr(tr, "predict", spy)
    params = from_config(tr.TrainParams, {"variant": "with_metadata", "train": {**TRAIN, "epochs": 2}})
    result = tr.train(
        {"h5": prepared / "images.h5", "split": prepared / "split.csv"},
        {"checkpoint": tmp_path / "model.pt"},
        params,
        Job(threads=1, seed=0, track=False),
    )
    assert len(seen) == 2 and all(len(out["prob"]) == 6 for out in seen)  # one call per epoch, the 6 val patients
    for row, out in zip(result.history, seen):
        y, p = out["target"], out["prob"]
        assert row["val_auc"] == binary_report(y, p)["auc"]
        bce = -np.mean(y * np.log(p + 1e-7) + (1 - y) * np.log(1 - p + 1e-7))
        assert row["val_loss"] == pytest.approx(bce, abs=1e-6)
