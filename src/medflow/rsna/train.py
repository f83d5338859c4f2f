"""Training the RSNA models through ``medflow.train.fit``: the two-input network (variant
``with_metadata``) and the same network without its metadata branch (``image_only``).

Augmentation (random shifts, small rotations and zooms, optional horizontal flips) runs on the batch
inside the training step, with torch's generator that ``fit`` seeds every epoch, so a resumed run
draws the same augmentations. Validation scores through ``medflow.rsna.predict``, as evaluation does.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medflow import train as mtrain
from medflow.errors import InputError
from medflow.evaluation.classification import binary_report
from medflow.rsna.data import H5Patients, read_info, split_indices
from medflow.rsna.model import GREY_MEAN, GREY_STD, ModelConfig, TwoInputNet, normalise
from medflow.rsna.predict import predict

log = logging.getLogger(__name__)

VARIANTS = {"with_metadata": True, "image_only": False}  # variant -> uses metadata
EXPERIMENT = "rsna"


@dataclass(frozen=True)
class Augment:
    """Config ``rsna.train.augment``: per-sample random affine of the training batches."""

    translate: float = 0.0  # largest shift, fraction of the image size
    rotate_deg: float = 0.0  # largest rotation, degrees
    scale: float = 0.0  # largest zoom in or out, fraction
    hflip: bool = False  # left-right flips with probability 1/2


@dataclass(frozen=True)
class TrainConfig:
    """Config ``rsna.train``: the model (backbone ... dropout, see ``ModelConfig``) and its optimisation."""

    epochs: int
    patience: int  # epochs without a better val AUC before stopping; 0 never stops early
    batch_size: int
    lr: float
    weight_decay: float
    backbone: str = "simple"
    weights: str = "none"
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    meta_hidden: int = 16
    dropout: float = 0.2
    augment: Augment = Augment()

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            backbone=self.backbone,
            weights=self.weights,
            channels=list(self.channels),
            meta_hidden=self.meta_hidden,
            dropout=self.dropout,
        )


@dataclass(frozen=True)
class TrainParams:
    """One training job: the variant (the rule's wildcard) and config ``rsna.train``."""

    variant: str
    train: TrainConfig

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, got {self.variant!r}")


def augment(image: torch.Tensor, translate: float, rotate_deg: float, scale: float, hflip: bool) -> torch.Tensor:
    """Random affine per sample of a (B, 1, H, W) batch: shift up to ``translate`` of the size, rotate
    up to ``rotate_deg``, zoom by up to ``scale`` (fraction), flip left-right when ``hflip``."""
    b = image.shape[0]
    if b == 0 or (translate == 0 and rotate_deg == 0 and scale == 0 and not hflip):
        return image
    dev = image.device
    angle = (torch.rand(b) * 2 - 1) * math.radians(rotate_deg)
    zoom = 1 + (torch.rand(b) * 2 - 1) * scale
    shift = (torch.rand(b, 2) * 2 - 1) * 2 * translate  # grid units: the image spans [-1, 1]
    flip = torch.where(torch.rand(b) < 0.5, -1.0, 1.0) if hflip else torch.ones(b)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta.to(dev, image.dtype), list(image.shape), align_corners=False)
    # Padding with the normalised black level: outside the film is background, not average grey.
    black = -GREY_MEAN / GREY_STD
    return F.grid_sample(image - black, grid, align_corners=False, padding_mode="zeros") + black


