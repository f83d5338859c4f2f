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

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from medflow import io
from medflow.ingest import mrnet as ingest
from medflow.mrnet.augment import ExamAugmentation
from medflow.mrnet.data import ExamDataset, packed_loader
from medflow.mrnet.model import MRNet
from medflow.tracking import current_uri
from medflow.train import FitConfig, Tracking, autocast, fit, load_checkpoint, seed_everything, select_device, to_device
from medflow.train.loop import plot_history

log = logging.getLogger(__name__)

# The monitor is AUC with ties broken by the lower loss: AUC over a few dozen exams often ties (or
# sits at 1.0) while the model still improves. 1e-6 x loss is far below one step of AUC,
# 1 / (positives x negatives), for any monitor set under 100,000 exam pairs.
TIE_BREAK = 1e-6


@dataclass
class Outputs:
    checkpoint: str | os.PathLike
    predictions: str | os.PathLike  # CSV: id, role (heldout/valid/in_sample), label, prob
    summary: str | os.PathLike  # JSON: MLflow run id, best epoch and monitor AUC, exam counts, speed
    curves: str | os.PathLike  # PNG: loss and monitor AUC per epoch


def _exams(manifest: pd.DataFrame, ids: list[str], task: str, plane: str) -> pd.DataFrame:
    df = manifest.set_index("id").loc[ids]
    return pd.DataFrame({"id": ids, "split": df["split"].values, "label": df[task].astype(int).values,
                         "slices": df[f"slices_{plane}"].astype(int).values})


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


def rank_auc(y, p) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count one half): the value scikit-learn's
    roc_auc_score gives, without importing scikit-learn into every training job (about 1 s each).
    NaN when only one class is present."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(np.asarray(p, dtype=float), return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    return float((avg_rank[inverse][y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _dataset(root, plane, exams: pd.DataFrame, size: int, augment=None) -> ExamDataset:
    return ExamDataset(root, plane, exams["id"].tolist(), exams["split"].tolist(), exams["label"].tolist(), size, augment)


