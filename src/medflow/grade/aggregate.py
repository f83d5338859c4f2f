"""Patient-level grade prediction from slice probabilities.

A patient has one grade, but the classifier sees slices: the per-slice P(HGG) of one patient are
combined by a rule from config (``brats.grade.aggregate``):

- ``mean``: mean probability (every slice votes with its confidence);
- ``median``: robust to a few outlying slices;
- ``max``: the most HGG-looking slice decides (sensitive: one enhancing slice marks HGG);
- ``vote``: fraction of slices with P >= 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

RULES = ("mean", "median", "max", "vote")


def aggregate(
    cases: Sequence[str], prob: Sequence[float], rule: str = "mean", labels: Sequence[int] | None = None
) -> pd.DataFrame:
    """One row per case (sorted by id): ``id``, ``prob`` (aggregated P(HGG)), ``n_slices`` and, when
    slice ``labels`` are given, ``label`` (all slices of a case must carry the same label)."""
    if rule not in RULES:
        raise ValueError(f"aggregation rule must be one of {RULES}, not {rule!r}")
    df = pd.DataFrame({"id": np.asarray(cases).astype(str), "prob": np.asarray(prob, dtype=float)})
    if len(df) == 0:
        raise ValueError("no slices to aggregate")
    if rule == "vote":
        df["prob"] = (df["prob"] >= 0.5).astype(float)
        rule = "mean"
    g = df.groupby("id", sort=True)["prob"]
    out = pd.DataFrame({"prob": g.agg(rule), "n_slices": g.size()})
    if labels is not None:
        lab = pd.Series(np.asarray(labels).astype(int), index=df["id"]).groupby(level=0)
        if (lab.nunique() > 1).any():
            bad = lab.nunique()[lab.nunique() > 1].index[0]
            raise ValueError(f"case {bad} has slices with different labels")
        out["label"] = lab.first()
    return out.reset_index()
