"""Device choice and the CUDA/CPU differences every training and inference job shares."""

from __future__ import annotations

import contextlib
import logging
import os

import torch

log = logging.getLogger(__name__)


def select_device(threads: int = 1, prefer: str = "auto") -> torch.device:
    """CUDA when a GPU is visible (``CUDA_VISIBLE_DEVICES`` is respected by torch), the CPU otherwise.

    ``threads`` is the rule's ``threads``: torch's intra-op pool on the CPU, loader workers anywhere.
    """
    if prefer == "cpu" or not torch.cuda.is_available():
        # Loader workers take their share of the rule's threads; torch computes on the rest, so a
        # job never runs more busy threads than it claimed from Snakemake.
        torch.set_num_threads(max(1, threads - _workers(torch.device("cpu"), threads)))
        device = torch.device("cpu")
        log.info("device: cpu (%d threads)", torch.get_num_threads())
    else:
        device = torch.device("cuda")
        log.info(
            "device: cuda %s (CUDA_VISIBLE_DEVICES=%s)",
            torch.cuda.get_device_name(device),
            os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
        )
    return device


def describe(device: torch.device) -> str:
    """A short name for logs and MLflow tags: 'cpu' or 'cuda:<gpu name>'."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return "cpu"


def autocast(device: torch.device, bf16: bool = True):
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); full precision on the CPU so CPU
    runs stay exactly reproducible."""
    if bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def loader_kwargs(device: torch.device, threads: int) -> dict:
    """DataLoader settings: workers from the rule's threads, pinned memory on CUDA so host-to-device
    copies can be non-blocking."""
    workers = _workers(device, threads)
    return {
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": workers > 0,
    }


def _workers(device: torch.device, threads: int) -> int:
    """On CUDA the main process only feeds the GPU: all but one thread load data. On the CPU the
    model is the bottleneck: a quarter of the threads load data (none below 4 threads)."""
    if device.type == "cuda":
        return max(0, threads - 1)
    return threads // 4


def to_device(batch, device: torch.device):
    """Move a batch (tensor, or nested list/tuple/dict of them) to ``device`` without blocking."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
