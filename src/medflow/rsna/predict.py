"""P(pneumonia) per image: the one place an RSNA model turns (image, metadata) batches into outputs.

Validation inside ``fit``, the evaluation stage and a later prediction stage all call ``predict``, so
they share one precision (``medflow.train.predict``: bf16 autocast on CUDA, full precision on the CPU).
"""

from __future__ import annotations

import numpy as np
import torch

from medflow import train as mtrain
from medflow.rsna.model import normalise


def forward(model: torch.nn.Module, batch) -> dict[str, torch.Tensor]:
    """One batch ``(image uint8 (B, H, W), meta float32 (B, F)[, target (B,)])`` -> ``{"prob": (B,)}``
    plus ``"target"`` passed through when the batch has one. The image-only model ignores ``meta``."""
    image, meta, *rest = batch
    logits = model(normalise(image), meta if model.use_meta else None)
    out = {"prob": torch.sigmoid(logits.float())}
    if rest:
        out["target"] = rest[0]
    return out


def predict(model: torch.nn.Module, loader, device: torch.device, *, bf16: bool = True) -> dict[str, np.ndarray]:
    """``{"prob": (N,) float32 P(pneumonia)}`` over ``loader`` in its order, plus ``"target"`` (N,) when its
    batches carry targets (``medflow.rsna.data.H5Patients`` does)."""
    return mtrain.predict(model, loader, device, bf16=bf16, forward=forward)
