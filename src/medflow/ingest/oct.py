"""Discover and validate the Kermany OCT2017 download; write its manifest and split file.

Layout: ``<root>/{train,val,test}/{CNV,DME,DRUSEN,NORMAL}/<CLASS>-<patient>-<n>.jpeg``. Hidden files
(``.DS_Store``, as in some copies of the download) are skipped; anything else that is not an image of
its folder's class, named by the pattern, is an :class:`InputError` naming the file: every such problem
is reported, together, before the job stops.

The split is the data set's folders, or (``val_source="train"``) a validation set carved out of
``train`` by patient, because the real ``val`` folder has only 8 images per class.

New scans to predict on (``discover_scans``) are any folder tree of JPEG/PNG files, checked by the same
image check; there a bad file is excluded with its reason (``excluded.csv``) instead of stopping the job.
Image ids name output files (CAM PNGs): they pass ``medflow.ingest.ids.check_id`` in both.
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
from medflow.ingest.ids import check_id, id_problem
from medflow.ingest.splits import assign_splits

log = logging.getLogger(__name__)

CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")
FOLDERS = ("train", "val", "test")
NAME = re.compile(r"^(?P<cls>[A-Z]+)-(?P<patient>\d+)-(?P<n>\d+)\.jpe?g$", re.IGNORECASE)
SCAN_SUFFIXES = (".jpeg", ".jpg", ".png")  # new scans to predict on (any case)
SCAN_FORMATS = ("JPEG", "PNG")
ID_SEP = "__"  # joins the folders and stem of a new scan's relative path into its id


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
                    # \d and IGNORECASE [A-Z] match non-ASCII digits and letters (e.g. U+0661, U+017F): the
                    # stem names CAM files, so it must be a safe id too.
                    ok = problems.check(_check_ids, path, m["patient"]) is not None and ok
                    image = problems.check(check_image, path, check_pixels)
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


def _check_ids(path: Path, patient: str) -> str:
    check_id(patient, path, "patient id")
    return check_id(path.stem, path, "image id")


def check_image(path: Path, check_pixels: bool = True, formats: Sequence[str] = ("JPEG",)) -> tuple[int, int, str]:
    """``(width, height, mode)`` of an image file PIL reads as one of ``formats``, in mode L or RGB (the two the
    loader turns into 3-channel RGB); ``check_pixels`` decodes it (a truncated file fails). Else ``InputError``."""
    try:
        with Image.open(path) as im:
            if im.format not in formats:
                kinds = " or ".join(formats)
                raise InputError(path, f"not a {kinds} image (PIL reads it as {im.format})")
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


def scan_files(root: str | os.PathLike) -> list[str]:
    """Every file under ``root`` (recursively, sorted, as ``root/<relative path>`` strings), hidden files and
    folders (``.DS_Store``, ``.git/``) left out: the files a prediction on ``root`` looks at. The workflow lists
    them when it builds the DAG, so a file added to or removed from the folder reruns the prediction."""
    root = Path(root)
    out = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [os.path.join(folder, n) for n in names if not n.startswith(".")]
    return sorted(out, key=lambda p: Path(p).relative_to(root).parts)


def predict_inputs(folder: str | os.PathLike, written_by_workflow: bool = False) -> list[str]:
    """The input files the workflow lists for a prediction on ``folder``: the folder itself when a rule writes it
    (the synthetic demo's) or when it does not exist (Snakemake then reports it missing), else every file in it
    (:func:`scan_files`): a scan added, removed or changed reruns the prediction, and nothing else does."""
    if written_by_workflow or not Path(folder).is_dir():
        return [str(folder)]
    return scan_files(folder)


def scan_id(relative: str | os.PathLike) -> str:
    """The id of a new scan: its path relative to the input folder without the extension, folders joined by
    ``__`` (``clinic_a/visit_1/scan_7.png`` -> ``clinic_a__visit_1__scan_7``), so equal file names in two
    folders stay apart. ``InputError`` when a folder or file name is not a safe id."""
    parts = Path(relative).parts
    for i, part in enumerate(parts):
        name = part if i < len(parts) - 1 else Path(part).stem
        problem = id_problem(name, "folder name" if i < len(parts) - 1 else "file name")
        if problem:
            raise InputError(relative, problem)
    return check_id(ID_SEP.join([*parts[:-1], Path(parts[-1]).stem]), relative, "scan id")


def discover_scans(root: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """New scans to predict on: every JPEG/PNG file in the tree under ``root`` (``scan_files``).

    Returns ``(scans, excluded)``: ``scans`` one row per usable image (``id`` from :func:`scan_id`, ``path``
    relative to ``root``, ``width``, ``height`` (pixels), ``mode``), sorted by path; ``excluded`` one row per
    other file (``file`` relative to ``root``, ``reason``): not a .jpeg/.jpg/.png file, unreadable or truncated
    (every image is decoded), not greyscale/RGB, an unsafe name, or an id another scan already has. Each is
    logged. ``InputError`` if ``root`` is not a folder or holds no usable image.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "folder of scans to predict on not found (predict.oct.input)")
    rows, excluded, seen = [], [], {}
    for file in scan_files(root):
        rel = Path(file).relative_to(root).as_posix()
        try:
            if Path(rel).suffix.lower() not in SCAN_SUFFIXES:
                raise InputError(rel, f"not a scan: only {', '.join(SCAN_SUFFIXES)} files are predicted")
            sid = scan_id(rel)
            if sid in seen:
                raise InputError(rel, f"its id {sid!r} is also that of {seen[sid]} (rename one)")
            width, height, mode = check_image(Path(file), True, SCAN_FORMATS)
        except InputError as exc:
            excluded.append({"file": rel, "reason": exc.problem})
            log.warning("excluded %s: %s", rel, exc.problem)
            continue
        seen[sid] = rel
        rows.append({"id": sid, "path": rel, "width": width, "height": height, "mode": mode})
    scans = pd.DataFrame(rows, columns=["id", "path", "width", "height", "mode"])
    excluded = pd.DataFrame(excluded, columns=["file", "reason"])
    if scans.empty:
        what = "the folder is empty"
        if len(excluded):
            first = excluded.iloc[0]
            what = f"{len(excluded)} file(s), none usable (first: {first['file']}: {first['reason']})"
        raise InputError(root, f"no JPEG/PNG scan to predict on: {what}")
    log.info("%d scans to predict on, %d files excluded", len(scans), len(excluded))
    return scans, excluded
