"""What produced a prediction: the models (checkpoint hash, training run), the config and the commit.

Every predict stage writes ``lineage.json`` beside its outputs (``write_lineage``) and tags its MLflow run
with the same model records (``medflow.tracking.log_prediction``), and refuses a checkpoint that another
pipeline wrote or whose recorded preprocessing differs from the inputs it is given (``check_checkpoint``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from medflow import io
from medflow.errors import InputError


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (checkpoints reach hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_record(name: str, checkpoint: str | os.PathLike, ckpt: Mapping[str, Any] | None = None) -> dict[str, str]:
    """``{name, checkpoint, sha256, training_run_id}`` of one model a prediction used.

    ``ckpt``: the loaded checkpoint dict, if at hand (its ``mlflow_run_id`` is the training run); else the
    file is loaded to read it. A checkpoint trained without tracking has ``training_run_id`` "".
    """
    if ckpt is None:
        from medflow.train.loop import load_checkpoint

        ckpt = load_checkpoint(checkpoint)
    return {
        "name": str(name),
        "checkpoint": str(checkpoint),
        "sha256": file_sha256(checkpoint),
        "training_run_id": str(ckpt.get("mlflow_run_id") or ""),
    }


def lineage(models: Iterable[Mapping[str, str]], params: Mapping[str, Any], rule: str) -> dict[str, Any]:
    """The lineage document: models, the rule and its params (the config that shaped the outputs), the
    workflow's git commit and medflow version, and when it was made (UTC)."""
    from medflow import __version__
    from medflow.tracking import git_commit

    return {
        "rule": rule,
        "models": [dict(m) for m in models],
        "config": io.to_plain(dict(params)),
        "git_commit": git_commit(),
        "medflow_version": __version__,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def write_lineage(
    path: str | os.PathLike, models: Iterable[Mapping[str, str]], params: Mapping[str, Any], rule: str
) -> dict[str, Any]:
    """Write ``lineage(...)`` as JSON at ``path`` (atomically) and return it."""
    doc = lineage(models, params, rule)
    io.write_json(path, doc)
    return doc


def _diff(recorded: Mapping[str, Any], expected: Mapping[str, Any], prefix: str = "") -> list[str]:
    lines = []
    for key in sorted(set(recorded) | set(expected)):
        a, b = recorded.get(key, "<absent>"), expected.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            lines += _diff(a, b, f"{prefix}{key}.")
        elif io.to_plain(a) != io.to_plain(b):
            lines.append(f"{prefix}{key}: checkpoint {io.to_plain(a)!r}, inputs {io.to_plain(b)!r}")
    return lines


def check_checkpoint(
    ckpt: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    pipeline: str,
    preprocessing: Mapping[str, Any] | None = None,
) -> None:
    """Refuse a checkpoint that another pipeline wrote, or whose preprocessing differs from ``preprocessing``.

    ``ckpt["meta"]["pipeline"]`` must equal ``pipeline``; ``ckpt["meta"]["preprocessing"]`` (plain data the
    train stage recorded: the parameters its inputs were made with) must equal ``preprocessing`` (the same
    parameters of the inputs to predict on), compared key by key. Raises ``InputError`` naming the file and
    every difference (``key: checkpoint X, inputs Y``).
    """
    meta = ckpt.get("meta") or {}
    found = meta.get("pipeline")
    if found != pipeline:
        raise InputError(path, f"checkpoint of pipeline {found!r}, not {pipeline!r}: it cannot predict here")
    if preprocessing is None:
        return
    recorded = meta.get("preprocessing")
    if not isinstance(recorded, Mapping):
        raise InputError(path, "checkpoint records no preprocessing parameters (meta.preprocessing): retrain it")
    diff = _diff(recorded, preprocessing)
    if diff:
        raise InputError(path, "preprocessing differs from the checkpoint's training data: " + "; ".join(diff))


def checkpoint_path(configured: str, trained: str | os.PathLike) -> Path:
    """The checkpoint a predict stage uses: the one named in config (``predict.<pipeline>.checkpoint``) or,
    when that is empty, the one the workflow trained."""
    return Path(configured) if configured else Path(trained)
