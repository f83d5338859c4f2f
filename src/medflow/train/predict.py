"""The one place a model runs over data without training: validation, evaluation and predict stages."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from medflow.train.device import autocast, to_device

Output = torch.Tensor | tuple | dict


def default_forward(model: torch.nn.Module, batch) -> torch.Tensor:
    """``model(batch[0])`` for a (inputs, targets, ...) tuple/list batch, ``model(batch)`` otherwise."""
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    return model(batch)


def predict(
    model: torch.nn.Module,
    loader: Iterable,
    device: torch.device,
    *,
    bf16: bool = True,
    forward: Callable[[torch.nn.Module, Any], Output] | None = None,
):
    """Run ``model`` over every batch of ``loader`` and gather what ``forward`` returns.

    ``model.eval()``, ``torch.inference_mode()`` and ``medflow.train.autocast(device, bf16)``, the
    precision training and validation use (bf16 on CUDA GPUs with native bf16, full precision on the
    CPU, so CPU results equal a plain loop's bit for bit). Each batch is moved with ``to_device``
    before ``forward(model, batch)``, which returns a tensor, a tuple of tensors or a dict of tensors,
    each (B, ...); batches of targets or ids may pass through it unchanged. Floating outputs are cast
    to float32; all are concatenated on dim 0. Returns an ndarray (N, ...), a tuple of them or a dict
    of them, matching ``forward``'s structure. The model is left in eval mode.

    The loop never waits for the GPU: each batch's outputs are copied to the host without blocking
    and the device is synchronised once, after the last batch.

    ``loader`` is any iterable of batches (a DataLoader, a list). An empty one raises ``ValueError``:
    the structure of the result is unknown without a batch.
    """
    forward = forward or default_forward
    model.eval()
    parts: list = []
    with torch.inference_mode(), autocast(device, bf16):
        for batch in loader:
            out = forward(model, to_device(batch, device))
            parts.append(_map(out, _to_cpu))
    if not parts:
        raise ValueError("predict: the loader yielded no batches")
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the non-blocking copies have landed
    first = parts[0]
    if isinstance(first, dict):
        return {k: _cat([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple):
        return tuple(_cat([p[i] for p in parts]) for i in range(len(first)))
    return _cat(parts)


def _map(out: Output, fn):
    if torch.is_tensor(out):
        return fn(out)
    if isinstance(out, dict):
        return {k: fn(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return tuple(fn(v) for v in out)
    raise TypeError(f"forward must return a tensor, a tuple or a dict of tensors, not {type(out).__name__}")


def _to_cpu(t: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(t):
        raise TypeError(f"forward returned a {type(t).__name__} inside its result; expected tensors")
    # Non-blocking from a GPU: the copy goes to pinned memory, queued behind the forward pass that makes
    # it; predict synchronises once at the end. A CPU tensor is returned as it is.
    return (t.float() if t.is_floating_point() else t).to("cpu", non_blocking=True)


def _cat(parts: list[torch.Tensor]) -> np.ndarray:
    return torch.cat(parts).numpy()
