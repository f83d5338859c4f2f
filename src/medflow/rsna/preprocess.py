"""RSNA preprocessing: each usable DICOM -> one (size, size) uint8 image in one HDF5 file, with the
metadata features of its patient.

Per image, in this order: modality LUT (decode), windowing to [0, 1] (the header's window, a
configured level/width, or image percentiles), MONOCHROME1 inversion (so bright is dense for every
image), CLAHE, resampling to square pixels from PixelSpacing, padding to a square and resizing to
``size``. Images are processed in a process pool and written one by one, so memory stays at a few
images whatever the data set's size (the real set: 26,684 images of 1024 x 1024).

HDF5 layout::

    image       uint8   (N, size, size)   one chunk per image
    patient_id  str     (N,)              the data set's anonymous patientId
    target      uint8   (N,)
    meta        float32 (N, F)            features, names in attrs["meta_features"]
    spacing_mm  float32 (N,)              mm per output pixel (square after resampling)
    attrs: size, window_mode, clahe settings, meta_features, age_bins, decisions (JSON counts),
           preprocessing (JSON: ``preprocessing_record``, what the train stage records in its checkpoint)

A new DICOM (prediction) goes through the same functions in one call, ``prepare_dicom``: the metadata
stage's ``record_of``, then ``metadata_features`` and ``preprocess_dataset`` with the parameters a
checkpoint recorded (``config_from_record``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medflow import io
from medflow.errors import InputError
from medflow.rsna import dicom as dcm
from medflow.rsna.metadata import MAX_AGE_YEARS, record_of

log = logging.getLogger(__name__)

WINDOW_MODES = ("header", "fixed", "percentile")
# The metadata feature encoding: one-hot categories (anything else: all 0) and age bins with an unknown bin.
SEX_CATEGORIES = ("M", "F")
VIEW_CATEGORIES = ("AP", "PA")
FEATURE_SCALING = "none: every feature one-hot in {0, 1}"
# What resample_isotropic and pad_resize do (no parameters): recorded so a checkpoint names it.
RESAMPLING = "isotropic at the finer PixelSpacing (square pixels without one), zero-pad to a square, bilinear resize"


@dataclass
class PreprocessConfig:
    size: int = 64
    window_mode: str = "header"  # header: the file's window, percentile window when it has none
    level: float = 0.0  # fixed window, in stored units after the modality LUT
    width: float = 0.0
    percentiles: tuple[float, float] = (0.5, 99.5)
    clahe: bool = True
    clip_limit: float = 0.01  # scikit-image's normalised clip limit (0-1)
    tiles: tuple[int, int] = (8, 8)  # CLAHE tile grid (rows, columns), as OpenCV's tileGridSize
    age_bins: Sequence[float] = field(default_factory=lambda: [20, 40, 60, 80])

    def __post_init__(self):
        if self.window_mode not in WINDOW_MODES:
            raise ValueError(f"window mode must be one of {WINDOW_MODES}, got {self.window_mode!r}")
        if self.window_mode == "fixed" and self.width < 1:
            raise ValueError("a fixed window needs width >= 1")
        self.percentiles = tuple(float(p) for p in self.percentiles)
        self.tiles = tuple(int(t) for t in self.tiles)
        self.age_bins = [float(b) for b in self.age_bins]

    @classmethod
    def from_params(cls, p: Mapping[str, Any]) -> PreprocessConfig:
        """From the rule's params (config ``rsna.preprocess``)."""
        w, c = p["window"], p["clahe"]
        return cls(
            size=p["size"],
            window_mode=w["mode"],
            level=w.get("level", 0.0),
            width=w.get("width", 0.0),
            percentiles=w.get("percentiles", (0.5, 99.5)),
            clahe=c["enabled"],
            clip_limit=c["clip_limit"],
            tiles=c["tiles"],
            age_bins=p["age_bins"],
        )


def preprocessing_record(cfg: PreprocessConfig, max_age_years: float) -> dict[str, Any]:
    """Every parameter that shapes the model's inputs, as plain data: the image steps (size, window, CLAHE,
    resampling) and the metadata feature encoding (``max_age_years`` of the metadata stage: older ages
    count as unknown; the age bins, the categories, the feature names and their scaling). Written into the
    HDF5 and recorded by the train stage in the checkpoint's ``meta["preprocessing"]``."""
    return {
        "size": int(cfg.size),
        "window": {
            "mode": cfg.window_mode,
            "level": float(cfg.level),
            "width": float(cfg.width),
            "percentiles": [float(p) for p in cfg.percentiles],
        },
        "clahe": {
            "enabled": bool(cfg.clahe),
            "clip_limit": float(cfg.clip_limit),
            "tiles": [int(t) for t in cfg.tiles],
        },
        "resampling": RESAMPLING,
        "metadata": {
            "max_age_years": float(max_age_years),
            "age_bins": [float(b) for b in cfg.age_bins],
            "sex": list(SEX_CATEGORIES),
            "view": list(VIEW_CATEGORIES),
            "features": feature_names(cfg.age_bins),
            "scaling": FEATURE_SCALING,
        },
    }


