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

New exams to predict (``discover_new``, the ``mrnet_predict`` stage) come as a folder in the download's
layout without labels (``<folder>/{axial,coronal,sagittal}/<exam>.npy``, e.g. ``MRNet-v1.0/valid``) or as a
CSV of paths (``NEW_CSV_HEADER``, or the challenge's ``valid-paths.csv``); they get the same array checks.
"""

from __future__ import annotations

import csv
import io as _io
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medflow import io
from medflow.errors import InputError, Problems
from medflow.ingest import splits
from medflow.ingest.ids import check_id

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


# --- new exams, to predict --------------------------------------------------------------------------

NEW_CSV_HEADER = ("exam", *PLANES)  # the documented CSV: a header, then one row per exam


@dataclass(frozen=True)
class NewExams:
    """New exams to predict. ``exams``: one row per usable exam, in input order: ``id``, ``path_<plane>``
    (as given, relative paths from the current folder) and ``slices_<plane>``. ``excluded``: ``exam, reason``
    per exam that cannot be predicted (a missing plane, a wrong shape or dtype, an unreadable array); the
    reason names each file. ``order``: every exam id of the input, usable or not, in input order."""

    exams: pd.DataFrame
    excluded: pd.DataFrame
    order: list[str]


@dataclass
class _Listed:
    """One exam as the input lists it: a path per plane it names, and why a plane is missing."""

    exam: str
    paths: dict[str, Path]
    problems: list[str]


def discover_new(source: str | os.PathLike, in_plane: int = IN_PLANE) -> NewExams:
    """The exams of ``source`` (a folder or a CSV, see ``new_exams_from_folder`` / ``new_exams_from_csv``), each
    series checked as the training download is (``check_npy``: readable uint8 (slices, in_plane, in_plane)).

    A bad exam is excluded with its reason (and a warning in the log), the others go on. An unsafe exam id, a
    malformed CSV or a path outside the CSV's folder refuses the whole input (every problem together), and so
    does an input without a single usable exam."""
    source = Path(source)
    if source.is_dir():
        listed = new_exams_from_folder(source)
    elif source.is_file():
        listed = new_exams_from_csv(source)
    else:
        raise InputError(source, "missing: expected a folder of {axial,coronal,sagittal}/<exam>.npy or a CSV of paths")
    rows, excluded = [], []
    for item in listed:
        row: dict[str, object] = {"id": item.exam}
        problems = list(item.problems)
        for plane, path in item.paths.items():
            try:
                row[f"slices_{plane}"] = check_npy(path, in_plane)
                row[f"path_{plane}"] = str(path)
            except InputError as e:
                problems += [str(single) for single in e.errors]
        if problems:
            reason = "; ".join(problems)
            log.warning("exam %s excluded: %s", item.exam, reason)
            excluded.append({"exam": item.exam, "reason": reason})
        else:
            rows.append(row)
    if not rows:
        first = f": {excluded[0]['reason']}" if excluded else ""
        raise InputError(source, f"no usable exam ({len(excluded)} excluded{first})")
    columns = ["id", *[f"path_{p}" for p in PLANES], *[f"slices_{p}" for p in PLANES]]
    return NewExams(
        exams=pd.DataFrame(rows)[columns],
        excluded=pd.DataFrame(excluded, columns=["exam", "reason"]),
        order=[item.exam for item in listed],
    )


def new_exams_from_folder(folder: Path) -> list[_Listed]:
    """``<folder>/{axial,coronal,sagittal}/<exam>.npy`` (any safe exam id; hidden files are skipped): every exam
    that has a series in any plane, in id order. A plane an exam lacks is checked (and reported) as missing."""
    present = {p: folder / p for p in PLANES if (folder / p).is_dir()}
    if not present:
        raise InputError(
            folder, "no axial, coronal or sagittal folder: expected <folder>/{axial,coronal,sagittal}/<exam>.npy"
        )
    stems: dict[str, Path] = {}  # exam id -> a file that names it
    for d in present.values():
        for f in sorted(os.scandir(d), key=lambda f: f.name):
            if f.name.endswith(".npy") and not f.name.startswith(".") and f.is_file():
                stems.setdefault(f.name[: -len(".npy")], Path(f.path))
    if not stems:
        raise InputError(folder, "no exams: no .npy series in its axial, coronal or sagittal folder")
    with Problems() as problems:
        for exam, path in stems.items():
            problems.check(check_id, exam, path, "exam id")
    return [_Listed(e, {p: folder / p / f"{e}.npy" for p in PLANES}, []) for e in sorted(stems)]


def new_exams_from_csv(path: Path) -> list[_Listed]:
    """A CSV of paths, relative to the CSV's folder (absolute paths must lie inside it too), in either form:

    - ``exam,axial,coronal,sagittal`` (``NEW_CSV_HEADER``, columns in any order): one row per exam, its id and
      its three series (an empty cell: that plane is missing and the exam excluded);
    - the MRNet challenge's ``valid-paths.csv``: no header, one path per line, three consecutive lines per exam
      (``MRNet-v1.0/valid/axial/1130.npy`` ...). Each line's plane is its file's folder, the exam id its file
      name, which the three lines must share.

    Exams keep the CSV's order; an exam listed twice, an unsafe id or a path outside the folder is refused."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"unreadable ({e.__class__.__name__})") from None
    rows = [(n, [c.strip() for c in r]) for n, r in enumerate(csv.reader(_io.StringIO(text)), start=1)]
    rows = [(n, r) for n, r in rows if any(r)]
    if not rows:
        raise InputError(path, "no rows")
    header = [c.lower() for c in rows[0][1]]
    if sorted(header) == sorted(NEW_CSV_HEADER):
        return _csv_with_header(path, header, rows[1:])
    if all(len(r) == 1 for _, r in rows):
        return _challenge_csv(path, rows)
    raise InputError(
        path,
        f"line {rows[0][0]}: expected the header {','.join(NEW_CSV_HEADER)} or the challenge's one .npy path per "
        f"line (three lines per exam), got {','.join(rows[0][1])!r}",
    )


def _inside(csv_path: Path, cell: str, where: str, problems: Problems) -> Path | None:
    """The series a CSV cell names, resolved against the CSV's folder; ``None`` (a problem recorded) when it
    lies outside that folder. Checked on the normalised path, so ``a/../../x`` is outside too."""
    base = Path(os.path.normpath(csv_path.parent.absolute()))
    target = Path(os.path.normpath(base / cell))  # an absolute cell stays absolute
    if not target.is_relative_to(base):
        problems.add(csv_path, f"{where}: path {cell!r} lies outside the CSV's folder {base}")
        return None
    return csv_path.parent / target.relative_to(base)


def _unique_id(exam: str, seen: set[str], csv_path: Path, where: str, problems: Problems) -> bool:
    if problems.check(check_id, exam, csv_path, f"{where}: exam id") is None:
        return False
    if exam in seen:
        problems.add(csv_path, f"{where}: exam {exam} listed twice")
        return False
    seen.add(exam)
    return True


def _csv_with_header(path: Path, header: list[str], rows: Iterable[tuple[int, list[str]]]) -> list[_Listed]:
    col = {name: header.index(name) for name in NEW_CSV_HEADER}
    out: list[_Listed] = []
    seen: set[str] = set()
    with Problems() as problems:
        for n, cells in rows:
            where = f"line {n}"
            if len(cells) != len(header):
                problems.add(path, f"{where}: {len(cells)} fields, expected {len(header)} ({','.join(header)})")
                continue
            exam = cells[col["exam"]]
            if not _unique_id(exam, seen, path, where, problems):
                continue
            item = _Listed(exam, {}, [])
            for plane in PLANES:
                cell = cells[col[plane]]
                if not cell:
                    item.problems.append(f"{path}: {where}: no {plane} path")
                elif (p := _inside(path, cell, where, problems)) is not None:
                    item.paths[plane] = p
            out.append(item)
        if not out and not problems:
            problems.add(path, "a header but no exams")
    return out


def _challenge_csv(path: Path, rows: list[tuple[int, list[str]]]) -> list[_Listed]:
    out: list[_Listed] = []
    seen: set[str] = set()
    with Problems() as problems:
        if len(rows) % 3:
            problems.add(
                path, f"{len(rows)} paths: expected three lines per exam (its axial, coronal, sagittal series)"
            )
            return out
        for i in range(0, len(rows), 3):
            group = rows[i : i + 3]
            where = f"lines {group[0][0]}-{group[-1][0]}"
            cells = [cells[0] for _, cells in group]
            planes = [Path(c).parent.name for c in cells]
            exams = {Path(c).name.removesuffix(".npy") for c in cells}
            if sorted(planes) != sorted(PLANES) or not all(c.endswith(".npy") for c in cells):
                problems.add(
                    path, f"{where}: expected one .npy series in each of axial/, coronal/, sagittal/, got {cells}"
                )
                continue
            if len(exams) != 1:
                problems.add(path, f"{where}: the three planes of one exam must share its file name, got {cells}")
                continue
            exam = exams.pop()
            if not _unique_id(exam, seen, path, where, problems):
                continue
            item = _Listed(exam, {}, [])
            for plane, cell in zip(planes, cells):
                if (p := _inside(path, cell, where, problems)) is not None:
                    item.paths[plane] = p
            out.append(item)
    return out
