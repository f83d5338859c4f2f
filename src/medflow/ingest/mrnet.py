"""MRNet ingest: discover the download, validate it, write the manifest and the exam-level fold file.

Layout (the Stanford MRNet-v1.0 download, and the synthetic copy)::

    {train,valid}/{axial,coronal,sagittal}/NNNN.npy   uint8, (slices, 256, 256); slices vary per exam
    {train,valid}-{abnormal,acl,meniscus}.csv         no header: NNNN,label (0/1)

Every exam must have a row in all three CSVs of its split and an array in all three planes; an array
must be a readable, non-pickled uint8 array of shape (slices >= 1, 256, 256). Every problem found
(each naming its file) is reported together, and nothing is written. Arrays are opened memory-mapped,
so checking a thousand exams reads only their headers.

Outputs, read by every later stage:

- manifest CSV: ``id, split, abnormal, acl, meniscus, slices_axial, slices_coronal, slices_sagittal``;
- fold CSV: ``id, split, fold`` where ``fold`` is ``0..k-1`` for train exams (stratified by the
  combination of the three labels) and ``valid`` for the valid exams.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from medflow import io
from medflow.errors import InputError, Problems
from medflow.ingest import splits

log = logging.getLogger(__name__)

TASKS = ("abnormal", "acl", "meniscus")
PLANES = ("axial", "coronal", "sagittal")
SPLITS = ("train", "valid")
IN_PLANE = 256  # rows and columns of every public MRNet slice
VALID_FOLD = "valid"


def label_csv(root: str | os.PathLike, split: str, task: str) -> Path:
    return Path(root) / f"{split}-{task}.csv"


def npy_path(root: str | os.PathLike, split: str, plane: str, exam: str) -> Path:
    return Path(root) / split / plane / f"{exam}.npy"


def read_labels(path: str | os.PathLike) -> dict[str, int]:
    """A header-less ``NNNN,label`` CSV -> {exam id (4 digits): 0/1}, in file order; every bad line is
    reported (one InputError per line, raised together)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "missing label file")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"unreadable ({e.__class__.__name__})") from None
    out: dict[str, int] = {}
    with Problems() as problems:
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = [f.strip() for f in line.split(",")]
            if len(fields) != 2:
                problems.add(path, f"line {n}: expected 'exam_id,label', got {line.strip()!r}")
                continue
            exam, label = fields
            if not exam.isdigit():
                problems.add(path, f"line {n}: exam id {exam!r} is not a number")
                continue
            if label not in ("0", "1"):
                problems.add(path, f"line {n}: label {label!r} is not 0 or 1")
            exam = f"{int(exam):04d}"
            if exam in out:
                problems.add(path, f"line {n}: exam {exam} listed twice")
            out.setdefault(exam, int(label) if label in ("0", "1") else -1)
        if not out and not problems:
            problems.add(path, "no rows")
    return out


def check_npy(path: str | os.PathLike, in_plane: int = IN_PLANE) -> int:
    """Validate one series array from its header (memory-mapped); returns its slice count.

    A wrong dtype and a wrong shape are two problems, raised together."""
    path = Path(path)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputError(path, "missing") from None
    except (OSError, ValueError, EOFError) as e:
        why = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise InputError(path, f"unreadable as a .npy array ({why})") from None
    shape, dtype = arr.shape, arr.dtype
    del arr
    with Problems() as problems:
        if dtype != np.uint8:
            problems.add(path, f"dtype {dtype}, expected uint8")
        if len(shape) != 3:
            problems.add(path, f"{len(shape)} dimensions {tuple(shape)}, expected (slices, {in_plane}, {in_plane})")
        elif shape[1:] != (in_plane, in_plane):
            problems.add(path, f"slices of {shape[1]}x{shape[2]}, expected {in_plane}x{in_plane}")
        elif shape[0] < 1:
            problems.add(path, "no slices")
    return int(shape[0])


