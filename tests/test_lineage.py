"""Lineage of predictions: which checkpoint (by hash and training run) produced them, and the refusal of a
checkpoint from another pipeline or with other preprocessing."""

import hashlib

import mlflow
import pytest
import torch

from medflow import io, lineage, tracking
from medflow.errors import InputError


def _checkpoint(path, pipeline="oct", preprocessing=None, run_id="abc"):
    meta = {"pipeline": pipeline, "preprocessing": preprocessing or {"size": 48, "window": {"mode": "header"}}}
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": meta, "mlflow_run_id": run_id}, path)
    return torch.load(path, weights_only=True)


def test_model_record_hashes_the_file_and_names_the_training_run(tmp_path):
    path = tmp_path / "best.pt"
    ckpt = _checkpoint(path)
    rec = lineage.model_record("oct", path, ckpt)
    assert rec == {
        "name": "oct",
        "checkpoint": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "training_run_id": "abc",
    }
    assert lineage.model_record("oct", path) == rec  # loads the checkpoint itself when not given
    _checkpoint(path, run_id=None)
    assert lineage.model_record("oct", path)["training_run_id"] == ""


def test_lineage_json_names_models_config_and_commit(tmp_path):
    path = tmp_path / "best.pt"
    rec = lineage.model_record("oct", path, _checkpoint(path))
    doc = lineage.write_lineage(tmp_path / "out" / "lineage.json", [rec], {"top_k": 3}, "oct_predict")
    assert io.read_json(tmp_path / "out" / "lineage.json") == doc
    assert doc["models"] == [rec] and doc["config"] == {"top_k": 3} and doc["rule"] == "oct_predict"
    assert doc["git_commit"] == tracking.git_commit() and doc["created_utc"].endswith("+00:00")


def test_checkpoint_of_another_pipeline_is_refused(tmp_path):
    ckpt = _checkpoint(tmp_path / "best.pt", pipeline="rsna")
    with pytest.raises(InputError, match=r"best\.pt: checkpoint of pipeline 'rsna', not 'oct'"):
        lineage.check_checkpoint(ckpt, tmp_path / "best.pt", pipeline="oct")


def test_other_preprocessing_is_refused_naming_every_difference(tmp_path):
    ckpt = _checkpoint(tmp_path / "best.pt", preprocessing={"size": 48, "window": {"mode": "header", "level": 0}})
    lineage.check_checkpoint(
        ckpt, "best.pt", pipeline="oct", preprocessing={"size": 48, "window": {"mode": "header", "level": 0}}
    )
    with pytest.raises(InputError) as err:
        lineage.check_checkpoint(
            ckpt, "best.pt", pipeline="oct", preprocessing={"size": 64, "window": {"mode": "header"}, "clahe": True}
        )
    msg = str(err.value)
    assert "clahe: checkpoint '<absent>', inputs True" in msg
    assert "size: checkpoint 48, inputs 64" in msg
    assert "window.level: checkpoint 0, inputs '<absent>'" in msg
    assert "window.mode" not in msg  # equal values are not listed


def test_checkpoint_without_recorded_preprocessing_is_refused(tmp_path):
    torch.save({"state_dict": {}, "meta": {"pipeline": "oct"}}, tmp_path / "old.pt")
    ckpt = torch.load(tmp_path / "old.pt", weights_only=True)
    with pytest.raises(InputError, match="records no preprocessing"):
        lineage.check_checkpoint(ckpt, tmp_path / "old.pt", pipeline="oct", preprocessing={"size": 48})


def test_prediction_run_is_tagged_with_each_models_training_run_and_hash(tmp_path, monkeypatch):
    uri = tracking.resolve_uri("", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.create_store(uri)
    models = [
        {"name": "segmentation", "checkpoint": "a.pt", "sha256": "f00", "training_run_id": "r1"},
        {"name": "grade", "checkpoint": "b.pt", "sha256": "ba5", "training_run_id": "r2"},
    ]
    (tmp_path / "predictions.csv").write_text("case,p\n")
    run_id = tracking.log_prediction(
        "brats_grade",
        "brats_grade_predict",
        models=models,
        artifacts=[tmp_path / "predictions.csv"],
        metrics={"n_predicted": 3},
        rule="brats_grade_predict",
    )
    run = mlflow.MlflowClient(uri).get_run(run_id)
    tags = run.data.tags
    assert tags["training_run_id.segmentation"] == "r1" and tags["checkpoint_sha256.grade"] == "ba5"
    assert tags["training_run_id"] == "r1,r2" and tags["stage"] == "predict"
    assert run.data.metrics == {"n_predicted": 3.0}
    artifacts = [a.path for a in mlflow.MlflowClient(uri).list_artifacts(run_id, "predict")]
    assert artifacts == ["predict/predictions.csv"]
    with pytest.raises(InputError, match="does not exist"):
        tracking.log_prediction("oct", "oct_predict", models=models, artifacts=[tmp_path / "missing.csv"])
