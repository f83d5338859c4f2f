"""Evaluating the RSNA models on the held-out (test) patients.

One run covers both variants: ``metrics.json`` (headline ``auc_with_metadata`` and ``auc_image_only``,
each with a bootstrap interval over the test patients; a row per variant), one ROC plot with both
curves, a predictions CSV (patientId, target, one probability per model) and Grad-CAM PNGs of the
two-input model for the ``cams`` test images it scores highest (``cams/<patientId>.png``). One MLflow
evaluation run (the rule's name) records both, tagged ``training_run_id`` = the two training runs, comma-joined.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medflow import io, tracking
from medflow import train as mtrain
from medflow.errors import InputError
from medflow.evaluation.classification import binary_report, plot_roc
from medflow.evaluation.headline import Bootstrap, auc_metric
from medflow.lineage import check_checkpoint
from medflow.rsna.data import eval_loader, read_info, read_rows, split_indices
from medflow.rsna.model import load_model
from medflow.rsna.predict import predict, top_items, write_cams
from medflow.train.device import describe

log = logging.getLogger(__name__)

EXPERIMENT = "rsna"
VARIANTS = ("with_metadata", "image_only")  # the metrics' order: the two-input model, then its comparison
LABELS = {"with_metadata": "image + metadata", "image_only": "image only"}


@dataclass(frozen=True)
class EvaluateConfig:
    """Config ``rsna.evaluate``."""

    threshold: float = 0.5  # P(pneumonia) at or above it counts as positive (accuracy, sensitivity, specificity)
    batch_size: int = 64


@dataclass(frozen=True)
class EvaluateParams:
    """The rule's params blocks ``evaluate`` and ``bootstrap``, ``cams`` (config ``evaluation.cams``: test
    images drawn as Grad-CAM PNGs); ``split`` is the split evaluated."""

    evaluate: EvaluateConfig = EvaluateConfig()
    bootstrap: Bootstrap = Bootstrap()
    cams: int = 0
    split: str = "test"


def _checkpoint_paths(value) -> list:
    return [value] if isinstance(value, (str, os.PathLike)) else list(value)


def evaluate(inputs: Mapping[str, Any], outputs: Mapping[str, Any], params: EvaluateParams, job: mtrain.Job) -> dict:
    """Evaluate every checkpoint on ``params.split``; returns the metrics dict written to ``metrics``.

    ``inputs``: ``h5`` (preprocessing HDF5), ``split`` (ingest split CSV), ``checkpoints`` (one path or a
    list, one per variant; the variant is read from each checkpoint). ``outputs``: ``metrics``, ``roc``,
    ``predictions`` and optionally ``cams`` (a folder). A checkpoint of another pipeline, or trained on other
    metadata features, another image size or other preprocessing than the HDF5 holds is an ``InputError``:
    its inputs would be misread.
    """
    h5_path, split_csv = inputs["h5"], inputs["split"]
    split, cfg, boot = params.split, params.evaluate, params.bootstrap
    device = mtrain.select_device(job.threads)
    idx = split_indices(h5_path, split_csv).get(split, np.zeros(0, dtype=np.int64))
    if len(idx) == 0:
        raise InputError(split_csv, f"no usable patient in the {split} split")
    split_df = pd.read_csv(split_csv, dtype={"patientId": str})
    n_split = int((split_df["split"] == split).sum())
    info = read_info(h5_path)
    patients = [info.patient_ids[i] for i in idx]
    loader = eval_loader(h5_path, idx, batch_size=cfg.batch_size, device=device, threads=job.threads)

    ckpts: dict[str, dict] = {}
    for path in _checkpoint_paths(inputs["checkpoints"]):
        ckpt = mtrain.load_checkpoint(path, map_location=device)
        check_checkpoint(ckpt, path, pipeline=EXPERIMENT)
        meta = ckpt.get("meta", {})
        variant = meta.get("variant")
        if variant not in VARIANTS:
            raise InputError(path, f"not an RSNA checkpoint of a known variant ({', '.join(VARIANTS)}): {variant!r}")
        if variant in ckpts:
            raise InputError(path, f"a second checkpoint of variant {variant}")
        if meta.get("meta_features") != info.meta_features or meta.get("size") != info.size:
            raise InputError(
                path,
                f"trained on features {meta.get('meta_features')} at size {meta.get('size')}, but "
                f"{h5_path} holds {info.meta_features} at size {info.size}",
            )
        check_checkpoint(ckpt, path, pipeline=EXPERIMENT, preprocessing=info.preprocessing)
        ckpts[variant] = ckpt

    preds = pd.DataFrame({"patientId": patients})
    models, curves, headline = {}, {}, {}
    for variant in [v for v in VARIANTS if v in ckpts]:
        ckpt = ckpts[variant]
        out = predict(load_model(ckpt, device), loader, device, bf16=job.bf16)
        y, p = out["target"], out["prob"]
        preds["target"] = y.astype(int)
        preds[f"prob_{variant}"] = p
        rep = binary_report(y, p, cfg.threshold)
        rep.update(
            best_epoch=int(ckpt["epoch"]), val_auc=float(ckpt["score"]), training_run_id=ckpt.get("mlflow_run_id") or ""
        )
        # One image per patient; grouping by patient keeps n the number of patients regardless.
        headline[f"auc_{variant}"] = auc_metric(
            y.astype(int), p, groups=patients, n_boot=boot.bootstrap_samples, seed=job.seed, level=boot.confidence
        )
        curves[LABELS[variant]] = (y, p)
        models[variant] = rep
        log.info(
            "%s on %d %s patients: AUC %.3f, balanced accuracy %.3f",
            variant,
            rep["n"],
            split,
            rep["auc"],
            rep["balanced_accuracy"],
        )
    plot_roc(curves, outputs["roc"], title=f"RSNA pneumonia, {split} patients")
    if outputs.get("cams"):
        cam_variant = next(iter(models))  # the two-input model when it was evaluated
        top = top_items(preds[f"prob_{cam_variant}"].to_numpy(), params.cams)
        write_cams(
            load_model(ckpts[cam_variant], device),
            *read_rows(h5_path, idx[top]),
            [patients[k] for k in top],
            [f"target {preds['target'].iloc[k]}, P(opacity) {preds[f'prob_{cam_variant}'].iloc[k]:.2f}" for k in top],
            outputs["cams"],
            device,
        )
    with io.atomic_path(outputs["predictions"]) as tmp:
        preds.to_csv(tmp, index=False)

    metrics: dict[str, Any] = {
        "pipeline": "rsna",
        "split": split,
        "headline": headline,
        "n_patients": len(idx),
        "n_excluded": n_split - len(idx),  # patients of the split whose image could not be used
        **models,  # one row per variant: with_metadata, then image_only (the comparison)
    }
    if job.track:
        keys = ("accuracy", "sensitivity", "specificity", "balanced_accuracy", "n_positive")
        metrics["mlflow_run_id"] = tracking.log_evaluation(
            EXPERIMENT,
            job.rule or "rsna_evaluate",
            headline=headline,
            training_run_id=[rep["training_run_id"] for rep in models.values()],
            artifacts=[outputs["roc"], outputs["predictions"]],
            params={
                "split": split,
                "variants": ",".join(models),
                "threshold": cfg.threshold,
                "n": len(idx),
                "bootstrap_samples": boot.bootstrap_samples,
                "confidence": boot.confidence,
                "seed": job.seed,
            },
            tags={"pipeline": "rsna", "device": describe(device)},
            rule=job.rule,
            extra_metrics={f"{v}_{k}": float(rep[k]) for v, rep in models.items() for k in keys},
        )
    io.write_json(outputs["metrics"], metrics)
    return metrics
