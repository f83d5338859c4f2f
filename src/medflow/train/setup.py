"""The set-up every training job repeats around ``fit``: what the rule gives it, two loaders, a
``FitConfig`` from its config block, and its MLflow ``Tracking``."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from medflow.train.device import JobClaim, loader_kwargs, set_job_claim
from medflow.train.loop import FitConfig, Tracking


@dataclass(frozen=True)
class Job:
    """What a training or evaluation job gets from its rule besides inputs, outputs and params:
    ``threads`` (torch and loader workers), ``seed`` (config ``seed``), ``bf16`` (config
    ``compute.bf16``), the rule's name (tagged in MLflow), whether to record an MLflow run, ``gpus``
    (the rule's ``gpu`` resource; None outside Snakemake) and ``loader_workers`` (DataLoader workers
    on CUDA, ``params.loader_workers`` where the rule passes it)."""

    threads: int = 1
    seed: int = 0
    bf16: bool = True
    rule: str | None = None
    track: bool = True
    gpus: int | None = None
    loader_workers: int | None = None

    @classmethod
    def from_snakemake(cls, smk) -> Job:
        """From a script's ``snakemake`` object: ``threads``, ``rule``, ``resources.gpu``, and
        ``params.seed``, ``params.bf16`` and ``params.loader_workers`` where the rule passes them (the
        defaults otherwise).

        Also records the claim for this process (``medflow.train.device.set_job_claim``: a workflow
        script is one job), so ``select_device`` gives the job a GPU of its own, or fails when the
        claimed GPU is unusable, and ``loader_kwargs`` uses its loader workers. GPU lock files go to
        ``<config results>/.gpu_locks`` (read from the config: where locks live changes no output).
        """
        params = getattr(smk, "params", None)
        kw: dict[str, Any] = {"threads": int(smk.threads), "rule": getattr(smk, "rule", None)}
        for key, conv in (("seed", int), ("bf16", bool), ("loader_workers", int)):
            value = _get(params, key)
            if value is not None:
                kw[key] = conv(value)
        gpus = _get(getattr(smk, "resources", None), "gpu")
        if gpus is not None:
            kw["gpus"] = int(gpus)
        job = cls(**kw)
        results = _get(getattr(smk, "config", None), "results") or "results"
        set_job_claim(
            JobClaim(gpus=job.gpus, loader_workers=job.loader_workers, lock_dir=os.path.join(results, ".gpu_locks"))
        )
        return job


def _get(obj, key: str):
    """``obj[key]`` of a mapping, ``obj.key`` of Snakemake's Params (a named list) or a dataclass; None if absent."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def make_loaders(
    train_ds,
    val_ds,
    *,
    batch_size: int,
    device: torch.device,
    threads: int,
    drop_lone: bool = True,
    cuda_workers: int | None = None,
    **kw,
) -> tuple[DataLoader, DataLoader]:
    """A shuffled train loader and an ordered val loader with ``loader_kwargs(device, threads,
    cuda_workers=cuda_workers)``.

    The train order and the loader workers' seeds come from torch's global generator, which ``fit``
    seeds every epoch, so a resumed run replays an uninterrupted one's shuffles and augmentations; it
    is the order of ``DataLoader(train_ds, batch_size=batch_size, shuffle=True, **loader_kwargs(...))``.
    ``drop_lone`` drops a last train batch of exactly one item (a different item each epoch), which
    BatchNorm cannot train on; ``False`` keeps every item. ``kw`` (e.g. ``collate_fn``) goes to both
    loaders. Pipelines that pack batches with their own batch sampler (MRNet: whole exams up to a
    slice budget) build their loaders with that sampler and ``loader_kwargs`` instead.
    """
    for key in ("sampler", "batch_sampler", "shuffle", "drop_last"):
        if key in kw:
            raise TypeError(
                f"make_loaders sets {key!r} itself; a pipeline with its own sampler builds its "
                "DataLoaders directly with loader_kwargs(device, threads)"
            )
    bs = int(batch_size)
    if bs < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
    lk = {**loader_kwargs(device, threads, cuda_workers=cuda_workers), **kw}
    train = DataLoader(train_ds, batch_size=bs, shuffle=True, drop_last=drop_lone and len(train_ds) % bs == 1, **lk)
    val = DataLoader(val_ds, batch_size=bs, shuffle=False, **lk)
    return train, val


def fit_config(params, *, monitor: str, mode: str, job: Job, min_delta: float = 0.0, **extra) -> FitConfig:
    """``FitConfig`` from a config block (mapping or dataclass) with ``epochs`` and optionally
    ``patience`` (default 0: no early stopping) and ``grad_clip``; seed and bf16 from ``job``.
    ``extra`` sets other ``FitConfig`` fields."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    epochs = _get(params, "epochs")
    if epochs is None:
        raise ValueError("the training config block has no 'epochs'")
    patience = _get(params, "patience")
    grad_clip = _get(params, "grad_clip")
    kw: dict[str, Any] = {"patience": int(patience or 0)}
    if grad_clip is not None:
        kw["grad_clip"] = float(grad_clip)
    kw.update(extra)
    return FitConfig(
        epochs=int(epochs), monitor=monitor, mode=mode, min_delta=min_delta, seed=job.seed, bf16=job.bf16, **kw
    )


def tracking(
    job: Job, experiment: str, run_name: str, params, *, tags: Mapping[str, str] | None = None
) -> Tracking | None:
    """The MLflow run ``fit`` records to (tagged with ``job.rule``), or None when ``job.track`` is False.
    ``params`` (a mapping or dataclass) is logged once, flattened to dotted keys (``medflow.tracking.run``)."""
    if not job.track:
        return None
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        params = dataclasses.asdict(params)
    return Tracking(experiment=experiment, run_name=run_name, params=dict(params), tags=dict(tags or {}), rule=job.rule)
