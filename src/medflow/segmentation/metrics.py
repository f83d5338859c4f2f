"""Overlap and distance metrics for BraTS structures, with the challenge's rules for empty masks.

- Dice: both masks empty -> 1.0; exactly one empty -> 0.0.
- HD95 (mm): both empty -> 0.0; exactly one empty -> :data:`HD95_EMPTY` = 373.13 mm, the value the
  BraTS evaluation (CaPTk) reports, i.e. the diagonal of a 240x240x155 1-mm volume, so such a case
  counts as the worst possible miss in a mean.

HD95 is the larger of the two directed 95th-percentile surface distances (as MedPy's ``hd95`` and
MONAI's ``compute_hausdorff_distance(percentile=95)``); surfaces are the mask voxels with a
background face neighbour, distances are Euclidean in mm using the voxel spacing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from medflow.segmentation import regions

HD95_EMPTY = 373.13  # mm; sqrt(240^2 + 240^2 + 155^2)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks of the same shape (BraTS rule: both empty -> 1)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {truth.shape}")
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def dice_from_counts(intersection: float, pred_sum: float, truth_sum: float) -> float:
    """Dice from accumulated voxel counts (e.g. over a whole validation set), same empty rule."""
    total = pred_sum + truth_sum
    return 1.0 if total == 0 else 2.0 * intersection / total


def _surface(mask: np.ndarray) -> np.ndarray:
    # Voxels outside the array count as background, so a mask touching the border has a surface there.
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)
    return mask & ~eroded


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm between two boolean masks.

    ``spacing``: voxel size along each axis of the masks, in mm (e.g. (z, y, x)).
    """
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {truth.shape}")
    has_pred, has_truth = pred.any(), truth.any()
    if not has_pred and not has_truth:
        return 0.0
    if not has_pred or not has_truth:
        return HD95_EMPTY
    # Crop to the union's bounding box (plus one voxel) so a real-size volume costs what the tumour
    # costs: every surface voxel, and so every nearest neighbour, lies inside it.
    union = pred | truth
    box = tuple(
        slice(max(int(idx.min()) - 1, 0), min(int(idx.max()) + 2, n)) for idx, n in zip(np.nonzero(union), union.shape)
    )
    s_pred, s_truth = _surface(pred[box]), _surface(truth[box])
    spacing = tuple(float(s) for s in spacing)
    # Distance from every voxel to the nearest surface voxel of the other mask.
    d_to_truth = ndimage.distance_transform_edt(~s_truth, sampling=spacing)
    d_to_pred = ndimage.distance_transform_edt(~s_pred, sampling=spacing)
    forward = np.percentile(d_to_truth[s_pred], 95)
    backward = np.percentile(d_to_pred[s_truth], 95)
    return float(max(forward, backward))


def case_metrics(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], with_hd95: bool = True
) -> dict[str, dict[str, float]]:
    """Dice (and HD95, mm) of every region and label: ``{"WT": {"dice": .., "hd95": ..}, ..., "label_4": {...}}``.

    ``pred``, ``truth``: stored label maps (Z, Y, X) with values 0..3; ``spacing``: (z, y, x) mm.
    """
    pm, tm = regions.masks(pred), regions.masks(truth)
    out = {}
    for name in regions.STRUCTURES:
        row = {"dice": dice(pm[name], tm[name])}
        if with_hd95:
            row["hd95"] = hd95(pm[name], tm[name], spacing)
        out[name] = row
    return out


def summarise(per_case: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation and median over cases of every structure and metric.

    Returns ``{"WT": {"dice": mean, "dice_std": .., "dice_median": .., "hd95": mean, ...}, ...}``.
    """
    cases = list(per_case.values())
    out: dict[str, dict[str, float]] = {}
    if not cases:
        return out
    for name in cases[0]:
        row: dict[str, float] = {}
        for metric in cases[0][name]:
            vals = np.array([c[name][metric] for c in cases], dtype=float)
            row[metric] = float(vals.mean())
            row[f"{metric}_std"] = float(vals.std())
            row[f"{metric}_median"] = float(np.median(vals))
        out[name] = row
    return out


def flat_row(
    result: Mapping[str, Mapping[str, float]], structures: Iterable[str] = regions.STRUCTURES
) -> dict[str, float]:
    """``{"WT": {"dice": x}}`` -> ``{"WT_dice": x}`` for tables and MLflow metric names."""
    return {f"{name}_{metric}": float(v) for name in structures for metric, v in result[name].items()}
