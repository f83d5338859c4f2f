"""Shared training: ``fit`` (the one loop), device handling and checkpoints."""

from medflow.train.device import autocast, loader_kwargs, select_device, to_device
from medflow.train.loop import FitConfig, FitResult, Tracking, fit, load_checkpoint, seed_everything

__all__ = ["FitConfig", "FitResult", "Tracking", "fit", "load_checkpoint", "seed_everything", "select_device", "autocast", "loader_kwargs", "to_device"]
