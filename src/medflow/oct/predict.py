"""Per-image class log-probabilities of the OCT VGG16: the one place its inputs become outputs.

The validation inside ``fit`` (:mod:`medflow.oct.train`), the evaluation and a later prediction stage all
call :func:`predict_log_proba`, i.e. ``medflow.train.predict`` with the job's ``bf16``, so validation and
test figures come from the same precision (bf16 autocast on CUDA, float32 on the CPU).
"""

from __future__ import annotations

import numpy as np
import torch

from medflow.train import predict


def forward(model: torch.nn.Module, batch) -> dict[str, torch.Tensor]:
    """A batch of images (B, 3, S, S), or ``(images, targets (B,))`` as :class:`~medflow.oct.data.OctImages`
    gives -> ``{"log_proba": (B, n_classes)}``, plus ``"target"`` passed through when the batch has one."""
    if isinstance(batch, (tuple, list)):
        x, y = batch
        return {"log_proba": model(x), "target": y}
    return {"log_proba": model(batch)}


def predict_log_proba(
    model: torch.nn.Module, loader, device: torch.device, *, bf16: bool = True
) -> dict[str, np.ndarray]:
    """``{"log_proba": (N, n_classes) float32}`` (the model ends in LogSoftmax) over ``loader`` in its order,
    plus ``"target"`` (N,) int64 class indices when its batches carry them."""
    return predict(model, loader, device, bf16=bf16, forward=forward)