def config_from_record(record: Mapping[str, Any] | None, source: str | os.PathLike) -> tuple[PreprocessConfig, float]:
    """(PreprocessConfig, max_age_years) from a ``preprocessing_record`` (a checkpoint's), or InputError(source)
    when it is missing, incomplete, or names an encoding or resampling that this code does not implement."""
    if not isinstance(record, Mapping):
        raise InputError(source, "records no preprocessing parameters (meta.preprocessing): retrain it")
    try:
        w, c, m = record["window"], record["clahe"], record["metadata"]
        cfg = PreprocessConfig(
            size=int(record["size"]),
            window_mode=w["mode"],
            level=float(w["level"]),
            width=float(w["width"]),
            percentiles=w["percentiles"],
            clahe=bool(c["enabled"]),
            clip_limit=float(c["clip_limit"]),
            tiles=c["tiles"],
            age_bins=m["age_bins"],
        )
        max_age = float(m["max_age_years"])
        code = {
            "resampling": (record["resampling"], RESAMPLING),
            "metadata.sex": (list(m["sex"]), list(SEX_CATEGORIES)),
            "metadata.view": (list(m["view"]), list(VIEW_CATEGORIES)),
            "metadata.scaling": (m["scaling"], FEATURE_SCALING),
            "metadata.features": (list(m["features"]), feature_names(cfg.age_bins)),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(
            source, f"incomplete or invalid preprocessing record ({type(e).__name__}: {e}): retrain it"
        ) from None
    differ = [f"{k}: checkpoint {a!r}, this code {b!r}" for k, (a, b) in code.items() if a != b]
    if differ:
        raise InputError(source, "preprocessing this code cannot reproduce: " + "; ".join(differ))
    return cfg, max_age


def window(img: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear VOI window (PS3.3 C.11.2.1.2.1) mapped to [0, 1]: float32, same shape."""
    width = max(float(width), 1.0)
    if width == 1:  # the standard's degenerate case: a threshold
        return (img > center - 0.5).astype(np.float32)
    return np.clip((img - (center - 0.5)) / (width - 1) + 0.5, 0, 1).astype(np.float32)


def percentile_window(img: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """(center, width) spanning the ``lo``-``hi`` percentiles of ``img``."""
    a, b = np.percentile(img, [lo, hi])
    if b <= a:  # a flat image: any window gives a constant
        b = a + 1
    return float((a + b) / 2), float(b - a)


def choose_window(
    img: np.ndarray, header: tuple[float, float] | None, cfg: PreprocessConfig
) -> tuple[float, float, str]:
    """(center, width, source) per ``cfg.window_mode``; source is what was used."""
    if cfg.window_mode == "fixed":
        return cfg.level, cfg.width, "fixed"
    if cfg.window_mode == "header" and header is not None:
        return header[0], header[1], "header"
    c, w = percentile_window(img, *cfg.percentiles)
    return c, w, "percentile"


def invert_monochrome1(img01: np.ndarray, photometric: str) -> np.ndarray:
    """MONOCHROME1 shows low values bright: invert a [0, 1] image so that bright means dense, as in
    MONOCHROME2."""
    return (1.0 - img01).astype(np.float32) if photometric == "MONOCHROME1" else img01


def clahe(img01: np.ndarray, clip_limit: float, tiles: tuple[int, int]) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a [0, 1] image with a (rows, cols) tile
    grid; float32 [0, 1], same shape."""
    from skimage import exposure

    kernel = (max(2, math.ceil(img01.shape[0] / tiles[0])), max(2, math.ceil(img01.shape[1] / tiles[1])))
    return exposure.equalize_adapthist(img01, kernel_size=kernel, clip_limit=clip_limit, nbins=256).astype(np.float32)


def _resize(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float image to (rows, cols); Pillow widens the kernel when shrinking,
    which anti-aliases."""
    from PIL import Image

    if img.shape == tuple(shape):
        return img.astype(np.float32)
    return np.asarray(
        Image.fromarray(img.astype(np.float32)).resize((shape[1], shape[0]), Image.Resampling.BILINEAR),
        dtype=np.float32,
    )


def resample_isotropic(img: np.ndarray, spacing: tuple[float, float] | None) -> tuple[np.ndarray, float | None]:
    """Resample (rows, cols) with (row, col) spacing in mm to square pixels at the finer of the two
    spacings; returns (image, spacing). Without a spacing the pixels are taken as square."""
    if spacing is None:
        return img, None
    sr, sc = spacing
    s = min(sr, sc)
    shape = (max(1, round(img.shape[0] * sr / s)), max(1, round(img.shape[1] * sc / s)))
    return _resize(img, shape), s


def pad_resize(img: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Pad (with 0, the background) to a centred square, then resize to (size, size); returns the
    image and the zoom factor (output pixels per input pixel)."""
    h, w = img.shape
    n = max(h, w)
    if h != w:
        out = np.zeros((n, n), np.float32)
        out[(n - h) // 2 : (n - h) // 2 + h, (n - w) // 2 : (n - w) // 2 + w] = img
        img = out
    return _resize(img, (size, size)), size / n


def preprocess_pixels(
    img: np.ndarray,
    photometric: str,
    spacing: tuple[float, float] | None,
    header: tuple[float, float] | None,
    cfg: PreprocessConfig,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One decoded image (rows, cols) in stored units -> uint8 (size, size) and what was done."""
    c, w, source = choose_window(img, header, cfg)
    x = invert_monochrome1(window(img, c, w), photometric)
    if cfg.clahe:
        x = clahe(x, cfg.clip_limit, cfg.tiles)
    x, s = resample_isotropic(x, spacing)
    x, zoom = pad_resize(x, cfg.size)
    out = np.clip(np.round(x * 255), 0, 255).astype(np.uint8)
    return out, {"window": source, "spacing_mm": (s / zoom) if s else float("nan")}


def spacing_of(rec: Mapping[str, Any]) -> tuple[float, float] | None:
    """(row, col) PixelSpacing in mm of a metadata row, or None when it has none (square pixels assumed)."""
    sp = (float(rec["pixel_spacing_row"]), float(rec["pixel_spacing_col"]))
    return sp if all(np.isfinite(sp)) else None


def preprocess_dataset(
    ds, spacing: tuple[float, float] | None, cfg: PreprocessConfig, pixels: np.ndarray | None = None
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """One open DICOM -> uint8 (size, size) and what was done (``preprocess_pixels``), or (None,
    {"exclusion": why}) when its pixels cannot be decoded. ``pixels``: the image already decoded from ``ds``
    (``dicom.decode_pixels``), so a caller that has it does not decode twice."""
    if pixels is None:
        try:
            pixels = dcm.decode_pixels(ds)
        except dcm.UnsupportedPixels as e:
            return None, {"exclusion": str(e)}
    return preprocess_pixels(pixels, dcm.text(ds, "PhotometricInterpretation"), spacing, dcm.header_window(ds), cfg)


def _one(args) -> tuple[np.ndarray | None, dict[str, Any]]:
    path, spacing, cfg = args
    import pydicom

    return preprocess_dataset(pydicom.dcmread(path), spacing, cfg)


@dataclass(frozen=True)
class Prepared:
    """One DICOM as the model sees it: ``image`` uint8 (size, size) and ``features`` float32 (F,), or both
    None and ``exclusion`` saying why its pixels cannot be used."""

    image: np.ndarray | None
    features: np.ndarray | None
    exclusion: str = ""


def prepare_dicom(ds, patient_id: str, cfg: PreprocessConfig, max_age_years: float) -> Prepared:
    """One open DICOM through the metadata stage (``metadata.record_of``) and this stage
    (``metadata_features``, ``preprocess_dataset``): the image and features that training and evaluation
    read from the HDF5 for a file like it, made by the same functions with the same parameters."""
    rec, pixels = record_of(ds, patient_id, max_age_years)
    if pixels is None:
        return Prepared(None, None, rec["exclusion"])
    feats, _ = metadata_features(pd.DataFrame.from_records([rec]), cfg.age_bins)
    image, _ = preprocess_dataset(ds, spacing_of(rec), cfg, pixels=pixels)
    return Prepared(image, feats[0], "")


def age_bin_names(edges: Sequence[float]) -> list[str]:
    e = [int(x) if float(x).is_integer() else x for x in edges]
    return [f"age_lt{e[0]}"] + [f"age_{a}_{b}" for a, b in zip(e[:-1], e[1:])] + [f"age_ge{e[-1]}", "age_unknown"]


def _categories() -> list[tuple[str, str]]:
    return [("sex", v) for v in SEX_CATEGORIES] + [("view_position", v) for v in VIEW_CATEGORIES]


def feature_names(age_bins: Sequence[float]) -> list[str]:
    """Names of the ``metadata_features`` columns, in order."""
    return age_bin_names(age_bins) + [f"{'view' if col == 'view_position' else col}_{v}" for col, v in _categories()]


def metadata_features(table: pd.DataFrame, age_bins: Sequence[float]) -> tuple[np.ndarray, list[str]]:
    """(N, F) float32 features from the metadata table: age bins one-hot (with an "unknown" bin for
    a missing/invalid age), sex one-hot (M, F; both 0 when unknown), view position one-hot (AP, PA;
    both 0 otherwise). All in {0, 1}, so no further scaling is needed."""
    edges = np.asarray(age_bins, dtype=float)
    names = feature_names(age_bins)
    n_age = len(edges) + 2
    x = np.zeros((len(table), len(names)), np.float32)
    age = pd.to_numeric(table["age_years"], errors="coerce").to_numpy(dtype=float)
    known = np.isfinite(age)
    x[np.flatnonzero(known), np.searchsorted(edges, age[known], side="right")] = 1
    x[np.flatnonzero(~known), n_age - 1] = 1
    for j, (col, val) in enumerate(_categories()):
        x[:, n_age + j] = table[col].astype(str).to_numpy() == val
    return x, names


def write_hdf5(
    table: pd.DataFrame,
    manifest: pd.DataFrame,
    out: str | os.PathLike,
    cfg: PreprocessConfig,
    threads: int = 1,
    *,
    max_age_years: float = MAX_AGE_YEARS,
) -> dict[str, Any]:
    """Preprocess every usable patient of the metadata ``table`` (file paths from ``manifest``) into
    ``out`` (layout in the module doc); returns a summary. Written to a temporary file renamed into
    place at the end. ``max_age_years``: the metadata stage's (``table`` was built with it), recorded."""
    import h5py

    usable = table[table["usable"]].reset_index(drop=True)
    paths = dict(zip(manifest["patientId"], manifest["dicom"]))
    feats, names = metadata_features(usable, cfg.age_bins)
    jobs = [(paths[r["patientId"]], spacing_of(r), cfg) for r in usable.to_dict("records")]
    n, size = len(jobs), cfg.size
    if n == 0:
        raise InputError(out, "no usable image to preprocess (see the metadata stage's decisions)")
    counts: Counter = Counter()
    with io.atomic_path(out) as tmp, h5py.File(tmp, "w") as h5:
        image = h5.create_dataset(
            "image", (0, size, size), np.uint8, maxshape=(None, size, size), chunks=(1, size, size)
        )
        ids = h5.create_dataset("patient_id", (0,), h5py.string_dtype(), maxshape=(None,), chunks=(1024,))
        target = h5.create_dataset("target", (0,), np.uint8, maxshape=(None,), chunks=(1024,))
        meta = h5.create_dataset(
            "meta", (0, len(names)), np.float32, maxshape=(None, len(names)), chunks=(1024, len(names))
        )
        spacing = h5.create_dataset("spacing_mm", (0,), np.float32, maxshape=(None,), chunks=(1024,))
        k = 0
        for i, (img, info) in enumerate(parallel_map(_one, jobs, threads)):
            pid = usable.at[i, "patientId"]
            if img is None:  # the metadata stage decoded it; a changed file or decoder can still fail
                log.warning("%s: excluded at preprocessing: %s", pid, info["exclusion"])
                counts["excluded at preprocessing"] += 1
                continue
            counts[f"window from {info['window']}"] += 1
            for ds in (image, ids, target, meta, spacing):
                ds.resize(k + 1, axis=0)
            image[k] = img
            ids[k] = pid
            target[k] = int(usable.at[i, "target"])
            meta[k] = feats[i]
            spacing[k] = info["spacing_mm"]
            k += 1
            if (i + 1) % 1000 == 0:
                log.info("preprocessed %d/%d images", i + 1, n)
        h5.attrs.update(
            {
                "size": size,
                "window_mode": cfg.window_mode,
                "clahe": bool(cfg.clahe),
                "clip_limit": cfg.clip_limit,
                "tiles": list(cfg.tiles),
                "age_bins": list(cfg.age_bins),
                "meta_features": json.dumps(names),
                "decisions": json.dumps(dict(counts)),
                "config": json.dumps(asdict(cfg), default=list),
                "preprocessing": json.dumps(preprocessing_record(cfg, max_age_years)),
            }
        )
    summary = {"n_images": k, "n_excluded_metadata": int((~table["usable"]).sum()), "decisions": dict(counts)}
    log.info("wrote %d images of %dx%d to %s; %s", k, size, size, out, dict(counts))
    return summary


def parallel_map(fn, jobs, threads):
    """Results in order, from a process pool when ``threads`` > 1; a generator, so at most a few
    chunks of images are in memory at once."""
    if threads > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(threads) as pool:
            yield from pool.imap(fn, jobs, chunksize=max(1, min(16, len(jobs) // (4 * threads))))
    else:
        yield from map(fn, jobs)


def read_features(h5_path: str | os.PathLike) -> list[str]:
    import h5py

    with h5py.File(h5_path, "r") as h5:
        return json.loads(h5.attrs["meta_features"])
