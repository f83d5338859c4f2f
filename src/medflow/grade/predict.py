"""Slice P(HGG) from the grade ResNet18: the one place its inputs become outputs.

Used by the validation inside ``fit`` (:mod:`medflow.grade.train`), by the evaluation and by a later
prediction stage, all through ``medflow.train.predict`` with the job's ``bf16``, so validation and test
figures come from the same precision (bf16 autocast on CUDA, float32 on the CPU).
"""

from __future__ import annotations

import numpy as np
import torch

from medflow.train import predict


def _forward(model: torch.nn.Module, batch):
    """P(HGG) (B,) of a ``GradeSlices`` batch ``(x (B, 4, S, S), grade (B,), index (B,))``; the grade and the
    dataset index pass through, so every probability keeps its slice."""
    x, y, i = batch
    # Softmax in float32 whatever the autocast dtype of the logits, as the logits of a bf16 run are.
    return torch.softmax(model(x).float(), dim=1)[:, 1], y, i


def predict_slices(
    model: torch.nn.Module, loader, device: torch.device, *, bf16: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P(HGG) (N,) float32, slice grades (N,) int64 (1 = HGG) and dataset indices (N,) int64 over
    ``loader`` (batches of a :class:`~medflow.grade.data.GradeSlices`), in the loader's order."""
    return predict(model, loader, device, bf16=bf16, forward=_forward)
