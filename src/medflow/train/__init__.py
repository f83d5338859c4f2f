"""Shared training: ``fit`` (the one loop), ``predict`` (the one inference loop), the set-up around
them (``Job``, ``make_loaders``, ``fit_config``, ``tracking``), device handling (one GPU per job, bf16
where it is native, float32 heads) and checkpoints."""

from medflow.train.device import DeviceError, autocast, fp32_head, loader_kwargs, select_device, to_device
from medflow.train.loop import (
    FitConfig,
    FitResult,
    Tracking,
    fit,
    load_checkpoint,
    seed_everything,
)
from medflow.train.predict import predict
from medflow.train.setup import Job, fit_config, make_loaders, tracking

__all__ = [
    "DeviceError",
    "FitConfig",
    "FitResult",
    "Job",
    "Tracking",
    "autocast",
    "fit",
    "fit_config",
    "fp32_head",
    "load_checkpoint",
    "loader_kwargs",
    "make_loaders",
    "predict",
    "seed_everything",
    "select_device",
    "to_device",
    "tracking",
]
