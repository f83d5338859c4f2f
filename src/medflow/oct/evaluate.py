"""Evaluate the OCT classifier on the test split: accuracy, per-class precision/recall, confusion
matrix, and a predictions table with the top-k classes and their probabilities per image."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from torch.utils.data import DataLoader

from medflow import io
from medflow.errors import InputError
from medflow.evaluation.classification import plot_confusion
from medflow.oct.data import OctImages, eval_transform
from medflow.oct.train import load_model, predict_log_proba, split_table
from medflow.train import load_checkpoint, loader_kwargs, select_device

log = logging.getLogger(__name__)


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


def top_k_table(ids: Sequence[str], log_proba: np.ndarray, classes: Sequence[str], k: int) -> pd.DataFrame:
    """One row per image: ``id``, ``top1..topk`` class names with ``prob1..probk``, then ``p_<class>``
    for every class. ``log_proba`` is (N, n_classes)."""
    prob = np.exp(log_proba)
    k = min(k, len(classes))
    order = np.argsort(-prob, axis=1, kind="stable")[:, :k]
    df = pd.DataFrame({"id": list(ids)})
    for j in range(k):
        df[f"top{j + 1}"] = [classes[i] for i in order[:, j]]
        df[f"prob{j + 1}"] = np.take_along_axis(prob, order[:, j : j + 1], axis=1)[:, 0]
    for i, c in enumerate(classes):
        df[f"p_{c}"] = prob[:, i]
    return df


def evaluate(
    raw_root: str | os.PathLike,
    split_path: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    metrics_path: str | os.PathLike,
    predictions_path: str | os.PathLike,
    confusion_path: str | os.PathLike,
    *,
    top_k: int,
    batch_size: int,
    threads: int,
    rule: str | None = "oct_evaluate",
    track: bool = True,
) -> dict:
    """Predict every ``test`` image with the checkpoint's own preprocessing; write metrics JSON,
    predictions CSV and confusion-matrix PNG; log them to an MLflow run tagged ``training_run_id``."""
    device = select_device(threads)
    ckpt = load_checkpoint(checkpoint_path)
    meta = ckpt["meta"]
    classes = list(meta["classes"])
    table, c2i = split_table(split_path, "test")
    if c2i != meta["class_to_idx"]:
        raise InputError(split_path, f"classes {c2i} differ from the model's {meta['class_to_idx']}")
    model = load_model(ckpt).to(device)
    ds = OctImages(raw_root, table, c2i, eval_transform(int(meta["image_size"]), int(meta["resize"])))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, **loader_kwargs(device, threads))
    logp, y = predict_log_proba(model, loader, device)
    pred = logp.argmax(1)

    report = multiclass_report(y, pred, classes)
    cm = plot_confusion(y, pred, classes, confusion_path, title=f"OCT test (n={len(y)})")
    report["confusion_matrix"] = cm.tolist()
    report["classes"] = classes
    report["checkpoint_epoch"] = int(ckpt["epoch"])
    io.write_json(metrics_path, report)

    preds = top_k_table(ds.ids, logp, classes, top_k)
    preds.insert(1, "patient", table["patient"].astype(str).tolist())
    preds.insert(2, "label", [classes[t] for t in y])
    preds.insert(3, "correct", pred == y)
    with io.atomic_path(predictions_path) as tmp:
        preds.to_csv(tmp, index=False, float_format="%.6f")
    log.info("test accuracy %.4f, macro recall %.4f on %d images", report["accuracy"], report["macro_recall"], report["n"])
    for c, r in report["per_class"].items():
        log.info("  %-7s precision %.3f recall %.3f (n=%d)", c, r["precision"], r["recall"], r["support"])

    if track:
        from medflow import tracking

        flat = {f"test_{k}": report[k] for k in ("accuracy", "macro_recall", "macro_precision", "macro_f1")}
        for c, r in report["per_class"].items():
            flat[f"test_precision_{c}"] = r["precision"]
            flat[f"test_recall_{c}"] = r["recall"]
        with tracking.run("oct", "vgg16-test", params={"top_k": top_k, "n_test": len(y)}, tags={"training_run_id": ckpt["mlflow_run_id"]}, rule=rule):
            import mlflow

            mlflow.log_metrics(flat)
            for p in (metrics_path, confusion_path, predictions_path):
                mlflow.log_artifact(str(Path(p)), artifact_path="evaluation")
    return report
