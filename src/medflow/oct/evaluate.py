"""Evaluate the OCT classifier on the test split: accuracy, per-class precision/recall, confusion
matrix, a predictions table with the top-k classes and their probabilities per image, and Grad-CAM PNGs of
a few test images (``cams``, in turn per true class) for the predicted class.

The headline (``accuracy``, ``macro_recall``) carries a seeded percentile bootstrap over the test
*patients*: a patient's images are resampled together (cluster bootstrap), since the images of one
patient are not independent, and ``n`` is the number of test patients.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm
from torch.utils.data import DataLoader

from medflow import io
from medflow.errors import InputError
from medflow.evaluation.classification import plot_confusion
from medflow.evaluation.headline import Bootstrap, bootstrap_metric
from medflow.oct.data import OctImages, checkpoint_preprocessing, eval_transform_for, split_table
from medflow.oct.model import load_model
from medflow.oct.predict import pick_for_cams, predict_log_proba, save_cams, top_k_table
from medflow.train import Job, load_checkpoint, loader_kwargs, select_device
from medflow.train.device import describe

log = logging.getLogger(__name__)

EXPERIMENT = "oct"
RULE = "oct_evaluate"  # the MLflow run name when no rule is given (library callers)


@dataclass(frozen=True)
class EvaluateBlock:
    """``oct.evaluate`` in config."""

    top_k: int  # classes (with probabilities) per image in predictions.csv
    batch_size: int


@dataclass(frozen=True)
class EvaluateParams:
    """What ``oct_evaluate`` passes besides seed and bf16 (the ``Job``'s): ``root``, the raw OCT2017 folder
    the split's ``path`` column is relative to, the ``evaluate`` block and the ``bootstrap`` settings."""

    root: str
    evaluate: EvaluateBlock
    bootstrap: Bootstrap = Bootstrap()
    cams: int = 0  # test images drawn with their class-activation map (config evaluation.cams)


def multiclass_report(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict:
    """Accuracy, macro recall (mean of the per-class recalls), macro precision/F1 and per-class
    precision/recall/F1/support (plain floats)."""
    # A class never predicted has precision 0 (scikit-learn's zero_division=0), not an error.
    labels = list(range(len(classes)))
    prec, rec, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "macro_recall": float(np.mean(rec)),
        "macro_precision": float(np.mean(prec)),
        "macro_f1": float(np.mean(f1)),
        "n": int(len(y_true)),
        "per_class": {
            c: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, c in enumerate(classes)
        },
    }


def macro_recall_of(present: Sequence[int], n_classes: int) -> Callable[[np.ndarray, np.ndarray], float]:
    """``fn(y_true, y_pred)``: ``multiclass_report``'s macro recall (all ``n_classes``, a class without
    images counts 0), NaN for a resample that lacks one of the ``present`` classes (those of the full test
    set): its recall is undefined there, and counting it 0 would drag the interval down."""
    labels = list(range(n_classes))
    need = np.unique(np.asarray(present))

    def fn(y_true, y_pred) -> float:
        if not np.isin(need, y_true).all():
            return float("nan")
        # multiclass_report's own call, so the full-data value is its macro_recall bit for bit
        _, rec, _, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
        return float(np.mean(rec))

    return fn


def headline(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    patients: Sequence[str],
    n_classes: int,
    *,
    n_boot: int,
    seed: int,
    level: float,
) -> dict[str, dict[str, Any]]:
    """``{"accuracy", "macro_recall"}``, each ``{value, ci_low, ci_high, n}``: values as in
    ``multiclass_report``; intervals from one set of patient resamples (same seed, same draws), ``n`` the
    number of distinct ``patients`` (one id per image, aligned with ``y_true`` (N,) and ``y_pred`` (N,))."""
    groups = np.asarray(patients)
    kw = {"groups": groups, "n_boot": int(n_boot), "seed": int(seed), "level": float(level)}
    return {
        "accuracy": bootstrap_metric(lambda t, p: float(skm.accuracy_score(t, p)), y_true, y_pred, **kw),
        "macro_recall": bootstrap_metric(macro_recall_of(y_true, n_classes), y_true, y_pred, **kw),
    }


def evaluate(
    inputs: Mapping[str, str | os.PathLike], outputs: Mapping[str, str | os.PathLike], params: EvaluateParams, job: Job
) -> dict:
    """Predict every ``test`` image with the checkpoint's own preprocessing; write metrics JSON (with the
    ``headline`` block), predictions CSV and confusion-matrix PNG; log them to the MLflow run ``job.rule``
    (experiment ``oct``) tagged ``training_run_id``. Returns the metrics written.

    ``inputs``: ``checkpoint``, ``split`` (the ingest's ``split.csv``); ``outputs``: ``metrics``,
    ``predictions``, ``confusion`` and ``cams`` (folder of ``<id>.png`` for up to ``params.cams`` test images;
    optional). Predictions go through :func:`medflow.oct.predict.predict_log_proba` with ``job.bf16``, as the
    validation during training does; the transform is the checkpoint's recorded preprocessing, as in prediction.
    """
    cfg, boot = params.evaluate, params.bootstrap
    split_path = inputs["split"]
    metrics_path, predictions_path, confusion_path = outputs["metrics"], outputs["predictions"], outputs["confusion"]
    device = select_device(job.threads)
    ckpt = load_checkpoint(inputs["checkpoint"])
    meta = ckpt["meta"]
    classes = list(meta["classes"])
    table, c2i = split_table(split_path, "test")
    if c2i != meta["class_to_idx"]:
        raise InputError(split_path, f"classes {c2i} differ from the model's {meta['class_to_idx']}")
    model = load_model(ckpt).to(device)
    ds = OctImages(params.root, table, c2i, eval_transform_for(checkpoint_preprocessing(meta), inputs["checkpoint"]))
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, **loader_kwargs(device, job.threads))
    out = predict_log_proba(model, loader, device, bf16=job.bf16)
    logp, y = out["log_proba"], out["target"]
    pred = logp.argmax(1)
    patients = table["patient"].astype(str).tolist()  # the loader keeps the table's order

    report = multiclass_report(y, pred, classes)
    cm = plot_confusion(y, pred, classes, confusion_path, title=f"OCT test (n={len(y)})")
    report["confusion_matrix"] = cm.tolist()
    report["classes"] = classes
    report["checkpoint_epoch"] = int(ckpt["epoch"])
    report["n_patients"] = len(set(patients))
    report["headline"] = headline(y, pred, patients, len(classes), **boot.kwargs(job.seed))
    io.write_json(metrics_path, report)

    preds = top_k_table(ds.ids, logp, classes, cfg.top_k)
    preds.insert(1, "patient", patients)
    preds.insert(2, "label", [classes[t] for t in y])
    preds.insert(3, "correct", pred == y)
    with io.atomic_path(predictions_path) as tmp:
        preds.to_csv(tmp, index=False, float_format="%.6f")
    if "cams" in outputs:  # after the metrics, which the maps do not touch
        picked = pick_for_cams(y.tolist(), params.cams)
        titles = [f"{ds.ids[i]}: {classes[y[i]]}, predicted {classes[pred[i]]}" for i in picked]
        save_cams(
            model,
            [ds[i][0] for i in picked],
            [int(pred[i]) for i in picked],
            [ds.ids[i] for i in picked],
            titles,
            outputs["cams"],
        )
    h = report["headline"]
    log.info(
        "test accuracy %.4f [%.4f, %.4f], macro recall %.4f [%.4f, %.4f] on %d images of %d patients",
        h["accuracy"]["value"],
        h["accuracy"]["ci_low"],
        h["accuracy"]["ci_high"],
        h["macro_recall"]["value"],
        h["macro_recall"]["ci_low"],
        h["macro_recall"]["ci_high"],
        report["n"],
        report["n_patients"],
    )
    for c, r in report["per_class"].items():
        log.info("  %-7s precision %.3f recall %.3f (n=%d)", c, r["precision"], r["recall"], r["support"])

    if job.track:
        from medflow import tracking

        extra = {k: report[k] for k in ("macro_precision", "macro_f1")}
        for c, r in report["per_class"].items():
            extra[f"precision_{c}"] = r["precision"]
            extra[f"recall_{c}"] = r["recall"]
        tracking.log_evaluation(
            EXPERIMENT,
            job.rule or RULE,
            headline=report["headline"],
            training_run_id=ckpt["mlflow_run_id"],
            artifacts=[
                metrics_path,
                confusion_path,
                predictions_path,
                *([outputs["cams"]] if "cams" in outputs else []),
            ],
            params={
                "top_k": cfg.top_k,
                "n_test": len(y),
                "n_test_patients": report["n_patients"],
                "bootstrap_samples": boot.bootstrap_samples,
                "confidence": boot.confidence,
                "seed": job.seed,
            },
            tags={"device": describe(device)},
            rule=job.rule,
            extra_metrics=extra,
        )
    return report
