"""MLflow helpers every training and evaluation script uses.

The store is created once, before jobs start (rule ``mlflow_store``): parallel jobs that open a
not-yet-created sqlite database at once corrupt it. Checkpoints are logged as plain files (they
load with ``torch.load(weights_only=True)``), not with ``mlflow.pytorch.log_model``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for annotations only: mlflow is slow to import, so functions import it when called
    import mlflow

# One experiment per pipeline; created up front so jobs never race to create one.
EXPERIMENTS = ("brats_segmentation", "brats_grade", "mrnet", "rsna", "oct")
ENV_URI = "MLFLOW_TRACKING_URI"


def resolve_uri(config_uri: str | None, results: str) -> str:
    """Tracking URI: ``mlflow.tracking_uri`` in config, else ``$MLFLOW_TRACKING_URI``, else a sqlite
    file under ``<results>/mlflow``. The sqlite timeout lets concurrent writers wait for the lock
    instead of failing with 'database is locked'."""
    if config_uri:
        return config_uri
    if os.environ.get(ENV_URI):
        return os.environ[ENV_URI]
    db = Path(results, "mlflow", "mlflow.db").resolve()
    return f"sqlite:///{db}?timeout=120"


def current_uri() -> str:
    return os.environ.get(ENV_URI) or resolve_uri(None, "results")


def _artifact_root(uri: str) -> str | None:
    """Artifacts beside a local sqlite store (not in the current directory, MLflow's default)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :].split("?")[0])
        return (db.parent / "artifacts").as_uri()
    return None


def create_store(uri: str, experiments=EXPERIMENTS) -> dict[str, str]:
    """Create the store (schema migrations run here, once) and every experiment; return name -> id."""
    import mlflow

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :].split("?")[0]).parent.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=uri)
    root = _artifact_root(uri)
    ids = {}
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            loc = f"{root}/{name}" if root else None
            ids[name] = client.create_experiment(name, artifact_location=loc)
        else:
            ids[name] = exp.experiment_id
    return ids


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    """The workflow's git commit (with '-dirty' when it has local changes), or 'unknown'."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params -> dotted keys, the form MLflow shows as columns."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


@contextlib.contextmanager
def run(
    experiment: str,
    run_name: str,
    *,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    rule: str | None = None,
    run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or, given ``run_id``, resume) a run with the tags every run carries: git commit and rule.

    ``run_id`` continues the same run after a killed job restarts, so its curves stay in one place.
    """
    import mlflow

    mlflow.set_tracking_uri(current_uri())
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name) as active:
        if run_id is None:
            all_tags = {"git_commit": git_commit(), "medflow.version": _version()}
            if rule:
                all_tags["snakemake_rule"] = rule
            all_tags.update(tags or {})
            mlflow.set_tags(all_tags)
            if params:
                # MLflow caps a param value at 6000 characters; ours are short config values.
                mlflow.log_params({k: str(v) for k, v in flatten(params).items()})
        yield active


def log_evaluation(
    experiment: str,
    run_name: str,
    *,
    headline: Mapping[str, Mapping[str, Any]],
    training_run_id: str | Sequence[str],
    artifacts: Iterable[str | os.PathLike] = (),
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    rule: str | None = None,
    extra_metrics: Mapping[str, float] | None = None,
) -> str:
    """Record one evaluation as one MLflow run (through ``run``); return its run id.

    ``headline``: the metrics.json headline block (``medflow.evaluation.headline``); each entry becomes the
    metrics ``test_<name>``, ``test_<name>_ci_low``, ``test_<name>_ci_high`` and ``test_<name>_n``.
    ``extra_metrics``: further flat name -> number, logged as ``test_<name>``. NaN numbers are not logged
    (metrics.json keeps them). ``training_run_id``: the training run(s) of the evaluated model(s), tagged
    ``training_run_id`` (a list is joined with commas). ``artifacts``: files or folders, logged under the
    artifact path ``evaluation`` (a folder keeps its name: ``evaluation/<folder>/...``).
    """
    import math

    import mlflow

    from medflow.evaluation.headline import headline_block

    block = headline_block(headline)
    metrics: dict[str, float] = {}
    for name, entry in block.items():
        metrics.update(
            {
                f"test_{name}": entry["value"],
                f"test_{name}_ci_low": entry["ci_low"],
                f"test_{name}_ci_high": entry["ci_high"],
                f"test_{name}_n": float(entry["n"]),
            }
        )
    for name, v in (extra_metrics or {}).items():
        if f"test_{name}" in metrics:
            raise ValueError(f"extra metric {name!r} collides with a headline metric")
        metrics[f"test_{name}"] = float(v)
    metrics = {k: v for k, v in metrics.items() if not math.isnan(v)}
    if not isinstance(training_run_id, str):
        training_run_id = ",".join(training_run_id)
    if "training_run_id" in (tags or {}):
        raise ValueError("pass training_run_id as its own argument, not in tags")
    paths = _existing(artifacts, "evaluation")
    with run(
        experiment, run_name, params=params, tags={**(tags or {}), "training_run_id": training_run_id}, rule=rule
    ) as active:
        mlflow.log_metrics(metrics)
        _log_artifacts(paths, "evaluation")
        return active.info.run_id


def log_prediction(
    experiment: str,
    run_name: str,
    *,
    models: Sequence[Mapping[str, str]],
    artifacts: Iterable[str | os.PathLike] = (),
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    rule: str | None = None,
) -> str:
    """Record one prediction run (on new data) as one MLflow run; return its run id.

    ``models``: ``medflow.lineage.model_record`` dicts; each model is tagged ``training_run_id.<name>`` and
    ``checkpoint_sha256.<name>`` (and ``training_run_id`` lists them all, comma-joined, as evaluation runs
    do). ``metrics``: counts (items predicted, excluded), logged as given. ``artifacts``: files or folders,
    logged under the artifact path ``predict``.
    """
    import mlflow

    tags = {"stage": "predict", "training_run_id": ",".join(m["training_run_id"] for m in models)}
    for m in models:
        tags[f"training_run_id.{m['name']}"] = m["training_run_id"]
        tags[f"checkpoint_sha256.{m['name']}"] = m["sha256"]
    paths = _existing(artifacts, "prediction")
    with run(experiment, run_name, params=params, tags=tags, rule=rule) as active:
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        _log_artifacts(paths, "predict")
        return active.info.run_id


def _existing(artifacts: Iterable[str | os.PathLike], what: str) -> list[Path]:
    """The artifact paths, each checked to exist before a run starts (so a missing file leaves no
    half-logged run)."""
    from medflow.errors import InputError

    paths = [Path(a) for a in artifacts]
    for p in paths:
        if not p.exists():
            raise InputError(p, f"{what} artifact does not exist")
    return paths


def _log_artifacts(paths: Iterable[Path], under: str) -> None:
    """Files under the artifact path ``under``; a folder keeps its name (``<under>/<folder>/...``)."""
    import mlflow

    for p in paths:
        if p.is_dir():
            mlflow.log_artifacts(str(p), artifact_path=f"{under}/{p.name}")
        else:
            mlflow.log_artifact(str(p), artifact_path=under)


def _version() -> str:
    from medflow import __version__

    return __version__


def run_url(run_id: str, experiment_id: str) -> str:
    """Where a run opens in ``mlflow ui`` (relative to the UI's address)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}"
