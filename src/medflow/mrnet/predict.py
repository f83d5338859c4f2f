"""Per-exam P(positive) of one plane model: the one place MRNet exams become model outputs.

Everything runs through ``medflow.train.predict`` (eval mode, inference mode, bf16 autocast on CUDA,
full precision on the CPU), so the monitor AUC inside training, the predictions every training job
writes (held-out fold, valid, in sample) and predictions on new exams are computed alike. Batches are
packed (``medflow.mrnet.data``): ``{"slices": (N, H, W) uint8, "counts": (B,), "label": (B,)}``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
import torch

from medflow.mrnet.data import exam_loader
from medflow.mrnet.model import MRNet
from medflow.train import predict as infer

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def exam_logits(model: MRNet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A packed batch -> one float32 logit per exam (B,)."""
    return model(batch["slices"], batch["counts"]).float()


def score_exams(
    model: MRNet, loader: Iterable, device: torch.device, *, bf16: bool = True, loss: LossFn | None = None
) -> dict[str, np.ndarray]:
    """``{"prob": (N,) P(positive), "label": (N,)}`` for the loader's exams in order; with ``loss``
    (logits (B,), labels (B,) -> a summed scalar) also ``"loss"``: its value per batch, (batches,)."""

    def forward(m, batch):
        logits = exam_logits(m, batch)
        out = {"prob": torch.sigmoid(logits), "label": batch["label"]}
        if loss is not None:
            out["loss"] = loss(logits, batch["label"]).reshape(1)
        return out

    return infer(model, loader, device, bf16=bf16, forward=forward)


def predict_probabilities(model: MRNet, loader: Iterable, device: torch.device, *, bf16: bool = True) -> np.ndarray:
    """P(positive) (N,) float32 for the loader's exams, in order."""
    return score_exams(model, loader, device, bf16=bf16)["prob"]


def predict_exams(
    model: MRNet,
    root: str | os.PathLike,
    plane: str,
    exams: pd.DataFrame,
    *,
    size: int,
    batch_slices: int,
    device: torch.device,
    threads: int,
    bf16: bool = True,
) -> np.ndarray:
    """P(positive) (N,) of an exam table's exams (``medflow.mrnet.data.exam_table``; ``label`` unused), in
    its row order: their ``plane`` series under ``root`` resized to ``size`` pixels, packed up to
    ``batch_slices`` slices per batch."""
    loader = exam_loader(
        root, plane, exams, size=size, batch_slices=batch_slices, shuffle=False, device=device, threads=threads
    )
    return predict_probabilities(model.to(device), loader, device, bf16=bf16)
