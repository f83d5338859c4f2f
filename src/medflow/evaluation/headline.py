"""Headline metrics with bootstrap confidence intervals: the one evaluation contract of every pipeline.

Contract
--------
Every pipeline's ``metrics.json`` has a top-level ``headline`` block::

    "headline": {"<name>": {"value": float, "ci_low": float, "ci_high": float, "n": int}, ...}

- ``name`` is snake_case (``dice_wt``, ``hd95_wt``, ``auc``, ``auc_with_metadata``): it becomes the MLflow
  metric ``test_<name>`` (see ``medflow.tracking.log_evaluation``) and a row of the evaluation report.
- ``value`` is the metric on the whole test set, exactly as the pipeline computes it without intervals.
- ``[ci_low, ci_high]`` is a seeded 95% percentile bootstrap interval over the test units that are
  independent: patients, cases or exams (several images of one patient are resampled together). It is NaN
  when fewer than half of the resamples give a number (e.g. almost every resample has a single class).
- ``n`` is the number of those units (patients, cases, exams), not of images or slices.
- Numbers are plain Python floats/ints; NaN is written as JSON ``NaN`` (what ``json`` reads back).

The report (``medflow.report``) reads only this block; anything else in a metrics file is the pipeline's own.
"""

from __future__ import annotations

import json
import numbers
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from medflow.errors import InputError

KEYS = ("value", "ci_low", "ci_high", "n")
_NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")


@dataclass(frozen=True)
class Bootstrap:
    """Config ``evaluation``: how every pipeline's headline intervals are drawn."""

    bootstrap_samples: int = 1000
    confidence: float = 0.95

    def kwargs(self, seed: int) -> dict[str, Any]:
        """``n_boot``, ``level`` and ``seed`` for this module's metric functions (seed: the job's)."""
        return {"n_boot": int(self.bootstrap_samples), "level": float(self.confidence), "seed": int(seed)}


