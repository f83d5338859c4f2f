"""Train the OCT VGG16 classifier through ``medflow.train.fit`` (NLL loss, Adam on the trainable head)."""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from medflow.errors import InputError
from medflow.ingest.oct import class_to_idx, read_split
from medflow.oct.data import OctImages, eval_transform, train_transform
from medflow.oct.model import build_vgg16, parameter_counts
from medflow.train import FitConfig, Tracking, fit, loader_kwargs, seed_everything, select_device

log = logging.getLogger(__name__)

MONITOR_MODE = {"val_loss": "min", "val_accuracy": "max"}


def split_table(split_path: str | os.PathLike, split: str):
    table = read_split(split_path)
    part = table[table["split"] == split].reset_index(drop=True)
    if part.empty:
        raise InputError(split_path, f"no images in split {split!r}")
    return part, class_to_idx(sorted(table["label"].unique()))


@torch.no_grad()
def predict_log_proba(model: torch.nn.Module, loader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities (N, n_classes) and targets (N,) over ``loader``, in its order."""
    model.eval()
    out, targets = [], []
    for x, y in loader:
        out.append(model(x.to(device, non_blocking=True)).float().cpu())
        targets.append(y)
    return torch.cat(out).numpy(), torch.cat(targets).numpy()


def train(
    raw_root: str | os.PathLike,
    split_path: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    curves_path: str | os.PathLike,
    params: Mapping[str, Any],
    *,
    threads: int,
    seed: int,
    bf16: bool = True,
    rule: str | None = "oct_train",
    track: bool = True,
):
    """Fit VGG16 on the ``train`` split, selecting on ``params["monitor"]`` over ``val``.

    ``params`` is the ``oct.train`` config block (image_size, resize, augment, weights, hidden,
    dropout, freeze, epochs, batch_size, lr, patience, monitor). Returns ``medflow.train.FitResult``.
    """
    device = select_device(threads)
    train_table, c2i = split_table(split_path, "train")
    val_table, _ = split_table(split_path, "val")
    size, resize = int(params["image_size"]), int(params["resize"])
    train_ds = OctImages(raw_root, train_table, c2i, train_transform(size, resize, params["augment"]))
    val_ds = OctImages(raw_root, val_table, c2i, eval_transform(size, resize))
    log.info("train %d images, val %d images, classes %s", len(train_ds), len(val_ds), c2i)

    seed_everything(seed)
    arch = {
        "hidden": int(params["hidden"]),
        "dropout": float(params["dropout"]),
        "head": params["head"],
        "head_batchnorm": bool(params["head_batchnorm"]),
    }
    model = build_vgg16(len(c2i), weights=params["weights"], **arch)
    counts = parameter_counts(model)
    log.info("VGG16: %s parameters in total, %s trainable (%s frozen)", f"{counts['total']:,}", f"{counts['trainable']:,}", f"{counts['frozen']:,}")

    lk = loader_kwargs(device, threads)
    bs = int(params["batch_size"])
    # A last batch of one image cannot train the head's BatchNorm (torch raises): drop just that image
    # per epoch (a different one each epoch, as the order is shuffled).
    train_loader = DataLoader(train_ds, batch_size=bs, shuffle=True, drop_last=len(train_ds) % bs == 1, **lk)
    val_loader = DataLoader(val_ds, batch_size=bs, shuffle=False, **lk)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=float(params["lr"]))

    def train_step(model, batch):
        x, y = batch
        return F.nll_loss(model(x), y)

    def evaluate(model, loader):
        logp, y = predict_log_proba(model, loader, device)
        return {
            "loss": float(F.nll_loss(torch.from_numpy(logp), torch.from_numpy(y))),
            "accuracy": float((logp.argmax(1) == y).mean()),
        }

    monitor = params["monitor"]
    cfg = FitConfig(epochs=int(params["epochs"]), monitor=monitor, mode=MONITOR_MODE[monitor], patience=int(params["patience"]), seed=seed, bf16=bf16)
    meta = {
        "arch": "vgg16",
        "class_to_idx": c2i,
        "classes": sorted(c2i, key=c2i.get),
        "image_size": size,
        "resize": resize,
        "model": arch,
        "weights": params["weights"],
        "parameters": counts,
    }
    tracking = None
    if track:
        tracking = Tracking(
            experiment="oct",
            run_name="vgg16",
            params={**params, "seed": seed, "n_train": len(train_ds), "n_val": len(val_ds), "parameters": counts},
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
        fingerprint={**params, "seed": seed},
        tracking=tracking,
        curves_path=curves_path,
    )


def load_model(checkpoint: Mapping) -> torch.nn.Module:
    """Rebuild the trained VGG16 from a checkpoint (no ImageNet file needed: the weights are in it)."""
    meta = checkpoint["meta"]
    model = build_vgg16(len(meta["class_to_idx"]), weights="none", **meta["model"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