def val_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Validation loss (mean BCE of the probabilities, eps 1e-7) and AUC from targets y (N,) and P(pneumonia) p (N,)."""
    eps = 1e-7
    loss = float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))) if len(y) else float("nan")
    return {"loss": loss, "auc": binary_report(y, p)["auc"]}


def train(
    inputs: Mapping[str, Any], outputs: Mapping[str, Any], params: TrainParams, job: mtrain.Job
) -> mtrain.FitResult:
    """Train ``params.variant`` on the train split, select on val AUC, write the best checkpoint.

    ``inputs``: ``h5`` (the preprocessing HDF5), ``split`` (the ingest split CSV); ``outputs``:
    ``checkpoint`` and optionally ``curves`` (PNG). The checkpoint's ``meta`` records the pipeline ("rsna"), the
    variant, the model config, the metadata feature names, the image size (which evaluation checks against its
    HDF5) and the HDF5's ``preprocessing`` record (every image and feature parameter; prediction re-applies it).
    """
    h5_path, split_csv = inputs["h5"], inputs["split"]
    cfg, variant = params.train, params.variant
    use_meta = VARIANTS[variant]
    device = mtrain.select_device(job.threads)
    mtrain.seed_everything(job.seed)
    idx = split_indices(h5_path, split_csv)
    for name in ("train", "val"):
        if len(idx.get(name, [])) == 0:
            raise InputError(split_csv, f"no usable patient in the {name} split")
    info = read_info(h5_path)
    if info.preprocessing is None:
        raise InputError(
            h5_path, "records no preprocessing parameters (written by an older medflow): rerun rsna_preprocess"
        )
    features, size = info.meta_features, info.size
    n_pos = int(info.targets[idx["train"]].sum())
    mcfg = cfg.model_config()
    model = TwoInputNet(len(features), mcfg, use_meta=use_meta)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "%s: %d train (%d positive), %d val patients; %d features; %d parameters; device %s",
        variant,
        len(idx["train"]),
        n_pos,
        len(idx["val"]),
        len(features),
        n_params,
        device,
    )
    # drop_lone=False: the simple CNN's BatchNorm2d normalises over pixels too, so a batch of one trains.
    train_loader, val_loader = mtrain.make_loaders(
        H5Patients(h5_path, idx["train"]),
        H5Patients(h5_path, idx["val"]),
        batch_size=cfg.batch_size,
        device=device,
        threads=job.threads,
        drop_lone=False,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg.lr), weight_decay=float(cfg.weight_decay))
    aug = cfg.augment

    def train_step(m, batch):
        image, meta, y = batch
        x = augment(normalise(image), float(aug.translate), float(aug.rotate_deg), float(aug.scale), bool(aug.hflip))
        return F.binary_cross_entropy_with_logits(m(x, meta if use_meta else None).float(), y)

    def validate(m, loader):
        out = predict(m, loader, device, bf16=job.bf16)
        return val_metrics(out["target"], out["prob"])

    config_dict = dataclasses.asdict(cfg)
    # pipeline and preprocessing: what the predict stage needs to refuse another pipeline's checkpoint and to
    # prepare new DICOMs exactly as this model's training images were (medflow.rsna.predict).
    meta = {
        "pipeline": EXPERIMENT,
        "variant": variant,
        "use_meta": use_meta,
        "model": mcfg.to_dict(),
        "meta_features": features,
        "size": size,
        "preprocessing": info.preprocessing,
    }
    tracking = mtrain.tracking(
        job,
        EXPERIMENT,
        f"{job.rule or 'rsna_train'}/{variant}",
        {
            "variant": variant,
            "seed": job.seed,
            "n_train": len(idx["train"]),
            "n_val": len(idx["val"]),
            "image_size": size,
            "meta_features": ",".join(features) if use_meta else "",
            "n_parameters": n_params,
            **config_dict,
        },
        tags={"pipeline": "rsna", "variant": variant},
    )
    return mtrain.fit(
        model,
        opt,
        train_loader,
        val_loader,
        train_step=train_step,
        evaluate=validate,
        cfg=mtrain.fit_config(cfg, monitor="val_auc", mode="max", job=job),
        device=device,
        checkpoint_path=outputs["checkpoint"],
        checkpoint_meta=meta,
        tracking=tracking,
        fingerprint={"params": config_dict, "variant": variant, "seed": job.seed, "n_train": len(idx["train"])},
        curves_path=outputs.get("curves"),
    )
