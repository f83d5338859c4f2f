"""RSNA pneumonia ingest: discover the download, validate it, write the manifest and the split.

Layout (the Kaggle "rsna-pneumonia-detection-challenge" download)::

    stage_2_train_images/<patientId>.dcm
    stage_2_train_labels.csv            patientId,x,y,width,height,Target   (a row per box)
    stage_2_detailed_class_info.csv     patientId,class

The patient id kept everywhere is the file's patientId, the data set's anonymous id; the DICOM
PatientID/PatientName tags are never read here. Anything malformed stops the job with an
:class:`InputError` naming the file (and the CSV line) and the problem.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from medflow import io
from medflow.errors import InputError
from medflow.ingest import splits

log = logging.getLogger(__name__)

IMAGES = "stage_2_train_images"
LABELS = "stage_2_train_labels.csv"
CLASSES = "stage_2_detailed_class_info.csv"
CLASS_NAMES = ("Lung Opacity", "No Lung Opacity / Not Normal", "Normal")
OPACITY = CLASS_NAMES[0]
BOX = ["x", "y", "width", "height"]
# What a DICOM must hold for the later stages to read its pixels.
REQUIRED_TAGS = ("Rows", "Columns", "PhotometricInterpretation", "BitsAllocated")


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(path, "missing")
    try:
        df = pd.read_csv(path, dtype={"patientId": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(path, f"not a readable CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)} (has {', '.join(map(str, df.columns))})")
    if df["patientId"].isna().any():
        line = int(np.flatnonzero(df["patientId"].isna())[0]) + 2
        raise InputError(path, f"line {line}: empty patientId")
    return df


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """stage_2_train_labels.csv -> one row per patient: ``patientId, target, n_boxes, boxes``
    (boxes: JSON list of [x, y, width, height] in pixels of the original image)."""
    path = Path(path)
    df = _read_csv(path, ["patientId", *BOX, "Target"])
    target = pd.to_numeric(df["Target"], errors="coerce")
    bad = ~target.isin([0, 1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(path, f"line {i + 2}: Target must be 0 or 1, got {df['Target'].iloc[i]!r}")
    boxes = df[BOX].apply(pd.to_numeric, errors="coerce")
    for i in np.flatnonzero((target == 1) & (boxes.isna().any(axis=1) | (boxes[["width", "height"]] <= 0).any(axis=1))):
        raise InputError(path, f"line {i + 2}: Target=1 needs a box with x, y and positive width, height")
    for i in np.flatnonzero((target == 0) & boxes.notna().any(axis=1)):
        raise InputError(path, f"line {i + 2}: Target=0 but a box is given")
    df = df.assign(Target=target.astype(int))
    mixed = df.groupby("patientId")["Target"].nunique()
    if (mixed > 1).any():
        raise InputError(path, f"patientId {mixed[mixed > 1].index[0]} has rows with both Target 0 and 1")
    rows = []
    for pid, g in df.groupby("patientId", sort=True):
        t = int(g["Target"].iloc[0])
        b = boxes.loc[g.index].values.tolist() if t else []
        rows.append({"patientId": pid, "target": t, "n_boxes": len(b), "boxes": json.dumps(b)})
    return pd.DataFrame(rows)


def read_classes(path: str | os.PathLike) -> pd.DataFrame:
    """stage_2_detailed_class_info.csv -> one row per patient: ``patientId, class``."""
    path = Path(path)
    df = _read_csv(path, ["patientId", "class"])
    unknown = ~df["class"].isin(CLASS_NAMES)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise InputError(path, f"line {i + 2}: unknown class {df['class'].iloc[i]!r} (expected one of {', '.join(CLASS_NAMES)})")
    n = df.groupby("patientId")["class"].nunique()
    if (n > 1).any():
        raise InputError(path, f"patientId {n[n > 1].index[0]} has more than one class")
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
        raise InputError(path, f"unreadable DICOM header ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    missing = [t for t in REQUIRED_TAGS if t not in ds]
    if missing:
        raise InputError(path, f"DICOM header lacks {', '.join(missing)}")


def discover(raw_dir: str | os.PathLike) -> pd.DataFrame:
    """Validate the download and return the manifest: one row per patient, sorted by patientId,
    with ``patientId, dicom, target, n_boxes, boxes, class``."""
    raw = Path(raw_dir)
    images = raw / IMAGES
    if not images.is_dir():
        raise InputError(images, "missing (expected the folder of <patientId>.dcm files)")
    labels = read_labels(raw / LABELS)
    classes = read_classes(raw / CLASSES)

    in_labels, in_classes = set(labels["patientId"]), set(classes["patientId"])
    if in_labels - in_classes:
        raise InputError(raw / CLASSES, f"no row for patientId {sorted(in_labels - in_classes)[0]} (listed in {LABELS})")
    if in_classes - in_labels:
        raise InputError(raw / LABELS, f"no row for patientId {sorted(in_classes - in_labels)[0]} (listed in {CLASSES})")
    df = labels.merge(classes, on="patientId", validate="one_to_one")
    wrong = (df["class"] == OPACITY) != (df["target"] == 1)
    if wrong.any():
        r = df[wrong].iloc[0]
        raise InputError(raw / CLASSES, f"patientId {r.patientId}: class {r['class']!r} contradicts Target={r.target} in {LABELS}")

    files = {p.stem: p for p in images.iterdir() if p.suffix.lower() == ".dcm"}
    extra = sorted(set(files) - in_labels)
    if extra:
        raise InputError(files[extra[0]], f"no row in {LABELS} for this patientId")
    for pid in df["patientId"]:
        if pid not in files:
            raise InputError(images / f"{pid}.dcm", f"missing (patientId listed in {LABELS})")
    for pid in df["patientId"]:
        check_header(files[pid])
    df.insert(1, "dicom", [str(files[pid]) for pid in df["patientId"]])
    return df


def ingest(raw_dir: str | os.PathLike, manifest_out: str | os.PathLike, split_out: str | os.PathLike,
           fractions: Mapping[str, float], seed: int) -> pd.DataFrame:
    """Write the manifest CSV and the patient-level split (``patientId,split,target``, stratified
    by Target); return the manifest."""
    df = discover(raw_dir)
    with io.atomic_path(manifest_out) as tmp:
        df.to_csv(tmp, index=False)
    ids = df["patientId"].tolist()
    assignment = splits.assign_splits(ids, fractions, seed, strata=df["target"].astype(str).tolist())
    target = dict(zip(ids, df["target"]))
    split = splits.write_split(split_out, assignment, extra={"target": [target[i] for i in assignment]}, id_col="patientId")
    counts = split.groupby(["split", "target"]).size().unstack(fill_value=0)
    log.info("%d patients (%d with opacity); split (rows: split, columns: Target):\n%s",
             len(df), int(df["target"].sum()), counts.to_string())
    return df