def _resample_indices(
    n_items: int, groups: Any, n_boot: int, seed: int
) -> tuple[int, Callable[[np.ndarray], np.ndarray], np.ndarray]:
    """(n units, a function from one row of unit draws to item indices, unit draws (n_boot, n units)).

    Units are items, or whole groups when ``groups`` is given; the draws come from
    ``default_rng(seed).integers(0, n_units, size=(n_boot, n_units))``.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        return n_items, lambda row: row, rng.integers(0, n_items, size=(n_boot, n_items))
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) != n_items:
        raise ValueError(f"groups must be 1-D with one entry per item ({n_items}), got shape {groups.shape}")
    _, codes = np.unique(groups, return_inverse=True)
    codes = codes.ravel()
    order = np.argsort(codes, kind="stable")  # items sorted by group: group g is order[starts[g]:starts[g]+counts[g]]
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

    def items(row: np.ndarray) -> np.ndarray:
        lens = counts[row]
        # position inside the sorted order of every item of every drawn group, without a Python loop
        offsets = np.repeat(starts[row] - (np.cumsum(lens) - lens), lens)
        return order[offsets + np.arange(lens.sum())]

    return len(counts), items, rng.integers(0, len(counts), size=(n_boot, len(counts)))


def _interval(stats: np.ndarray, n_boot: int, level: float) -> tuple[float, float]:
    """Percentile interval of the resampled statistics; NaN ones are skipped, NaN if under half are left."""
    valid = stats[~np.isnan(stats)]
    if 2 * len(valid) < n_boot:
        return float("nan"), float("nan")
    alpha = 100 * (1 - level) / 2
    low, high = np.percentile(valid, [alpha, 100 - alpha])
    return float(low), float(high)


def _check(n_boot: int, level: float) -> None:
    if not (isinstance(n_boot, numbers.Integral) and n_boot >= 1):
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def bootstrap_metric(
    fn: Callable[..., float],
    *arrays: Any,
    groups: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """A metric and its percentile bootstrap interval: ``{"value", "ci_low", "ci_high", "n"}``.

    ``fn(*arrays)`` computes the metric (e.g. ``sklearn.metrics.roc_auc_score(y, prob)``); the arrays are
    aligned on axis 0 (one row per item: image, slice, case). ``value`` is ``fn(*arrays)`` on the full
    data, unchanged, so it equals the metric without intervals bit for bit. The interval resamples items
    with replacement ``n_boot`` times (``numpy.random.default_rng(seed)``); with ``groups`` (one id per
    item, e.g. the patient of each OCT image) it resamples whole groups instead (cluster bootstrap), so
    correlated images of one patient do not narrow the interval, and ``n`` is the number of groups, else
    the number of items.

    Resamples where ``fn`` returns NaN or raises ``ValueError`` (AUC of a resample with one class) are
    skipped. If fewer than half of the ``n_boot`` resamples are valid, ``ci_low`` and ``ci_high`` are NaN:
    an interval from the few lucky resamples would be too narrow. ``level`` is the coverage (0.95: the
    2.5th and 97.5th percentiles). Errors of ``fn`` on the full data propagate.

    ``fn`` runs ``n_boot`` times in Python; for AUC and per-case means use ``auc_metric`` and
    ``mean_metric``, which draw the same resamples and compute them at once.
    """
    _check(n_boot, level)
    if not arrays:
        raise ValueError("bootstrap_metric needs at least one array")
    arrs = [np.asarray(a) for a in arrays]
    n_items = len(arrs[0]) if arrs[0].ndim else 0
    if n_items == 0 or any(a.ndim == 0 or len(a) != n_items for a in arrs):
        raise ValueError(f"arrays must be non-empty and of one length on axis 0, got {[np.shape(a) for a in arrays]}")
    value = float(fn(*arrays))  # the caller's own objects, so the value is today's metric bit for bit
    n_units, to_items, draws = _resample_indices(n_items, groups, n_boot, seed)
    stats = np.full(n_boot, np.nan)
    with warnings.catch_warnings():  # one-class or empty resamples warn; they are counted, not shown
        warnings.simplefilter("ignore")
        for b in range(n_boot):
            idx = to_items(draws[b])
            try:
                stats[b] = float(fn(*(a[idx] for a in arrs)))
            except ValueError:
                pass
    low, high = _interval(stats, n_boot, level)
    return {"value": value, "ci_low": low, "ci_high": high, "n": int(n_units)}


def mean_metric(
    values: Any, groups: Any = None, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Mean of a per-item score (NaN skipped, as ``numpy.nanmean``) and its bootstrap interval.

    ``values``: shape (N,), e.g. Dice or HD95 (mm) per case, NaN where the score does not exist (a region
    absent from a case). ``value`` is ``float(np.nanmean(values))``. The interval resamples all N items
    (or whole ``groups``) as ``bootstrap_metric(np.nanmean, values, groups=groups)`` does, with the same
    draws for the same seed, but vectorised. ``n`` counts the items (groups) with a score, i.e. those the
    mean is over.
    """
    _check(n_boot, level)
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"values must be 1-D and non-empty, got shape {v.shape}")
    scored = ~np.isnan(v)
    with warnings.catch_warnings():  # all-NaN input: the mean is NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        value = float(np.nanmean(v))
    _, to_items, draws = _resample_indices(len(v), groups, n_boot, seed)
    if groups is None:
        sums, counts, n = np.where(scored, v, 0.0), scored.astype(float), int(scored.sum())
    else:  # per-group sum and count of scores: a resample's mean is sum(sums) / sum(counts) over its groups
        _, codes = np.unique(np.asarray(groups), return_inverse=True)
        codes = codes.ravel()
        sums = np.bincount(codes, weights=np.where(scored, v, 0.0))
        counts = np.bincount(codes, weights=scored.astype(float))
        n = int((counts > 0).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)  # 0/0 -> NaN: a resample without scores
    low, high = _interval(stats, n_boot, level)
    return {"value": value, "ci_low": low, "ci_high": high, "n": n}


def _unit_weights(draws: np.ndarray, n_units: int) -> np.ndarray:
    """How often each unit is drawn in each resample: (n_boot, n_units) counts from (n_boot, n_units) draws."""
    n_boot = len(draws)
    flat = (draws + n_units * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n_units).reshape(n_boot, n_units).astype(float)


def _weighted_auc(
    w: np.ndarray, positive: np.ndarray, lvl: np.ndarray, lvl_start: np.ndarray, lvl_end: np.ndarray
) -> np.ndarray:
    """AUC of each resample from item weights w (B, N), items sorted by score; lvl (N,) is each item's
    score level (ties share one), items of level l at sorted positions lvl_start[l]:lvl_end[l].

    AUC = sum over positive i, negative j of w_i w_j ([s_i > s_j] + [s_i == s_j] / 2) / (W_pos W_neg), the
    Mann-Whitney form of ``roc_auc_score`` for a sample holding item i w_i times. NaN with one class.
    """
    neg_cum = np.cumsum(w * ~positive, axis=1)
    neg_cum = np.concatenate([np.zeros((len(w), 1)), neg_cum], axis=1)  # neg_cum[:, k]: negatives in items < k
    below = neg_cum[:, lvl_start]  # (B, L) negative weight strictly below each score level
    tied = neg_cum[:, lvl_end] - below  # negative weight at the level
    pos_w = w * positive
    num = (pos_w * (below + tied / 2)[:, lvl]).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / (pos_w.sum(axis=1) * (w.sum(axis=1) - pos_w.sum(axis=1)))


