"""Train one MRNet (task x plane x fold) with the shared loop, then predict the exams it did not see.

- ``fold`` ``all`` trains on every train exam and predicts the valid exams (and the train exams in
  sample, which only the tutorial's stacking uses); a digit trains on the other folds and predicts
  its held-out fold: the out-of-fold predictions the stacker is fitted on.
- Early stopping, the learning-rate plateau and the best checkpoint follow the AUC (ties broken by the
  loss) over an inner monitor set: ``val_fraction`` of the model's own training exams (stratified by
  the label), never the exams it predicts.
- Loss: binary cross-entropy with positives weighted by negatives/positives of the training exams,
  the tutorial's correction for class imbalance; Adam; learning rate reduced on an AUC plateau.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from medflow import io
from medflow.ingest import mrnet as ingest
from medflow.mrnet.augment import AugmentConfig, ExamAugmentation
from medflow.mrnet.data import exam_loader, exam_table
from medflow.mrnet.metrics import rank_auc
from medflow.mrnet.model import ModelConfig, build_model, load_model
from medflow.mrnet.predict import FLOAT_FORMAT, predict_exams, score_exams
from medflow.tracking import current_uri
from medflow.train import FitResult, Job, fit, fit_config, seed_everything, select_device, tracking
from medflow.train.loop import plot_history

log = logging.getLogger(__name__)

RULE = "mrnet_train"  # run name and rule tag when called outside Snakemake
PIPELINE = "mrnet"  # checkpoint meta: the predict stage refuses another pipeline's checkpoint
# The monitor is AUC with ties broken by the lower loss: AUC over a few dozen exams often ties (or
# sits at 1.0) while the model still improves. 1e-6 x loss is far below one step of AUC,
# 1 / (positives x negatives), for any monitor set under 100,000 exam pairs.
TIE_BREAK = 1e-6


@dataclass(frozen=True)
class SchedulerConfig:
    """ReduceLROnPlateau on the monitor AUC: multiply the learning rate by ``factor`` after ``patience``
    epochs without a better AUC."""

    factor: float
    patience: int


@dataclass(frozen=True)
class TrainConfig:
    """Config ``mrnet.train``: the model, ``batch_slices`` (slices per packed batch of whole exams), Adam's
    ``lr`` and ``weight_decay``, early-stopping ``patience`` (epochs), the plateau ``scheduler``,
    ``val_fraction`` (share of the training exams that monitors AUC) and ``augment`` (None: none)."""

    model: ModelConfig
    epochs: int
    batch_slices: int
    lr: float
    weight_decay: float
    patience: int
    scheduler: SchedulerConfig
    val_fraction: float
    augment: AugmentConfig | None = None
    loader_workers: int = 4  # DataLoader workers on CUDA (the job reads them from the rule's params)


@dataclass(frozen=True)
class TrainParams:
    """One training job: the rule's wildcards ``task``, ``plane`` and ``fold`` (``all`` or a fold number),
    ``root`` (the MRNet-v1.0 folder) and config ``mrnet.train``."""

    task: str
    plane: str
    fold: str
    root: str
    train: TrainConfig


def preprocessing(image_size: int) -> dict[str, int]:
    """What shapes a model's input, recorded in its checkpoint (``meta.preprocessing``) and applied to new exams
    from there: ``in_plane``, the series' in-plane size the ingest checks accept, and ``image_size``, the size
    ``medflow.mrnet.data`` resizes slices to. (Grey levels stay uint8 0-255; the model normalises them.)"""
    return {"in_plane": ingest.IN_PLANE, "image_size": int(image_size)}


def monitor_split(exams: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training exams -> (fit, monitor), by exam, stratified by the label: each class gives the monitor
    set ``fraction`` of its exams, at least one and never its last, so the monitor AUC is defined
    and the fit set keeps both classes even when positives are few."""
    if not 0 < fraction < 1:
        raise ValueError("mrnet.train.val_fraction must be in (0, 1): early stopping needs a monitor set")
    monitor: list[str] = []
    for label in sorted(exams["label"].unique()):
        ids = sorted(exams.loc[exams["label"] == label, "id"])
        np.random.default_rng([seed, int(label)]).shuffle(ids)
        n = min(max(1, round(fraction * len(ids))), len(ids) - 1)
        monitor += ids[:n]
    is_mon = exams["id"].isin(monitor)
    return exams[~is_mon].reset_index(drop=True), exams[is_mon].reset_index(drop=True)


def validate(model, loader, device: torch.device, *, pos_weight: torch.Tensor, bf16: bool) -> dict[str, float]:
    """Monitor metrics over the loader's exams: ``auc``, ``loss`` (weighted BCE per exam) and ``score``
    (the AUC, ties broken by the lower loss), from ``medflow.mrnet.predict``."""

    def loss_sum(logits, label):
        return F.binary_cross_entropy_with_logits(logits, label, pos_weight=pos_weight, reduction="sum")

    out = score_exams(model, loader, device, bf16=bf16, loss=loss_sum)
    auc = rank_auc(out["label"], out["prob"])
    loss = 0.0
    for batch_loss in out["loss"]:  # in batch order, in double precision
        loss += float(batch_loss)
    loss /= max(len(out["label"]), 1)
    return {"auc": auc, "loss": loss, "score": auc - TIE_BREAK * loss}