def predict(model: MRNet, loader, device: torch.device, bf16: bool = True) -> np.ndarray:
    """Probabilities (B,) for the loader's exams, in order."""
    model.eval()
    out = []
    with torch.no_grad(), autocast(device, bf16):
        for batch in loader:
            batch = to_device(batch, device)
            out.append(torch.sigmoid(model(batch["slices"], batch["counts"]).float()).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def train_plane(manifest_path, folds_path, raw_root, *, task: str, plane: str, fold: str, model_cfg: Mapping[str, Any],
                train_cfg: Mapping[str, Any], seed: int, threads: int, bf16: bool, outputs: Outputs,
                tracking: bool = True) -> dict[str, Any]:
    """Train and predict; writes ``outputs`` and returns the summary. ``model_cfg``: weights, image_size;
    ``train_cfg``: epochs, batch_slices, lr, weight_decay, patience, scheduler {factor, patience},
    val_fraction, augment {rotation_deg, shift_px, hflip_p} (empty: none)."""
    manifest = ingest.read_manifest(manifest_path)
    folds = ingest.read_folds(folds_path)
    train_ids, predict_ids = ingest.fold_ids(folds, str(fold))
    fit_df, mon_df = monitor_split(_exams(manifest, train_ids, task, plane), float(train_cfg["val_fraction"]), seed)
    n_pos = int(fit_df["label"].sum())
    n_neg = len(fit_df) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"{task}/{plane}/fold {fold}: the training exams hold only one class ({n_pos} positive of {len(fit_df)})")
    pos_weight = n_neg / n_pos
    log.info("%s %s fold %s: %d training exams (%d positive), %d monitor exams, pos_weight %.2f",
             task, plane, fold, len(fit_df), n_pos, len(mon_df), pos_weight)

    device = select_device(threads)
    size = int(model_cfg["image_size"])
    batch_slices = int(train_cfg["batch_slices"])
    train_loader = packed_loader(_dataset(raw_root, plane, fit_df, size, ExamAugmentation.from_config(train_cfg.get("augment"))),
                                 fit_df["slices"], batch_slices, shuffle=True, device=device, threads=threads)
    mon_loader = packed_loader(_dataset(raw_root, plane, mon_df, size), mon_df["slices"], batch_slices, shuffle=False,
                               device=device, threads=threads)

    seed_everything(seed)  # the same initial weights on every run
    model = MRNet(model_cfg["weights"])
    # fused: one kernel for all parameters (CPU and CUDA); the per-tensor loop costs more than a small batch's backward
    optimizer = torch.optim.Adam(model.parameters(), lr=float(train_cfg["lr"]), weight_decay=float(train_cfg["weight_decay"]), fused=True)
    sched_cfg = train_cfg["scheduler"]
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=float(sched_cfg["factor"]),
                                                           patience=int(sched_cfg["patience"]))
    pw = torch.tensor(pos_weight, device=device)

    def train_step(m, batch):
        return F.binary_cross_entropy_with_logits(m(batch["slices"], batch["counts"]).float(), batch["label"], pos_weight=pw)

    def evaluate(m, loader):
        probs, labels, loss = [], [], 0.0
        for batch in loader:
            batch = to_device(batch, device)
            logits = m(batch["slices"], batch["counts"]).float()
            loss += float(F.binary_cross_entropy_with_logits(logits, batch["label"], pos_weight=pw, reduction="sum"))
            probs.append(torch.sigmoid(logits).cpu())
            labels.append(batch["label"].cpu())
        y, p = torch.cat(labels).numpy(), torch.cat(probs).numpy()
        auc = rank_auc(y, p)
        loss /= max(len(y), 1)
        return {"auc": auc, "loss": loss, "score": auc - TIE_BREAK * loss}

    params = {"task": task, "plane": plane, "fold": str(fold), "seed": seed, "model": dict(model_cfg), "train": dict(train_cfg),
              "n_train": len(fit_df), "n_train_positive": n_pos, "n_monitor": len(mon_df), "pos_weight": round(pos_weight, 4)}
    track = Tracking("mrnet", f"{task}-{plane}-fold_{fold}", params=params, rule="mrnet_train",
                     tags={"task": task, "plane": plane, "fold": str(fold)}) if tracking else None
    cfg = FitConfig(epochs=int(train_cfg["epochs"]), monitor="val_score", mode="max", patience=int(train_cfg["patience"]),
                    seed=seed, bf16=bf16)
    start = time.perf_counter()
    result = fit(model, optimizer, train_loader, mon_loader, train_step=train_step, evaluate=evaluate, cfg=cfg, device=device,
                 checkpoint_path=outputs.checkpoint, scheduler=scheduler, tracking=track,
                 checkpoint_meta={"task": task, "plane": plane, "fold": str(fold), "weights": model_cfg["weights"], "image_size": size},
                 fingerprint=params)
    seconds = time.perf_counter() - start
    epochs_run = len(result.history)
    plot_history(result.history, outputs.curves, "val_auc")  # the AUC itself, not the tie-broken score
    if result.run_id:
        import mlflow

        mlflow.MlflowClient(tracking_uri=current_uri()).log_artifact(result.run_id, str(outputs.curves), "plots")

    model.load_state_dict(load_checkpoint(outputs.checkpoint)["state_dict"])
    rows = []
    for role, ids in predict_ids.items():
        exams = _exams(manifest, ids, task, plane)
        loader = packed_loader(_dataset(raw_root, plane, exams, size), exams["slices"], batch_slices, shuffle=False,
                               device=device, threads=threads)
        rows.append(exams[["id", "label"]].assign(role=role, prob=predict(model, loader, device, bf16)))
    pred = pd.concat(rows, ignore_index=True)[["id", "role", "label", "prob"]]
    with io.atomic_path(outputs.predictions) as tmp:
        pred.to_csv(tmp, index=False, float_format="%.6f")

    best = result.history[result.best_epoch - 1] if result.best_epoch else {}
    summary = {"task": task, "plane": plane, "fold": str(fold), "mlflow_run_id": result.run_id or "",
               "best_epoch": result.best_epoch, "best_val_auc": best.get("val_auc", math.nan), "best_val_loss": best.get("val_loss", math.nan),
               "epochs_run": epochs_run, "stopped_early": result.stopped_early, "n_train": len(fit_df), "n_monitor": len(mon_df),
               "predicted": {r: len(i) for r, i in predict_ids.items()}, "fit_seconds": round(seconds, 2),
               "train_slices_per_s": round(epochs_run * int(fit_df["slices"].sum()) / seconds, 1) if seconds > 0 else math.nan}
    io.write_json(outputs.summary, summary)
    log.info("best val_auc %.4f at epoch %d; %d predictions written", summary["best_val_auc"], result.best_epoch, len(pred))
    return summary