def auc_metric(
    y_true: Any, score: Any, groups: Any = None, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """ROC AUC of a binary prediction and its bootstrap interval, vectorised (ms, not seconds).

    ``y_true`` (N,) in {0, 1}, ``score`` (N,) any real (probability, logit). ``value`` is
    ``sklearn.metrics.roc_auc_score(y_true, score)``, NaN with one class (as ``binary_report``). The
    resamples are those of ``bootstrap_metric(roc_auc_score, y_true, score, groups=groups)`` with the same
    seed (the same draws), their AUC computed from draw counts at once; resamples with one class are skipped.
    """
    from sklearn.metrics import roc_auc_score

    _check(n_boot, level)
    y = np.asarray(y_true)
    s = np.asarray(score, dtype=float)
    if y.ndim != 1 or s.shape != y.shape or len(y) == 0:
        raise ValueError(f"y_true and score must be 1-D, non-empty and of one length, got {y.shape} and {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"y_true must hold 0/1 labels, got {np.unique(y)[:5].tolist()}")
    value = float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else float("nan")
    n_units, _, draws = _resample_indices(len(y), groups, n_boot, seed)
    codes = None if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    order = np.argsort(s, kind="stable")
    tie, lvl = np.unique(s[order], return_inverse=True)  # lvl: score level of each sorted item (ties share one)
    lvl = lvl.ravel()
    lvl_start = np.searchsorted(lvl, np.arange(len(tie)), side="left")
    lvl_end = np.searchsorted(lvl, np.arange(len(tie)), side="right")
    positive = y[order] == 1
    stats = np.empty(n_boot)
    chunk = max(1, 2_000_000 // len(y))  # bound memory: chunk x N floats per intermediate
    for b0 in range(0, n_boot, chunk):
        w = _unit_weights(draws[b0 : b0 + chunk], n_units)
        if codes is not None:
            w = w[:, codes]  # an item counts as often as its group was drawn
        stats[b0 : b0 + chunk] = _weighted_auc(w[:, order], positive, lvl, lvl_start, lvl_end)
    low, high = _interval(stats, n_boot, level)
    return {"value": value, "ci_low": low, "ci_high": high, "n": int(n_units)}


def _real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def headline_block(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Check a headline block and return it as plain data: ``{name: {"value", "ci_low", "ci_high", "n"}}``.

    Raises ``ValueError`` when a name is not snake_case, an entry does not have exactly the four keys, a
    number is not a number, or ``n`` is not a non-negative integer. Values may be NaN.
    """
    if not isinstance(metrics, Mapping):
        raise ValueError(f"a headline block is a mapping of name -> entry, got {type(metrics).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for name, entry in metrics.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"headline name {name!r} is not snake_case")
        if not isinstance(entry, Mapping) or set(entry) != set(KEYS):
            got = sorted(entry) if isinstance(entry, Mapping) else type(entry).__name__
            raise ValueError(f"headline {name!r} must have exactly the keys {list(KEYS)}, got {got}")
        for key in ("value", "ci_low", "ci_high"):
            if not _real(entry[key]):
                raise ValueError(f"headline {name!r}: {key} must be a number, got {entry[key]!r}")
        n = entry["n"]
        if not (isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 0):
            raise ValueError(f"headline {name!r}: n must be a non-negative integer, got {n!r}")
        out[name] = {
            "value": float(entry["value"]),
            "ci_low": float(entry["ci_low"]),
            "ci_high": float(entry["ci_high"]),
            "n": int(n),
        }
    return out


def read_headline(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The checked ``headline`` block of a metrics.json; ``InputError(path, ...)`` if it is missing or malformed."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InputError(path, "metrics file does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not a readable JSON metrics file ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or "headline" not in data:
        raise InputError(path, "no headline block")
    try:
        return headline_block(data["headline"])
    except ValueError as exc:
        raise InputError(path, f"malformed headline block: {exc}") from None