def train(
    inputs: Mapping[str, str | os.PathLike], outputs: Mapping[str, str | os.PathLike], params: TrainParams, job: Job
) -> FitResult:
    """Train and predict. ``inputs``: ``manifest``, ``folds`` (``mrnet_ingest``'s CSVs). ``outputs``:
    ``checkpoint``, ``predictions`` (CSV: id, role (heldout/valid/in_sample), label, prob), ``summary``
    (JSON: MLflow run id, best epoch and monitor AUC, exam counts, speed), ``curves`` (PNG: loss and
    monitor AUC per epoch)."""
    task, plane, fold, cfg = params.task, params.plane, str(params.fold), params.train
    manifest = ingest.read_manifest(inputs["manifest"])
    folds = ingest.read_folds(inputs["folds"])
    train_ids, predict_ids = ingest.fold_ids(folds, fold)
    fit_df, mon_df = monitor_split(exam_table(manifest, train_ids, task, plane), float(cfg.val_fraction), job.seed)
    n_pos = int(fit_df["label"].sum())
    n_neg = len(fit_df) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"{task}/{plane}/fold {fold}: the training exams hold only one class ({n_pos} positive of {len(fit_df)})"
        )
    pos_weight = n_neg / n_pos
    log.info(
        "%s %s fold %s: %d training exams (%d positive), %d monitor exams, pos_weight %.2f",
        task,
        plane,
        fold,
        len(fit_df),
        n_pos,
        len(mon_df),
        pos_weight,
    )

    device = select_device(job.threads)
    size, batch_slices = int(cfg.model.image_size), int(cfg.batch_slices)
    loaders = {"size": size, "batch_slices": batch_slices, "device": device, "threads": job.threads}
    train_loader = exam_loader(
        params.root, plane, fit_df, shuffle=True, augment=ExamAugmentation.from_params(cfg.augment), **loaders
    )
    mon_loader = exam_loader(params.root, plane, mon_df, shuffle=False, **loaders)

    seed_everything(job.seed)  # the same initial weights on every run
    model = build_model(cfg.model)
    # fused: one kernel for all parameters (CPU and CUDA); the per-tensor loop costs more than a small batch's backward
    optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg.lr), weight_decay=float(cfg.weight_decay), fused=True)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=float(cfg.scheduler.factor), patience=int(cfg.scheduler.patience)
    )
    pw = torch.tensor(pos_weight, device=device)

    def train_step(m, batch):
        return F.binary_cross_entropy_with_logits(
            m(batch["slices"], batch["counts"]).float(), batch["label"], pos_weight=pw
        )

    def evaluate(m, loader):
        return validate(m, loader, device, pos_weight=pw, bf16=job.bf16)

    run_params = {
        "task": task,
        "plane": plane,
        "fold": fold,
        "seed": job.seed,
        "model": dataclasses.asdict(cfg.model),
        "train": dataclasses.asdict(cfg),
        "n_train": len(fit_df),
        "n_train_positive": n_pos,
        "n_monitor": len(mon_df),
        "pos_weight": round(pos_weight, 4),
    }
    track = tracking(
        job,
        "mrnet",
        f"{job.rule or RULE}/{task}/{plane}/fold_{fold}",
        run_params,
        tags={"task": task, "plane": plane, "fold": fold},
    )
    start = time.perf_counter()
    result = fit(
        model,
        optimizer,
        train_loader,
        mon_loader,
        train_step=train_step,
        evaluate=evaluate,
        cfg=fit_config(cfg, monitor="val_score", mode="max", job=job),
        device=device,
        checkpoint_path=outputs["checkpoint"],
        scheduler=scheduler,
        tracking=track,
        checkpoint_meta={
            "pipeline": PIPELINE,
            "task": task,
            "plane": plane,
            "fold": fold,
            "weights": cfg.model.weights,
            "image_size": size,
            "preprocessing": preprocessing(size),
        },
        fingerprint=run_params,
    )
    seconds = time.perf_counter() - start
    epochs_run = len(result.history)
    plot_history(result.history, outputs["curves"], "val_auc")  # the AUC itself, not the tie-broken score
    if result.run_id:
        import mlflow

        mlflow.MlflowClient(tracking_uri=current_uri()).log_artifact(result.run_id, str(outputs["curves"]), "plots")

    best_model = load_model(outputs["checkpoint"])
    rows = []
    for role, ids in predict_ids.items():
        exams = exam_table(manifest, ids, task, plane)
        prob = predict_exams(
            best_model,
            params.root,
            plane,
            exams,
            size=size,
            batch_slices=batch_slices,
            device=device,
            threads=job.threads,
            bf16=job.bf16,
        )
        rows.append(exams[["id", "label"]].assign(role=role, prob=prob))
    pred = pd.concat(rows, ignore_index=True)[["id", "role", "label", "prob"]]
    with io.atomic_path(outputs["predictions"]) as tmp:
        pred.to_csv(tmp, index=False, float_format=FLOAT_FORMAT)

    best = result.history[result.best_epoch - 1] if result.best_epoch else {}
    summary = {
        "task": task,
        "plane": plane,
        "fold": fold,
        "mlflow_run_id": result.run_id or "",
        "best_epoch": result.best_epoch,
        "best_val_auc": best.get("val_auc", math.nan),
        "best_val_loss": best.get("val_loss", math.nan),
        "epochs_run": epochs_run,
        "stopped_early": result.stopped_early,
        "n_train": len(fit_df),
        "n_monitor": len(mon_df),
        "predicted": {r: len(i) for r, i in predict_ids.items()},
        "fit_seconds": round(seconds, 2),
        "train_slices_per_s": round(epochs_run * int(fit_df["slices"].sum()) / seconds, 1) if seconds > 0 else math.nan,
    }
    io.write_json(outputs["summary"], summary)
    log.info(
        "best val_auc %.4f at epoch %d; %d predictions written", summary["best_val_auc"], result.best_epoch, len(pred)
    )
    return result
