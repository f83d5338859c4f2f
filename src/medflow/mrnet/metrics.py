"""Metrics the MRNet training jobs compute themselves (evaluation uses medflow.evaluation)."""

from __future__ import annotations

import numpy as np


def rank_auc(y, p) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count one half): the value scikit-learn's
    roc_auc_score gives, without importing scikit-learn into every training job (about 1 s each).
    ``y`` (N,) 0/1, ``p`` (N,) scores. NaN when only one class is present."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(np.asarray(p, dtype=float), return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    return float((avg_rank[inverse][y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
