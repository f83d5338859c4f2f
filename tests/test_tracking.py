"""MLflow store: created once up front, then many jobs write to it at once without losing anything."""

import multiprocessing as mp

import mlflow

from medflow import tracking

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
