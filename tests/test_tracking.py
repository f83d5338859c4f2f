"""MLflow store: created once up front, then many jobs write to it at once without losing anything."""

import math
import multiprocessing as mp

import mlflow
import pytest

from medflow import tracking
from medflow.errors import InputError

N_JOBS, N_PARAMS, N_STEPS = 8, 12, 15


def _job(uri, i, barrier):
    import os

    os.environ["MLFLOW_TRACKING_URI"] = uri
    barrier.wait()  # all eight start writing at the same moment
    with tracking.run("mrnet", f"job{i}", params={f"p{k}": k for k in range(N_PARAMS)}, rule="test"):
        for step in range(N_STEPS):
            mlflow.log_metrics({"loss": 1.0 / (step + 1), "auc": step / N_STEPS}, step=step)


def test_eight_concurrent_jobs_lose_no_run_param_or_metric(tmp_path):
    uri = tracking.resolve_uri("", str(tmp_path))
    tracking.create_store(uri)  # as rule mlflow_store does, before any job starts
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(N_JOBS)
    procs = [ctx.Process(target=_job, args=(uri, i, barrier)) for i in range(N_JOBS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * N_JOBS
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("mrnet")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == N_JOBS
    for r in runs:
        assert len(r.data.params) == N_PARAMS
        assert r.info.status == "FINISHED"
        for key in ("loss", "auc"):
            assert len(client.get_metric_history(r.info.run_id, key)) == N_STEPS


def test_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_uri("", str(tmp_path)).startswith(f"sqlite:///{tmp_path}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.resolve_uri("", "results") == "http://mlflow.example:5000"
    assert tracking.resolve_uri("sqlite:///x.db", "results") == "sqlite:///x.db"


def test_create_store_is_idempotent(tmp_path):
    uri = tracking.resolve_uri("", str(tmp_path))
    assert tracking.create_store(uri) == tracking.create_store(uri)


def test_log_evaluation_records_headline_extras_tags_and_artifacts(tmp_path, monkeypatch):
    uri = tracking.resolve_uri("", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.create_store(uri)
    out = tmp_path / "oct"
    (out / "per_class").mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    (out / "per_class" / "CNV.png").write_bytes(b"png")
    headline = {
        "accuracy": {"value": 0.75, "ci_low": 0.7, "ci_high": 0.8, "n": 40},
        "auc": {"value": 0.9, "ci_low": math.nan, "ci_high": math.nan, "n": 40},
    }
    run_id = tracking.log_evaluation(
        "oct",
        "vgg16-test",
        headline=headline,
        training_run_id=["abc", "def"],
        artifacts=[out / "metrics.json", out / "per_class"],
        params={"top_k": 3},
        tags={"variant": "x"},
        rule="oct_evaluate",
        extra_metrics={"recall_cnv": 0.5, "recall_dme": math.nan},
    )
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.experiment_id == client.get_experiment_by_name("oct").experiment_id
    assert run.info.status == "FINISHED" and run.info.run_name == "vgg16-test"
    assert run.data.metrics == {
        "test_accuracy": 0.75,
        "test_accuracy_ci_low": 0.7,
        "test_accuracy_ci_high": 0.8,
        "test_accuracy_n": 40.0,
        "test_auc": 0.9,
        "test_auc_n": 40.0,
        "test_recall_cnv": 0.5,
    }  # NaN interval and extra not logged
    tags = run.data.tags
    assert tags["training_run_id"] == "abc,def" and tags["variant"] == "x" and tags["snakemake_rule"] == "oct_evaluate"
    assert run.data.params == {"top_k": "3"}
    assert [a.path for a in client.list_artifacts(run_id, "evaluation")] == [
        "evaluation/metrics.json",
        "evaluation/per_class",
    ]
    assert [a.path for a in client.list_artifacts(run_id, "evaluation/per_class")] == ["evaluation/per_class/CNV.png"]


def test_log_evaluation_refuses_bad_headline_and_missing_artifact_before_starting_a_run(tmp_path, monkeypatch):
    uri = tracking.resolve_uri("", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.create_store(uri)
    ok = {"auc": {"value": 0.9, "ci_low": 0.8, "ci_high": 0.95, "n": 10}}
    with pytest.raises(ValueError, match="exactly the keys"):
        tracking.log_evaluation("rsna", "r", headline={"auc": {"value": 0.9}}, training_run_id="a")
    with pytest.raises(InputError, match="does not exist"):
        tracking.log_evaluation("rsna", "r", headline=ok, training_run_id="a", artifacts=[tmp_path / "nope.png"])
    with pytest.raises(ValueError, match="collides"):
        tracking.log_evaluation("rsna", "r", headline=ok, training_run_id="a", extra_metrics={"auc_n": 1.0})
    client = mlflow.MlflowClient(uri)
    assert client.search_runs([client.get_experiment_by_name("rsna").experiment_id]) == []
    run_id = tracking.log_evaluation("rsna", "r", headline=ok, training_run_id="single")
    assert client.get_run(run_id).data.tags["training_run_id"] == "single"
