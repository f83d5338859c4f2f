"""Train the grade ResNet18 on slices through ``medflow.train.fit``, selecting on patient-level val AUC."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medflow import io
from medflow.errors import InputError
from medflow.evaluation.classification import binary_report
from medflow.grade.aggregate import aggregate
from medflow.grade.data import Augment, GradeSlices, read_index
from medflow.grade.model import CLASSES, build_resnet18
from medflow.grade.predict import predict_slices
from medflow.grade.slices import SliceParams, read_slice_params
from medflow.ingest.brats import MODALITIES
from medflow.train import FitResult, Job, fit, fit_config, make_loaders, seed_everything, select_device, tracking

log = logging.getLogger(__name__)

EXPERIMENT = "brats_grade"
PIPELINE = "brats_grade"  # checkpoint meta["pipeline"]: what medflow.lineage.check_checkpoint asks of a grade model
RULE = "brats_grade_train"  # the MLflow run name when no rule is given (library callers)
MONITOR_MODE = {"val_auc": "max", "val_slice_auc": "max", "val_loss": "min"}
TIE_TO_LATER = -1e-9


@dataclass(frozen=True)
class TrainBlock:
    """``brats.grade.train`` in config (see config/config.yaml for each key)."""

    weights: str
    conv1_init: str
    epochs: int
    patience: int
    monitor: str
    batch_size: int
    lr: float
    weight_decay: float
    class_weights: str
    augment: Augment


@dataclass(frozen=True)
class TrainParams:
    """What ``brats_grade_train`` passes: the ``train`` block and, beside it, ``brats.grade.aggregate`` (the
    rule that turns val slice probabilities into the monitored patient AUC; shared with the evaluation) and
    ``stack``: the parameters that shaped the stacked cases the slices came from (``{"n4": brats.n4 without
    its run settings, "trim": brats.trim}``), recorded in the checkpoint for prediction's check."""

    train: TrainBlock
    aggregate: str
    stack: dict[str, Any] = field(default_factory=dict)


def preprocessing_meta(slices: SliceParams, stack: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``meta["preprocessing"]``: every parameter that shaped the model's input. ``slices``
    (selection and size; prediction applies them to new cases), ``modalities`` (channel order) and ``stack``
    (N4 and trim of the stacked cases; prediction compares it with the stacks it is given)."""
    return {"slices": slices.as_dict(), "modalities": list(MODALITIES), "stack": io.to_plain(dict(stack))}


def class_weights(targets: np.ndarray, mode: str) -> torch.Tensor | None:
    """``balanced``: n / (2 n_c) per class from the training slices (as scikit-learn); ``none``: None."""
    if mode == "none":
        return None
    counts = np.bincount(targets, minlength=2).astype(float)
    if (counts == 0).any():
        return None
    return torch.tensor(counts.sum() / (2 * counts), dtype=torch.float32)


def train(
    inputs: Mapping[str, str | os.PathLike], outputs: Mapping[str, str | os.PathLike], params: TrainParams, job: Job
) -> FitResult:
    """Fit ResNet18 (4-channel conv1, 2 outputs) with cross-entropy on the ``train`` slices.

    ``inputs["slices"]``: the slice HDF5 (:mod:`medflow.grade.slices`); ``outputs["checkpoint"]``,
    ``outputs["curves"]`` (PNG). Validation each epoch (:func:`medflow.grade.predict.predict_slices`,
    ``job.bf16``): slice loss, slice AUC and the patient-level AUC of ``params.aggregate`` (the default
    monitor). MLflow run ``job.rule`` in experiment ``brats_grade``.
    """
    cfg = params.train
    slices_path = inputs["slices"]
    device = select_device(job.threads)
    index = read_index(slices_path)
    train_ds = GradeSlices(slices_path, "train", cfg.augment, index=index)
    val_ds = GradeSlices(slices_path, "val", None, index=index)
    for name, ds in (("train", train_ds), ("val", val_ds)):
        if len(ds) == 0:
            raise InputError(slices_path, f"no {name} slices")
        log.info("%s: %d slices of %d cases (HGG slices %d)", name, len(ds), len(set(ds.cases)), int(ds.targets.sum()))

    seed_everything(job.seed)
    model = build_resnet18(len(MODALITIES), len(CLASSES), weights=cfg.weights, conv1_init=cfg.conv1_init)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("ResNet18 (4-channel conv1): %s parameters", f"{n_params:,}")
    weight = class_weights(train_ds.targets, cfg.class_weights)
    if weight is not None:
        log.info("class weights LGG %.3f HGG %.3f", *weight.tolist())
        weight = weight.to(device)

    train_loader, val_loader = make_loaders(
        train_ds, val_ds, batch_size=cfg.batch_size, device=device, threads=job.threads
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg.lr), weight_decay=float(cfg.weight_decay))

    def train_step(model, batch):
        x, y, _ = batch
        return F.cross_entropy(model(x), y, weight=weight)

    def validate(model, loader):
        prob, y, idx = predict_slices(model, loader, device, bf16=job.bf16)
        p = np.clip(prob, 1e-7, 1 - 1e-7)
        patients = aggregate(val_ds.cases[idx], prob, params.aggregate, labels=y)
        return {
            "loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
            "slice_auc": binary_report(y, prob)["auc"],
            "auc": binary_report(patients["label"], patients["prob"])["auc"],
        }

    # A patient-level AUC over few validation patients is coarse and often saturates at 1.0 after an
    # epoch or two; a slightly negative min_delta hands exact ties to the later, better-trained epoch.
    fit_cfg = fit_config(cfg, monitor=cfg.monitor, mode=MONITOR_MODE[cfg.monitor], job=job, min_delta=TIE_TO_LATER)
    meta = {
        "pipeline": PIPELINE,
        "preprocessing": preprocessing_meta(read_slice_params(slices_path), params.stack),
        "arch": "resnet18",
        "in_channels": len(MODALITIES),
        "modalities": list(MODALITIES),
        "classes": CLASSES,
        "weights": cfg.weights,
        "conv1_init": cfg.conv1_init,
        "aggregate": params.aggregate,
    }
    # The train block flat (augment nested) beside aggregate and seed: what a resume must match, what MLflow shows.
    settings = {**dataclasses.asdict(cfg), "aggregate": params.aggregate, "seed": job.seed}
    run = tracking(
        job,
        EXPERIMENT,
        job.rule or RULE,
        {
            **settings,
            "n_train_slices": len(train_ds),
            "n_val_slices": len(val_ds),
            "n_train_cases": len(set(train_ds.cases)),
            "n_val_cases": len(set(val_ds.cases)),
        },
    )
    return fit(
        model,
        optimizer,
        train_loader,
        val_loader,
        train_step=train_step,
        evaluate=validate,
        cfg=fit_cfg,
        device=device,
        checkpoint_path=outputs["checkpoint"],
        checkpoint_meta=meta,
        fingerprint=settings,
        tracking=run,
        curves_path=outputs["curves"],
    )
