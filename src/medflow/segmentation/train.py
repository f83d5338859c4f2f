"""Training the 3D U-Net on BraTS patches through the shared loop (``medflow.train.fit``).

Training and validation patches come from the patient-level split (``split.csv``: id, split, ...):
patches of ``train`` cases train, patches of ``val`` cases select the best epoch by ``val_dice``
(hard Dice of the three labels at ``threshold``, averaged over labels: the tutorial's metric).
Dice of the BraTS regions on the validation patches is logged beside it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Mapping

import torch
from torch.utils.data import DataLoader

from medflow.errors import InputError
from medflow.ingest.splits import ids_in, read_split
from medflow.segmentation import regions
from medflow.segmentation.data import PatchDataset
from medflow.segmentation.loss import soft_dice_loss
from medflow.segmentation.metrics import dice_from_counts
from medflow.segmentation.model import UNet3D
from medflow.train import FitConfig, FitResult, Tracking, fit, loader_kwargs, seed_everything, select_device

log = logging.getLogger(__name__)

EXPERIMENT = "brats_segmentation"


@dataclass
class UNetParams:
    """Hyperparameters (``brats.segmentation.model`` in config)."""

    depth: int = 3
    base_filters: int = 8
    batch_norm: bool = True
    upsampling: str = "transpose"
    batch_size: int = 2
    epochs: int = 10
    patience: int = 0
    learning_rate: float = 1e-3
    dice_epsilon: float = 1e-5
    threshold: float = 0.5


def split_cases(split_csv: str | os.PathLike, patch_files: Mapping[str, str]) -> dict[str, list[str]]:
    """Train and val case ids from the split file, each checked to have a patch file."""
    split = read_split(split_csv)
    if not {"id", "split"} <= set(split.columns):
        raise InputError(split_csv, f"needs columns id,split; has {list(split.columns)}")
    out = {name: sorted(ids_in(split, name)) for name in ("train", "val")}
    for name, cases in out.items():
        if not cases:
            raise InputError(split_csv, f"no case is in the '{name}' split")
        missing = [c for c in cases if c not in patch_files]
        if missing:
            raise InputError(split_csv, f"{len(missing)} {name} case(s) have no patch file, e.g. {missing[0]}")
    return out


def make_model(params: UNetParams, channels_last: bool = True) -> UNet3D:
    """The U-Net of ``params`` (4 modalities in, 3 labels out). Channels-last 3D weights select
    oneDNN's / cuDNN's faster convolution kernels (about 1.8x on the CPU for the demo model,
    benchmarks/bench_unet3d.py); the values, and so the checkpoint, are the same."""
    model = UNet3D(in_channels=4, n_labels=3, depth=params.depth, base_filters=params.base_filters,
                   batch_norm=params.batch_norm, upsampling=params.upsampling)
    return model.to(memory_format=torch.channels_last_3d) if channels_last else model


def make_steps(params: UNetParams):
    """The ``train_step`` and ``evaluate`` callables ``fit`` needs."""

    def train_step(model, batch):
        image, label = batch
        return soft_dice_loss(model(image), label, params.dice_epsilon)

    def evaluate(model, loader) -> dict[str, float]:
        loss_sum, n = 0.0, 0
        counts = {name: torch.zeros(3, dtype=torch.float64) for name in regions.STRUCTURES}
        for image, label in loader:
            device = next(model.parameters()).device
            image, label = image.to(device, non_blocking=True), label.to(device, non_blocking=True)
            probs = model(image)
            loss_sum += float(soft_dice_loss(probs, label, params.dice_epsilon)) * len(image)
            n += len(image)
            pred_m = regions.masks(regions.probabilities_to_labels(probs.float(), params.threshold, axis=1))
            true_m = regions.masks(regions.onehot_to_labels(label, axis=1))
            for name in regions.STRUCTURES:
                p, t = pred_m[name], true_m[name]
                counts[name] += torch.tensor([float((p & t).sum()), float(p.sum()), float(t.sum())], dtype=torch.float64)
        out = {"loss": loss_sum / max(n, 1)}
        scores = {name: dice_from_counts(*counts[name].tolist()) for name in regions.STRUCTURES}
        out["dice"] = sum(scores[name] for name in regions.LABEL_NAMES) / len(regions.LABEL_NAMES)
        out.update({f"dice_{name}": v for name, v in scores.items()})
        return out

    return train_step, evaluate


def train_unet3d(
    patch_files: Mapping[str, str],
    split_csv: str | os.PathLike,
    checkpoint: str | os.PathLike,
    *,
    params: UNetParams,
    seed: int,
    threads: int = 1,
    bf16: bool = True,
    curves: str | os.PathLike | None = None,
    track: bool = True,
    rule: str | None = "train_unet3d",
    device: torch.device | None = None,
) -> FitResult:
    """Train on the ``train`` cases' patches, select on the ``val`` cases'; write the best checkpoint.

    ``patch_files``: case id -> patch HDF5 (cases of other splits are ignored). The checkpoint's
    ``meta`` holds the model config, patch size and threshold that evaluation needs.
    """
    cases = split_cases(split_csv, patch_files)
    train_ds = PatchDataset([patch_files[c] for c in cases["train"]])
    val_ds = PatchDataset([patch_files[c] for c in cases["val"]])
    for name, ds in (("train", train_ds), ("val", val_ds)):
        if len(ds) == 0:
            raise InputError(split_csv, f"the {name} cases hold no patches")
    if train_ds.patch_size != val_ds.patch_size:
        raise InputError(patch_files[cases["val"][0]], f"val patch size {val_ds.patch_size} differs from train {train_ds.patch_size}")
    device = device or select_device(threads)
    log.info("train: %d patches from %d cases; val: %d patches from %d cases; patch %s",
             len(train_ds), len(cases["train"]), len(val_ds), len(cases["val"]), train_ds.patch_size)

    seed_everything(seed)  # weights start the same on every run with this seed
    model = make_model(params)
    bad = [s for s in train_ds.patch_size if s % model.divisor]
    if bad:
        raise InputError(patch_files[cases["train"][0]], f"patch size {train_ds.patch_size} is not divisible by 2**(depth-1) = {model.divisor}; change the patch size or brats.segmentation.model.depth")
    optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    kw = loader_kwargs(device, threads)
    train_loader = DataLoader(train_ds, batch_size=params.batch_size, shuffle=True, **kw)
    val_loader = DataLoader(val_ds, batch_size=params.batch_size, shuffle=False, **kw)
    train_step, evaluate = make_steps(params)

    hyper = {**asdict(params), "seed": seed, "patch_size": list(train_ds.patch_size), "optimizer": "adam",
             "loss": "soft_dice_squared", "n_train_cases": len(cases["train"]), "n_val_cases": len(cases["val"]),
             "n_train_patches": len(train_ds), "n_val_patches": len(val_ds), "n_parameters": sum(p.numel() for p in model.parameters())}
    meta = {"model": model.config, "patch_size": list(train_ds.patch_size), "threshold": params.threshold,
            "modalities": ["flair", "t1", "t1ce", "t2"], "labels": list(regions.BRATS_LABELS), "hyperparameters": hyper}
    result = fit(
        model, optimizer, train_loader, val_loader,
        train_step=train_step, evaluate=evaluate,
        cfg=FitConfig(epochs=params.epochs, monitor="val_dice", mode="max", patience=params.patience, seed=seed, bf16=bf16),
        device=device,
        checkpoint_path=checkpoint,
        checkpoint_meta=meta,
        fingerprint={**hyper, "train_cases": cases["train"], "val_cases": cases["val"]},
        tracking=Tracking(EXPERIMENT, "train_unet3d", params=hyper, rule=rule) if track else None,
        curves_path=curves,
    )
    train_ds.close()
    val_ds.close()
    best = float("nan") if result.best_score is None else result.best_score
    log.info("best val_dice %.4f at epoch %d%s", best, result.best_epoch,
             " (stopped early)" if result.stopped_early else "")
    return result
