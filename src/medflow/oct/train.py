"""Train the OCT VGG16 classifier through ``medflow.train.fit`` (NLL loss, Adam on the trainable head)."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medflow.oct.data import Augment, OctImages, eval_transform_for, preprocessing, split_table, train_transform
from medflow.oct.model import build_vgg16, parameter_counts
from medflow.oct.predict import predict_log_proba
from medflow.train import FitResult, Job, fit, fit_config, make_loaders, seed_everything, select_device, tracking

log = logging.getLogger(__name__)

EXPERIMENT = "oct"
RULE = "oct_train"  # the MLflow run name when no rule is given (library callers)
MONITOR_MODE = {"val_loss": "min", "val_accuracy": "max"}


@dataclass(frozen=True)
class TrainBlock:
    """``oct.train`` in config (config/config.yaml explains each key)."""

    image_size: int  # centre crop fed to VGG16, pixels
    resize: int  # shorter side before the crop, pixels
    augment: Augment
    weights: str  # none | imagenet
    head: str  # classifier | last_layer (medflow.oct.model)
    head_batchnorm: bool
    hidden: int
    dropout: float
    epochs: int
    patience: int
    monitor: str  # val_loss | val_accuracy
    batch_size: int
    lr: float


@dataclass(frozen=True)
class TrainParams:
    """What ``oct_train`` passes besides seed and bf16 (those are the ``Job``'s): ``root``, the raw OCT2017
    folder the split's ``path`` column is relative to, and the ``train`` block."""

    root: str
    train: TrainBlock


def train(
    inputs: Mapping[str, str | os.PathLike], outputs: Mapping[str, str | os.PathLike], params: TrainParams, job: Job
) -> FitResult:
    """Fit VGG16 on the ``train`` split, selecting on ``params.train.monitor`` over ``val``.

    ``inputs["split"]``: the ingest's ``split.csv``; ``outputs["checkpoint"]``, ``outputs["curves"]`` (PNG).
    Validation each epoch through :func:`medflow.oct.predict.predict_log_proba` with ``job.bf16``: NLL loss
    and accuracy over the val images. MLflow run ``job.rule`` in experiment ``oct``.
    """
    cfg = params.train
    split_path = inputs["split"]
    device = select_device(job.threads)
    train_table, c2i = split_table(split_path, "train")
    val_table, _ = split_table(split_path, "val")
    size, resize = int(cfg.image_size), int(cfg.resize)
    classes = sorted(c2i, key=c2i.get)
    prep = preprocessing(size, resize, classes)  # recorded in the checkpoint: evaluation and prediction use it
    train_ds = OctImages(params.root, train_table, c2i, train_transform(size, resize, cfg.augment))
    val_ds = OctImages(params.root, val_table, c2i, eval_transform_for(prep))
    log.info("train %d images, val %d images, classes %s", len(train_ds), len(val_ds), c2i)

    seed_everything(job.seed)
    arch = {
        "hidden": int(cfg.hidden),
        "dropout": float(cfg.dropout),
        "head": cfg.head,
        "head_batchnorm": bool(cfg.head_batchnorm),
    }
    model = build_vgg16(len(c2i), weights=cfg.weights, **arch)
    counts = parameter_counts(model)
    log.info(
        "VGG16: %s parameters in total, %s trainable (%s frozen)",
        f"{counts['total']:,}",
        f"{counts['trainable']:,}",
        f"{counts['frozen']:,}",
    )

    # make_loaders drops a last train batch of one image (the head's BatchNorm cannot train on it).
    train_loader, val_loader = make_loaders(
        train_ds, val_ds, batch_size=cfg.batch_size, device=device, threads=job.threads
    )
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=float(cfg.lr))

    def train_step(model, batch):
        x, y = batch
        return F.nll_loss(model(x), y)

    def validate(model, loader):
        out = predict_log_proba(model, loader, device, bf16=job.bf16)
        logp, y = out["log_proba"], out["target"]
        return {
            "loss": float(F.nll_loss(torch.from_numpy(logp), torch.from_numpy(y))),
            "accuracy": float((logp.argmax(1) == y).mean()),
        }

    meta = {
        "pipeline": "oct",
        "preprocessing": prep,
        "arch": "vgg16",
        "class_to_idx": c2i,
        "classes": classes,
        "image_size": size,
        "resize": resize,
        "model": arch,
        "weights": cfg.weights,
        "parameters": counts,
    }
    # The train block (augment nested) and the seed: what a resume must match, what MLflow shows.
    settings = {**dataclasses.asdict(cfg), "seed": job.seed}
    logged = {**settings, "n_train": len(train_ds), "n_val": len(val_ds), "parameters": counts}
    return fit(
        model,
        optimizer,
        train_loader,
        val_loader,
        train_step=train_step,
        evaluate=validate,
        cfg=fit_config(cfg, monitor=cfg.monitor, mode=MONITOR_MODE[cfg.monitor], job=job),
        device=device,
        checkpoint_path=outputs["checkpoint"],
        curves_path=outputs["curves"],
        checkpoint_meta=meta,
        fingerprint=settings,
        tracking=tracking(job, EXPERIMENT, job.rule or RULE, logged),
    )
