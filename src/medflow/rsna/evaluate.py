"""Evaluating the RSNA models on the held-out (test) patients.

Writes ``metrics.json`` (headline: AUC of the two-input model, variant ``with_metadata``; a row per
variant, the image-only model as the comparison), one ROC plot with both curves, and a predictions
CSV (patientId, target, one probability per model). Each model gets an MLflow evaluation run tagged
``training_run_id`` (its training run).
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from medflow import io, tracking
from medflow import train as mtrain
from medflow.errors import InputError
from medflow.evaluation.classification import binary_report, plot_roc
from medflow.rsna.train import EXPERIMENT, H5Patients, load_model, predict, split_indices
from medflow.train.device import describe

log = logging.getLogger(__name__)

HEADLINE = "with_metadata"
LABELS = {"with_metadata": "image + metadata", "image_only": "image only"}


def evaluate(h5_path: str | os.PathLike, split_csv: str | os.PathLike, checkpoints: Mapping[str, str | os.PathLike],
             metrics_out: str | os.PathLike, roc_out: str | os.PathLike, predictions_out: str | os.PathLike, *,
             split: str = "test", threshold: float = 0.5, batch_size: int = 64, threads: int = 1, bf16: bool = True,
             rule: str | None = None, track: bool = True) -> dict:
    """Evaluate every checkpoint (variant -> path) on ``split``; returns the metrics dict."""
    import h5py

    device = mtrain.select_device(threads)
    idx = split_indices(h5_path, split_csv).get(split, np.zeros(0, dtype=np.int64))
    if len(idx) == 0:
        raise InputError(split_csv, f"no usable patient in the {split} split")
    split_df = pd.read_csv(split_csv, dtype={"patientId": str})
    n_split = int((split_df["split"] == split).sum())
    with h5py.File(h5_path, "r") as h5:
        ids = [s.decode() if isinstance(s, bytes) else str(s) for s in h5["patient_id"][:]]
    loader = torch.utils.data.DataLoader(H5Patients(h5_path, idx), batch_size=batch_size, shuffle=False,
                                         **mtrain.loader_kwargs(device, threads))
    preds = pd.DataFrame({"patientId": [ids[i] for i in idx]})
    models, curves = {}, {}
    for variant, path in checkpoints.items():
        model, ckpt = load_model(path, device)
        y, p = predict(model, loader, device, bf16)
        preds["target"] = y.astype(int)
        preds[f"prob_{variant}"] = p
        rep = binary_report(y, p, threshold)
        rep.update(best_epoch=int(ckpt["epoch"]), val_auc=float(ckpt["score"]), training_run_id=ckpt.get("mlflow_run_id", ""))
        curves[LABELS.get(variant, variant)] = (y, p)
        models[variant] = rep
        log.info("%s on %d %s patients: AUC %.3f, balanced accuracy %.3f", variant, rep["n"], split, rep["auc"], rep["balanced_accuracy"])
    plot_roc(curves, roc_out, title=f"RSNA pneumonia, {split} patients")

    if track:
        import mlflow

        for variant, rep in models.items():
            tags = {"pipeline": "rsna", "variant": variant, "training_run_id": rep["training_run_id"], "device": describe(device)}
            with tracking.run(EXPERIMENT, f"rsna_evaluate_{variant}", rule=rule, tags=tags,
                              params={"variant": variant, "split": split, "threshold": threshold, "n": rep["n"]}) as run:
                mlflow.log_metrics({f"{split}_{k}": float(v) for k, v in rep.items()
                                    if k not in ("best_epoch", "val_auc", "training_run_id") and np.isfinite(v)})
                mlflow.log_artifact(str(roc_out), artifact_path="plots")
                mlflow.log_dict(rep, "metrics.json")
                rep["mlflow_run_id"] = run.info.run_id

    with io.atomic_path(predictions_out) as tmp:
        preds.to_csv(tmp, index=False)
    head = HEADLINE if HEADLINE in models else next(iter(models))
    metrics = {
        "pipeline": "rsna",
        "split": split,
        "headline": {"metric": "auc", "model": head, "value": models[head]["auc"]},
        "n_patients": len(idx),
        "n_excluded": n_split - len(idx),  # patients of the split whose image could not be used
        **models,  # one row per variant: with_metadata (the headline), image_only (the comparison)
    }
    io.write_json(metrics_out, metrics)
    return metrics