def discover(root: str | os.PathLike, in_plane: int = IN_PLANE) -> pd.DataFrame:
    """Validate the download under ``root`` and return the manifest (one row per exam).

    Every problem of every CSV and array is collected; any problem raises them all together. A check
    that depends on a broken file (a missing CSV, a missing plane folder) is skipped rather than
    reported once per exam.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "MRNet folder missing")
    rows = []
    seen: dict[str, str] = {}
    with Problems() as problems:
        for split in SPLITS:
            read = {t: problems.check(read_labels, label_csv(root, split, t)) for t in TASKS}
            labels = {t: lab for t, lab in read.items() if lab is not None}
            exams = sorted(set().union(*labels.values()))
            # The CSV an exam is first listed in, named in messages about it.
            listed_in = {e: next(t for t in TASKS if t in labels and e in labels[t]) for e in exams}
            for t in labels:  # an exam listed for one task must be listed for all
                for e in exams:
                    if e not in labels[t]:
                        problems.add(
                            label_csv(root, split, t), f"no row for exam {e} (listed in {split}-{listed_in[e]}.csv)"
                        )
            present: dict[str, set[str]] = {}  # plane -> exam ids with an array, from one listing per folder
            for plane in PLANES:
                d = root / split / plane
                if not d.is_dir():
                    problems.add(d, f"missing {plane} folder")
                    continue
                present[plane] = {f.name[:-4] for f in os.scandir(d) if f.name.endswith(".npy") and f.is_file()}
                if labels:
                    first = next(iter(labels))
                    for stem in sorted(present[plane] - set(exams)):
                        problems.add(
                            label_csv(root, split, first),
                            f"no row for exam {stem}, which has {split}/{plane}/{stem}.npy",
                        )
            for e in exams:
                if e in seen:
                    problems.add(label_csv(root, split, listed_in[e]), f"exam {e} is also in {seen[e]}")
                seen.setdefault(e, split)
                row = {"id": e, "split": split, **{t: labels[t].get(e) for t in labels}}
                for plane in present:
                    p = npy_path(root, split, plane, e)
                    if e not in present[plane]:
                        problems.add(p, f"missing: exam {e} is in {split}-{listed_in[e]}.csv but has no {plane} series")
                        continue
                    row[f"slices_{plane}"] = problems.check(check_npy, p, in_plane)
                rows.append(row)
    return pd.DataFrame(rows)


def assign_folds(manifest: pd.DataFrame, k: int, seed: int) -> pd.Series:
    """Exam id -> fold: ``0..k-1`` for train exams, ``valid`` for the valid exams.

    Stratified by the label combination (abnormal, acl, meniscus): exams are shuffled within each
    combination (seeded) and dealt to the folds in turn, the count running on across combinations,
    so fold sizes differ by at most one and each fold gets its share of every combination. (Cutting
    each combination by fractions would hand every small combination's remainder to the same fold.)
    """
    if k < 2:
        raise ValueError(f"mrnet.folds must be at least 2, got {k}")
    train = manifest[manifest["split"] == "train"]
    if len(train) < k:
        raise ValueError(f"{len(train)} train exams cannot make {k} folds")
    strata = train[list(TASKS)].astype(int).astype(str).agg("".join, axis=1)
    fold: dict[str, str] = {}
    for stratum in sorted(set(strata)):
        members = sorted(train.loc[strata == stratum, "id"])
        np.random.default_rng([seed, int(stratum, 2)]).shuffle(members)
        for e in members:
            fold[e] = str(len(fold) % k)
    return manifest["id"].map(lambda e: fold.get(e, VALID_FOLD)).rename("fold")


def ingest(
    root: str | os.PathLike,
    manifest_out: str | os.PathLike,
    folds_out: str | os.PathLike,
    *,
    k: int,
    seed: int,
    in_plane: int = IN_PLANE,
) -> pd.DataFrame:
    """Validate ``root``, write the manifest and the fold file; returns the manifest."""
    manifest = discover(root, in_plane)
    folds = assign_folds(manifest, k, seed)
    with io.atomic_path(manifest_out) as tmp:
        manifest.to_csv(tmp, index=False)
    splits.write_split(folds_out, dict(zip(manifest["id"], manifest["split"])), extra={"fold": folds.tolist()})
    for split, df in manifest.groupby("split"):
        pos = ", ".join(f"{t} {int(df[t].sum())}" for t in TASKS)
        slices = {p: f"{int(df[f'slices_{p}'].min())}-{int(df[f'slices_{p}'].max())}" for p in PLANES}
        log.info("%s: %d exams; positives: %s; slices per plane: %s", split, len(df), pos, slices)
    log.info("train exams per fold: %s", folds[manifest["split"] == "train"].value_counts().sort_index().to_dict())
    return manifest


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str})


def read_folds(path: str | os.PathLike) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str, "split": str, "fold": str})


def fold_ids(folds: pd.DataFrame, fold: str) -> tuple[list[str], dict[str, list[str]]]:
    """The exams a model of ``fold`` trains on, and the exams it predicts by role.

    ``fold`` ``all``: trains on every train exam; predicts the valid exams (``valid``) and the train
    exams in sample (``in_sample``, for the tutorial's stacking). A digit ``f``: trains on the train
    exams of the other folds and predicts fold ``f`` only (``heldout``), so no exam is ever predicted
    by a model that saw it.
    """
    train = folds[folds["split"] == "train"]
    if fold == "all":
        valid = folds.loc[folds["split"] == "valid", "id"].tolist()
        return train["id"].tolist(), {"valid": valid, "in_sample": train["id"].tolist()}
    if fold not in set(train["fold"]):
        raise ValueError(f"fold {fold} is not in the fold file (folds: {sorted(set(train['fold']))})")
    return train.loc[train["fold"] != fold, "id"].tolist(), {"heldout": train.loc[train["fold"] == fold, "id"].tolist()}
