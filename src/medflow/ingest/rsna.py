"""RSNA pneumonia ingest: discover the download, validate it, write the manifest and the split.

Layout (the Kaggle "rsna-pneumonia-detection-challenge" download)::

    stage_2_train_images/<patientId>.dcm
    stage_2_train_labels.csv            patientId,x,y,width,height,Target   (a row per box)
    stage_2_detailed_class_info.csv     patientId,class

The patient id kept everywhere is the file's patientId, the data set's anonymous id; the DICOM
PatientID/PatientName tags are never read here. It names per-patient outputs (CAM PNGs), so each one must
be a safe id (``medflow.ingest.ids``: no path separators, no leading dot). Anything malformed (an unsafe id
too) is an :class:`InputError` naming the file (and the CSV line) and the problem; every one found is
reported, together, before the job stops.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from medflow import io
from medflow.errors import InputError, Problems
from medflow.ingest import splits
from medflow.ingest.ids import id_problem

log = logging.getLogger(__name__)

IMAGES = "stage_2_train_images"
LABELS = "stage_2_train_labels.csv"
CLASSES = "stage_2_detailed_class_info.csv"
CLASS_NAMES = ("Lung Opacity", "No Lung Opacity / Not Normal", "Normal")
OPACITY = CLASS_NAMES[0]
BOX = ["x", "y", "width", "height"]
# What a DICOM must hold for the later stages to read its pixels.
REQUIRED_TAGS = ("Rows", "Columns", "PhotometricInterpretation", "BitsAllocated")


def _read_csv(path: Path, columns: list[str], problems: Problems) -> pd.DataFrame:
    """The CSV with its required ``columns``; a missing or unreadable file or a missing column raises, an
    empty patientId is recorded in ``problems`` (one per line) and its row kept for the other checks."""
    if not path.is_file():
        raise InputError(path, "missing")
    try:
        df = pd.read_csv(path, dtype={"patientId": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(path, f"not a readable CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)} (has {', '.join(map(str, df.columns))})")
    for i in np.flatnonzero(df["patientId"].isna()):
        problems.add(path, f"line {i + 2}: empty patientId")
    for i in np.flatnonzero(df["patientId"].notna()):
        problem = id_problem(df["patientId"].iloc[i], "patientId")
        if problem:
            problems.add(path, f"line {i + 2}: {problem}")
    return df


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """stage_2_train_labels.csv -> one row per patient: ``patientId, target, n_boxes, boxes``
    (boxes: JSON list of [x, y, width, height] in pixels of the original image). Every bad line is
    reported (raised together)."""
    path = Path(path)
    with Problems() as problems:
        df = _read_csv(path, ["patientId", *BOX, "Target"], problems)
        target = pd.to_numeric(df["Target"], errors="coerce")
        for i in np.flatnonzero(~target.isin([0, 1])):
            problems.add(path, f"line {i + 2}: Target must be 0 or 1, got {str(df['Target'].iloc[i])!r}")
        boxes = df[BOX].apply(pd.to_numeric, errors="coerce")
        no_box = boxes.isna().any(axis=1) | (boxes[["width", "height"]] <= 0).any(axis=1)
        for i in np.flatnonzero((target == 1) & no_box):
            problems.add(path, f"line {i + 2}: Target=1 needs a box with x, y and positive width, height")
        for i in np.flatnonzero((target == 0) & boxes.notna().any(axis=1)):
            problems.add(path, f"line {i + 2}: Target=0 but a box is given")
        # Only valid targets count here: a bad one is already reported above.
        mixed = df.assign(Target=target.where(target.isin([0, 1]))).groupby("patientId")["Target"].nunique()
        for pid in mixed[mixed > 1].index:
            problems.add(path, f"patientId {pid} has rows with both Target 0 and 1")
    df = df.assign(Target=target.astype(int))
    rows = []
    for pid, g in df.groupby("patientId", sort=True):
        t = int(g["Target"].iloc[0])
        b = boxes.loc[g.index].values.tolist() if t else []
        rows.append({"patientId": pid, "target": t, "n_boxes": len(b), "boxes": json.dumps(b)})
    return pd.DataFrame(rows)


def read_classes(path: str | os.PathLike) -> pd.DataFrame:
    """stage_2_detailed_class_info.csv -> one row per patient: ``patientId, class``. Every bad line is
    reported (raised together)."""
    path = Path(path)
    with Problems() as problems:
        df = _read_csv(path, ["patientId", "class"], problems)
        for i in np.flatnonzero(~df["class"].isin(CLASS_NAMES)):
            expected = ", ".join(CLASS_NAMES)
            problems.add(path, f"line {i + 2}: unknown class {df['class'].iloc[i]!r} (expected one of {expected})")
        n = df.groupby("patientId")["class"].nunique()
        for pid in n[n > 1].index:
            problems.add(path, f"patientId {pid} has more than one class")
    return df.drop_duplicates("patientId").sort_values("patientId").reset_index(drop=True)[["patientId", "class"]]


def check_header(path: Path) -> None:
    """Raise InputError unless ``path`` is a DICOM file whose header describes an image."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(REQUIRED_TAGS))
    except InvalidDicomError:
        raise InputError(path, "not a DICOM file (no DICM preamble)") from None
    except Exception as e:  # truncated or garbled files raise many kinds of errors in pydicom
        raise InputError(
            path, f"unreadable DICOM header ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    missing = [t for t in REQUIRED_TAGS if t not in ds]
    if missing:
        raise InputError(path, f"DICOM header lacks {', '.join(missing)}")


def discover(raw_dir: str | os.PathLike) -> pd.DataFrame:
    """Validate the download and return the manifest: one row per patient, sorted by patientId,
    with ``patientId, dicom, target, n_boxes, boxes, class``.

    Every problem of both CSVs and of the DICOM folder is collected and raised together; a check that
    needs a broken CSV (which patients to expect) is skipped. Each DICOM header is read once.
    """
    raw = Path(raw_dir)
    images = raw / IMAGES
    with Problems() as problems:
        labels = problems.check(read_labels, raw / LABELS)
        classes = problems.check(read_classes, raw / CLASSES)
        in_labels = None if labels is None else set(labels["patientId"])
        if labels is not None and classes is not None:
            in_classes = set(classes["patientId"])
            for pid in sorted(in_labels - in_classes):
                problems.add(raw / CLASSES, f"no row for patientId {pid} (listed in {LABELS})")
            for pid in sorted(in_classes - in_labels):
                problems.add(raw / LABELS, f"no row for patientId {pid} (listed in {CLASSES})")
            both = labels.merge(classes, on="patientId")
            wrong = both[(both["class"] == OPACITY) != (both["target"] == 1)]
            for pid, cls, target in zip(wrong["patientId"], wrong["class"], wrong["target"]):
                problems.add(raw / CLASSES, f"patientId {pid}: class {cls!r} contradicts Target={target} in {LABELS}")
        if not images.is_dir():
            problems.add(images, "missing (expected the folder of <patientId>.dcm files)")
        else:
            files = {}
            for p in sorted(images.iterdir()):
                if p.suffix.lower() != ".dcm":
                    continue
                problem = id_problem(p.stem, "patientId (the file name)")
                if problem:
                    problems.add(p, problem)
                else:
                    files[p.stem] = p
            listed = sorted(files) if in_labels is None else sorted(in_labels)
            if in_labels is not None:
                for pid in sorted(set(files) - in_labels):
                    problems.add(files[pid], f"no row in {LABELS} for this patientId")
            for pid in listed:
                if pid not in files:
                    problems.add(images / f"{pid}.dcm", f"missing (patientId listed in {LABELS})")
                else:
                    problems.check(check_header, files[pid])
    df = labels.merge(classes, on="patientId", validate="one_to_one")
    df.insert(1, "dicom", [str(files[pid]) for pid in df["patientId"]])
    return df


def ingest(
    raw_dir: str | os.PathLike,
    manifest_out: str | os.PathLike,
    split_out: str | os.PathLike,
    fractions: Mapping[str, float],
    seed: int,
) -> pd.DataFrame:
    """Write the manifest CSV and the patient-level split (``patientId,split,target``, stratified
    by Target); return the manifest."""
    df = discover(raw_dir)
    with io.atomic_path(manifest_out) as tmp:
        df.to_csv(tmp, index=False)
    ids = df["patientId"].tolist()
    assignment = splits.assign_splits(ids, fractions, seed, strata=df["target"].astype(str).tolist())
    target = dict(zip(ids, df["target"]))
    split = splits.write_split(
        split_out, assignment, extra={"target": [target[i] for i in assignment]}, id_col="patientId"
    )
    counts = split.groupby(["split", "target"]).size().unstack(fill_value=0)
    log.info(
        "%d patients (%d with opacity); split (rows: split, columns: Target):\n%s",
        len(df),
        int(df["target"].sum()),
        counts.to_string(),
    )
    return df
