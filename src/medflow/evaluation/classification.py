"""Metrics and plots shared by the classification pipelines (MRNet, BraTS grade, RSNA, OCT).

Numbers come from scikit-learn; plots from matplotlib; metrics are plain floats for JSON.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn import metrics as skm

from medflow import io


def binary_report(y_true: Sequence[int], prob: Sequence[float], threshold: float = 0.5) -> dict[str, float]:
    """AUC, accuracy, sensitivity, specificity and balanced accuracy of a binary prediction.

    AUC is NaN when only one class is present (scikit-learn would raise).
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, dtype=float)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    auc = float(skm.roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    return {
        "auc": auc,
        "accuracy": float((tp + tn) / max(len(y), 1)),
        "sensitivity": float(sens),
        "specificity": float(spec),
        "balanced_accuracy": float(np.nanmean([sens, spec])),
        "n": int(len(y)),
        "n_positive": int(y.sum()),
    }


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], path: str | os.PathLike, title: str = "ROC"
) -> None:
    """One PNG with a ROC curve per named (y_true, prob) pair, AUC in the legend."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, (y, p) in curves.items():
        y = np.asarray(y).astype(int)
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = skm.roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {skm.roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    io.save_figure(fig, path)


def plot_confusion(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "Confusion matrix",
) -> np.ndarray:
    """Confusion-matrix PNG (counts); returns the matrix."""
    plt = _plt()
    cm = skm.confusion_matrix(y_true, y_pred, labels=list(range(len(class_names))))
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2, 1.2 * len(class_names) + 1.5))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    io.save_figure(fig, path)
    return cm
