"""Discover and validate the Kermany OCT2017 download; write its manifest and split file.

Layout: ``<root>/{train,val,test}/{CNV,DME,DRUSEN,NORMAL}/<CLASS>-<patient>-<n>.jpeg``. Hidden files
(``.DS_Store``, as in some copies of the download) are skipped; anything else that is not an image of
its folder's class, named by the pattern, is an :class:`InputError` naming the file: every such problem
is reported, together, before the job stops.

The split is the data set's folders, or (``val_source="train"``) a validation set carved out of
``train`` by patient, because the real ``val`` folder has only 8 images per class.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from medflow import io
from medflow.errors import InputError, Problems
from medflow.ingest.splits import assign_splits

log = logging.getLogger(__name__)

CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")
FOLDERS = ("train", "val", "test")
NAME = re.compile(r"^(?P<cls>[A-Z]+)-(?P<patient>\d+)-(?P<n>\d+)\.jpe?g$", re.IGNORECASE)


def discover(root: str | os.PathLike, check_pixels: bool = True) -> pd.DataFrame:
    """One row per image: id (file stem), path (relative to ``root``), folder, label, patient, n,
    width, height (pixels), mode (PIL mode). Sorted by folder, label, id.

    ``check_pixels`` decodes every image (catches truncated files),
    otherwise only the header is read. Every bad folder, file name and image is reported, together.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "OCT2017 folder not found (set oct.raw_dir to the folder holding train/, val/, test/)")
    rows = []
    with Problems() as problems:
        for folder in FOLDERS:
            for cls in CLASSES:
                d = root / folder / cls
                if not d.is_dir():
                    problems.add(d, f"class folder missing (expected {folder}/{{{','.join(CLASSES)}}})")
                    continue
                entries = sorted((e for e in os.scandir(d) if not e.name.startswith(".")), key=lambda e: e.name)
                if not entries:
                    problems.add(d, "class folder holds no images")
                for entry in entries:
                    path = Path(entry.path)
                    m = NAME.match(entry.name)
                    if not entry.is_file() or m is None:
                        problems.add(path, "file name does not match <CLASS>-<patient>-<n>.jpeg")
                        continue
                    ok = m["cls"].upper() == cls
                    if not ok:
                        problems.add(path, f"file name says class {m['cls']} but it lies in the {cls} folder")
                    image = problems.check(_check_image, path, check_pixels)
                    if image is None or not ok:
                        continue
                    width, height, mode = image
                    rows.append(
                        {
                            "id": path.stem,
                            "path": f"{folder}/{cls}/{entry.name}",
                            "folder": folder,
                            "label": cls,
                            "patient": m["patient"],
                            "n": int(m["n"]),
                            "width": width,
                            "height": height,
                            "mode": mode,
                        }
                    )
        df = pd.DataFrame(rows, columns=["id", "path", "folder", "label", "patient", "n", "width", "height", "mode"])
        for _, same in df[df["id"].duplicated(keep=False)].groupby("id", sort=False):
            others = ", ".join(same["path"].iloc[1:])
            problems.add(
                root / same["path"].iloc[0], f"the same image name occurs in more than one folder (also {others})"
            )
    return df


def _check_image(path: Path, check_pixels: bool) -> tuple[int, int, str]:
    try:
        with Image.open(path) as im:
            if im.format != "JPEG":
                raise InputError(path, f"not a JPEG image (PIL reads it as {im.format})")
            size, mode = im.size, im.mode
            if check_pixels:
                im.load()
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(path, f"unreadable image ({exc.__class__.__name__}: {exc})") from None
    if mode not in ("L", "RGB"):
        raise InputError(path, f"unexpected image mode {mode} (greyscale L or RGB expected)")
    return int(size[0]), int(size[1]), mode


def assign(df: pd.DataFrame, val_source: str, val_fraction: float, seed: int) -> pd.Series:
    """Split of each image: the folder, or with ``val_source="train"`` a patient-level validation
    set of ``val_fraction`` of the train patients (stratified by each patient's most common class)
    replaces the data set's ``val`` folder, whose images are then not used."""
    if val_source == "folder":
        return df["folder"].copy()
    if val_source != "train":
        raise ValueError(f"val_source must be 'folder' or 'train', not {val_source!r}")
    train = df[df["folder"] == "train"]
    strata = train.groupby("patient")["label"].agg(lambda s: s.value_counts().sort_index().idxmax())
    carved = assign_splits(
        list(strata.index), {"train": 1 - val_fraction, "val": val_fraction}, seed, list(strata.values)
    )
    split = df["folder"].copy()
    split[df["folder"] == "val"] = "unused"
    is_train = df["folder"] == "train"
    split[is_train] = df.loc[is_train, "patient"].map(carved)
    return split


def ingest(
    root: str | os.PathLike,
    manifest_path,
    split_path,
    *,
    val_source: str,
    val_fraction: float,
    seed: int,
    check_pixels: bool = True,
) -> pd.DataFrame:
    """Write ``manifest.csv`` (every image and its properties) and ``split.csv``
    (id, split, label, patient, path: what training and evaluation read). Returns the split table."""
    df = discover(root, check_pixels=check_pixels)
    df["split"] = assign(df, val_source, val_fraction, seed)
    _log_summary(df)
    with io.atomic_path(manifest_path) as tmp:
        df.drop(columns="split").to_csv(tmp, index=False)
    split = df[["id", "split", "label", "patient", "path"]]
    with io.atomic_path(split_path) as tmp:
        split.to_csv(tmp, index=False)
    return split


def _log_summary(df: pd.DataFrame) -> None:
    counts = df.groupby(["split", "label"]).size().unstack(fill_value=0)
    log.info("images per split and class:\n%s", counts.to_string())
    log.info(
        "image sizes (w x h): %s..%s x %s..%s",
        df["width"].min(),
        df["width"].max(),
        df["height"].min(),
        df["height"].max(),
    )
    used = df[df["split"] != "unused"]
    per_patient = used.groupby("patient")["split"].nunique()
    shared = int((per_patient > 1).sum())
    if shared:
        # The real download has patients whose images lie in several folders; say so, do not hide it.
        log.warning("%d patients have images in more than one split (the data set's own folders)", shared)


def read_split(path: str | os.PathLike) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str, "patient": str, "split": str, "label": str, "path": str})


def class_to_idx(classes: Sequence[str] | None = None) -> dict[str, int]:
    """ImageFolder's mapping: class names sorted, indexed from 0."""
    return {c: i for i, c in enumerate(sorted(classes or CLASSES))}
