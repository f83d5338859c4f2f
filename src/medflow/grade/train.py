"""Train the grade ResNet18 on slices through ``medflow.train.fit``, selecting on patient-level val AUC."""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from medflow.errors import InputError
from medflow.evaluation.classification import binary_report
from medflow.grade.aggregate import aggregate
from medflow.grade.data import GradeSlices, read_index
from medflow.grade.model import build_resnet18
from medflow.train import FitConfig, Tracking, fit, loader_kwargs, seed_everything, select_device

log = logging.getLogger(__name__)

MONITOR_MODE = {"val_auc": "max", "val_slice_auc": "max", "val_loss": "min"}
CLASSES = ["LGG", "HGG"]
TIE_TO_LATER = -1e-9


@torch.no_grad()
def predict(model: torch.nn.Module, loader, device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P(HGG) (N,), slice labels (N,) and dataset indices (N,) over ``loader``, in its order."""
    model.eval()
    probs, labels, idx = [], [], []
    for x, y, i in loader:
        logits = model(x.to(device, non_blocking=True)).float()
        probs.append(torch.softmax(logits, dim=1)[:, 1].cpu())
        labels.append(y)
        idx.append(i)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy(), torch.cat(idx).numpy()


def class_weights(targets: np.ndarray, mode: str) -> torch.Tensor | None:
    """``balanced``: n / (2 n_c) per class from the training slices (as scikit-learn); ``none``: None."""
    if mode == "none":
        return None
    counts = np.bincount(targets, minlength=2).astype(float)
    if (counts == 0).any():
        return None
    return torch.tensor(counts.sum() / (2 * counts), dtype=torch.float32)


def train(
    slices_path: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    curves_path: str | os.PathLike,
    params: Mapping[str, Any],
    *,
    aggregate_rule: str,
    threads: int,
    seed: int,
    bf16: bool = True,
    rule: str | None = "grade_train",
    track: bool = True,
):
    """Fit ResNet18 (4-channel conv1, 2 outputs) with cross-entropy on the ``train`` slices.

    ``params`` is the ``grade.train`` config block (weights, conv1_init, epochs, batch_size, lr,
    weight_decay, patience, monitor, class_weights, augment). Validation each epoch: slice loss,
    slice AUC and the patient-level AUC of the ``aggregate_rule`` (the default monitor).
    """
    device = select_device(threads)
    index = read_index(slices_path)
    train_ds = GradeSlices(slices_path, "train", params["augment"], index=index)
    val_ds = GradeSlices(slices_path, "val", None, index=index)
    for name, ds in (("train", train_ds), ("val", val_ds)):
        if len(ds) == 0:
            raise InputError(slices_path, f"no {name} slices")
        log.info("%s: %d slices of %d cases (HGG slices %d)", name, len(ds), len(set(ds.cases)), int(ds.targets.sum()))

    seed_everything(seed)
    model = build_resnet18(4, 2, weights=params["weights"], conv1_init=params["conv1_init"])
    n_params = sum(p.numel() for p in model.parameters())
    log.info("ResNet18 (4-channel conv1): %s parameters", f"{n_params:,}")
    weight = class_weights(train_ds.targets, params["class_weights"])
    if weight is not None:
        log.info("class weights LGG %.3f HGG %.3f", *weight.tolist())
        weight = weight.to(device)

    lk = loader_kwargs(device, threads)
    bs = int(params["batch_size"])
    train_loader = DataLoader(train_ds, batch_size=bs, shuffle=True, **lk)
    val_loader = DataLoader(val_ds, batch_size=bs, shuffle=False, **lk)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(params["lr"]), weight_decay=float(params["weight_decay"]))

    def train_step(model, batch):
        x, y, _ = batch
        return F.cross_entropy(model(x), y, weight=weight)

    def evaluate(model, loader):
        prob, y, idx = predict(model, loader, device)
        p = np.clip(prob, 1e-7, 1 - 1e-7)
        patients = aggregate(val_ds.cases[idx], prob, aggregate_rule, labels=y)
        return {
            "loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
            "slice_auc": binary_report(y, prob)["auc"],
            "auc": binary_report(patients["label"], patients["prob"])["auc"],
        }

    monitor = params["monitor"]
    # A patient-level AUC over few validation patients is coarse and often saturates at 1.0 after an
    # epoch or two; a slightly negative min_delta hands exact ties to the later, better-trained epoch.
    cfg = FitConfig(epochs=int(params["epochs"]), monitor=monitor, mode=MONITOR_MODE[monitor], patience=int(params["patience"]),
                    min_delta=TIE_TO_LATER, seed=seed, bf16=bf16)
    meta = {
        "arch": "resnet18",
        "in_channels": 4,
        "modalities": ["flair", "t1", "t1ce", "t2"],
        "classes": CLASSES,
        "weights": params["weights"],
        "conv1_init": params["conv1_init"],
        "aggregate": aggregate_rule,
    }
    tracking = None
    if track:
        tracking = Tracking(
            experiment="brats_grade",
            run_name="resnet18",
            params={**params, "aggregate": aggregate_rule, "seed": seed, "n_train_slices": len(train_ds), "n_val_slices": len(val_ds),
                    "n_train_cases": len(set(train_ds.cases)), "n_val_cases": len(set(val_ds.cases))},
            rule=rule,
        )
    return fit(
        model,
        optimizer,
        train_loader,
        val_loader,
        train_step=train_step,
        evaluate=evaluate,
        cfg=cfg,
        device=device,
        checkpoint_path=checkpoint_path,
        checkpoint_meta=meta,
        fingerprint={**params, "aggregate": aggregate_rule, "seed": seed},
        tracking=tracking,
        curves_path=curves_path,
    )


def load_model(checkpoint: Mapping) -> torch.nn.Module:
    """Rebuild the trained ResNet18 from a checkpoint (random init, then the saved weights)."""
    meta = checkpoint["meta"]
    model = build_resnet18(int(meta["in_channels"]), len(meta["classes"]), weights="none")
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
