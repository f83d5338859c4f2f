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
    attrs: size, window_mode, clahe settings, meta_features, age_bins, decisions (JSON counts)
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

log = logging.getLogger(__name__)

WINDOW_MODES = ("header", "fixed", "percentile")


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


def _one(args) -> tuple[np.ndarray | None, dict[str, Any]]:
    path, spacing, cfg = args
    import pydicom

    ds = pydicom.dcmread(path)
    try:
        img = dcm.decode_pixels(ds)
    except dcm.UnsupportedPixels as e:
        return None, {"exclusion": str(e)}
    return preprocess_pixels(img, dcm.text(ds, "PhotometricInterpretation"), spacing, dcm.header_window(ds), cfg)


def age_bin_names(edges: Sequence[float]) -> list[str]:
    e = [int(x) if float(x).is_integer() else x for x in edges]
    return [f"age_lt{e[0]}"] + [f"age_{a}_{b}" for a, b in zip(e[:-1], e[1:])] + [f"age_ge{e[-1]}", "age_unknown"]


def metadata_features(table: pd.DataFrame, age_bins: Sequence[float]) -> tuple[np.ndarray, list[str]]:
    """(N, F) float32 features from the metadata table: age bins one-hot (with an "unknown" bin for
    a missing/invalid age), sex one-hot (M, F; both 0 when unknown), view position one-hot (AP, PA;
    both 0 otherwise). All in {0, 1}, so no further scaling is needed."""
    edges = np.asarray(age_bins, dtype=float)
    names = age_bin_names(age_bins) + ["sex_M", "sex_F", "view_AP", "view_PA"]
    n_age = len(edges) + 2
    x = np.zeros((len(table), len(names)), np.float32)
    age = pd.to_numeric(table["age_years"], errors="coerce").to_numpy(dtype=float)
    known = np.isfinite(age)
    x[np.flatnonzero(known), np.searchsorted(edges, age[known], side="right")] = 1
    x[np.flatnonzero(~known), n_age - 1] = 1
    for j, (col, val) in enumerate([("sex", "M"), ("sex", "F"), ("view_position", "AP"), ("view_position", "PA")]):
        x[:, n_age + j] = table[col].astype(str).to_numpy() == val
    return x, names


def write_hdf5(
    table: pd.DataFrame, manifest: pd.DataFrame, out: str | os.PathLike, cfg: PreprocessConfig, threads: int = 1
) -> dict[str, Any]:
    """Preprocess every usable patient of the metadata ``table`` (file paths from ``manifest``) into
    ``out`` (layout in the module doc); returns a summary. Written to a temporary file renamed into
    place at the end."""
    import h5py

    usable = table[table["usable"]].reset_index(drop=True)
    paths = dict(zip(manifest["patientId"], manifest["dicom"]))
    feats, names = metadata_features(usable, cfg.age_bins)
    jobs = []
    for r in usable.itertuples(index=False):
        sp = (r.pixel_spacing_row, r.pixel_spacing_col)
        jobs.append((paths[r.patientId], sp if all(np.isfinite(sp)) else None, cfg))
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
        for i, (img, info) in enumerate(_imap(_one, jobs, threads)):
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
            }
        )
    summary = {"n_images": k, "n_excluded_metadata": int((~table["usable"]).sum()), "decisions": dict(counts)}
    log.info("wrote %d images of %dx%d to %s; %s", k, size, size, out, dict(counts))
    return summary


def _imap(fn, jobs, threads):
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
