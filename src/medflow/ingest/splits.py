"""Patient/exam-level splits: written once by an ingest rule, read by every later stage.

A split is by patient (or exam), never by slice or patch, so no patient is on both sides.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from medflow import io


def assign_splits(
    ids: Sequence[str],
    fractions: Mapping[str, float],
    seed: int,
    strata: Sequence[str] | None = None,
) -> dict[str, str]:
    """Assign each id to a split (e.g. {"train": .7, "val": .15, "test": .15}), stratified by ``strata``.

    Within each stratum the ids are shuffled by ``seed`` and cut by cumulative fraction (largest
    remainder rounding), so every split gets its share of each class and the result does not depend
    on the order of ``ids``. Every split with a non-zero fraction gets at least one id of a stratum
    when the stratum has enough ids.
    """
    names = list(fractions)
    frac = np.array([fractions[n] for n in names], dtype=float)
    if frac.sum() <= 0:
        raise ValueError("split fractions must add up to more than 0")
    frac = frac / frac.sum()
    strata = list(strata) if strata is not None else ["all"] * len(ids)
    out: dict[str, str] = {}
    for stratum in sorted(set(strata)):
        members = sorted(i for i, s in zip(ids, strata) if s == stratum)
        rng = np.random.default_rng([seed, *stratum.encode()])
        rng.shuffle(members)
        counts = _counts(len(members), frac)
        start = 0
        for name, n in zip(names, counts):
            for m in members[start : start + n]:
                out[m] = name
            start += n
    return out


def _counts(n: int, frac: np.ndarray) -> list[int]:
    raw = frac * n
    counts = np.floor(raw).astype(int)
    # Give leftovers first to non-empty splits that got nothing, then by largest remainder.
    for _ in range(n - counts.sum()):
        empty = [(i) for i in range(len(frac)) if frac[i] > 0 and counts[i] == 0]
        i = empty[0] if empty else int(np.argmax(raw - counts))
        counts[i] += 1
    return counts.tolist()


def write_split(
    path: str | os.PathLike,
    assignment: Mapping[str, str],
    extra: Mapping[str, Sequence] | None = None,
    id_col: str = "id",
) -> pd.DataFrame:
    """Write ``id,split[,extra columns]`` as CSV (atomically) and return it."""
    df = pd.DataFrame({id_col: list(assignment), "split": list(assignment.values())})
    for col, values in (extra or {}).items():
        df[col] = list(values)
    df = df.sort_values(id_col).reset_index(drop=True)
    with io.atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return df


def read_split(path: str | os.PathLike, id_col: str = "id") -> pd.DataFrame:
    return pd.read_csv(path, dtype={id_col: str})


def ids_in(split_df: pd.DataFrame, split: str, id_col: str = "id") -> list[str]:
    return split_df.loc[split_df["split"] == split, id_col].astype(str).tolist()
