"""Patch sampling from a stacked case: the tutorial's acceptance rule without its rejection loop.

The tutorial draws a random origin, one-hot encodes the label patch (``to_categorical``) and keeps
the patch if its background fraction (label 0) is below ``background_threshold``, up to 1000 tries.
Here the foreground (label > 0) count of *every* candidate origin is computed at once from a
summed-area table of the foreground's bounding box, and N origins are drawn without replacement
from the accepted ones. Uniform proposals followed by rejection are uniform over the accepted
origins, so this samples from the same distribution as the tutorial, only without duplicates, and it
finds a patch whenever one exists. Deterministic from ``(seed, case id)``.

Output ``results/brats/patches/{case}.h5``: ``image`` float32 (N, 4, pz, py, px) standardised per
channel and per axial slice (``standardize``); ``label`` uint8 (N, 3, pz, py, px), one-hot of the
stored labels 1 (NCR/NET), 2 (ED), 3 (ET = BraTS 4), no background channel; ``origins`` int64
(N, 3) (z, y, x) in the stacked (trimmed) volume; attributes ``case_id``, ``patch_size_zyx``,
``n_patches`` (found), ``n_requested``, ``n_accepted_origins``, ``background_threshold``, ``seed``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from medflow.errors import InputError

log = logging.getLogger(__name__)

STORED_LABELS = (1, 2, 3)  # one-hot channels: NCR/NET, ED, ET (BraTS 4 stored as 3)


@dataclass
class PatchParams:
    """``brats.patches`` in config. ``patch_size`` is (Z, Y, X) voxels."""

    patch_size: list[int] = field(default_factory=lambda: [16, 160, 160])
    n_patches: int = 8
    background_threshold: float = 0.95
    compression: str = "lzf"

    @classmethod
    def from_config(cls, cfg: dict) -> "PatchParams":
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})


def case_rng(seed: int, case: str) -> np.random.Generator:
    """The generator of one case: depends on the seed and the case id only."""
    return np.random.default_rng([int(seed), *case.encode()])


def standardize(image: np.ndarray) -> np.ndarray:
    """Per channel and per axial slice to mean 0 / sd 1 (population sd); a slice with sd 0 is only
    centred. ``image`` is (..., Z, Y, X), e.g. (4, Z, Y, X) or (N, 4, pz, py, px): every (Y, X) slice
    is standardised on its own, exactly as the tutorial's loop over channels and slices. float32 out."""
    image = np.asarray(image)
    out = np.empty(image.shape, np.float32)
    lead = image.shape[:-3]
    for idx in np.ndindex(*lead):  # one channel at a time keeps the float64 work small
        x = image[idx].astype(np.float64)
        centred = x - x.mean(axis=(-2, -1), keepdims=True)
        sd = centred.std(axis=(-2, -1), keepdims=True)
        out[idx] = centred / np.where(sd != 0, sd, 1.0)
    return out


def one_hot(label: np.ndarray) -> np.ndarray:
    """Stored label map (...) -> uint8 (3, ...) for labels 1, 2, 3 (no background channel)."""
    return np.stack([label == k for k in STORED_LABELS]).astype(np.uint8)


def _bbox(mask: np.ndarray) -> list[tuple[int, int]] | None:
    """[start, stop) of the True voxels along each axis, or None if there are none."""
    out = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=others))
        if idx.size == 0:
            return None
        out.append((int(idx[0]), int(idx[-1]) + 1))
    return out


def accepted_origins(label: np.ndarray, patch_size: Sequence[int], background_threshold: float) -> tuple[np.ndarray, int]:
    """Every origin (z, y, x) whose patch passes the tutorial's rule ``background fraction <
    background_threshold`` (background = label 0), as an (M, 3) int64 array in C order, and the
    number of candidate origins (what uniform proposals would draw from).

    Cost: one pass over the label plus a summed-area table of the foreground's bounding box.
    """
    label = np.asarray(label)
    patch = tuple(int(p) for p in patch_size)
    n_origins = [s - p + 1 for s, p in zip(label.shape, patch)]
    if min(n_origins) <= 0:
        return np.zeros((0, 3), np.int64), 0
    n_candidates = int(np.prod(n_origins))
    fg = label != 0
    box = _bbox(fg)
    volume = int(np.prod(patch))
    if box is None:
        return np.zeros((0, 3), np.int64), n_candidates
    crop = fg[tuple(slice(a, b) for a, b in box)].astype(np.int32)
    sat = np.zeros(tuple(s + 1 for s in crop.shape), np.int64)  # summed-area table, zero-padded
    sat[1:, 1:, 1:] = crop.cumsum(0).cumsum(1).cumsum(2)
    # Origins whose patch can touch the foreground box; all others hold only background.
    first = [max(0, a - p + 1) for (a, _), p in zip(box, patch)]
    last = [min(n - 1, b - 1) for (_, b), n in zip(box, n_origins)]
    lo, hi = [], []
    for (a, b), p, f, l in zip(box, patch, first, last):
        o = np.arange(f, l + 1)
        lo.append(np.clip(o - a, 0, b - a))
        hi.append(np.clip(o + p - a, 0, b - a))
    count = np.zeros((len(lo[0]), len(lo[1]), len(lo[2])), np.int64)
    for corner in np.ndindex(2, 2, 2):  # inclusion-exclusion over the 8 corners of each box
        ix = np.ix_(*(hi[d] if c else lo[d] for d, c in enumerate(corner)))
        count += sat[ix] if (3 - sum(corner)) % 2 == 0 else -sat[ix]
    background = (volume - count) / volume  # the tutorial's sum(one_hot[..., 0]) / patch volume
    accepted = np.argwhere(background < background_threshold).astype(np.int64)
    return accepted + np.array(first, np.int64), n_candidates


def sample_origins(label: np.ndarray, patch_size: Sequence[int], n: int, background_threshold: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Up to ``n`` distinct accepted origins (k, 3) (z, y, x), drawn uniformly, and how many were acceptable."""
    accepted, _ = accepted_origins(label, patch_size, background_threshold)
    k = min(int(n), len(accepted))
    pick = rng.choice(len(accepted), size=k, replace=False) if k else np.zeros(0, np.int64)
    return accepted[pick], len(accepted)


def extract(image, label: np.ndarray, origin: Sequence[int], patch_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(image (4, pz, py, px) as stored, one-hot label (3, pz, py, px)) at ``origin``. ``image`` may be
    an h5py dataset: only the chunks under the patch are read."""
    box = tuple(slice(int(o), int(o) + int(p)) for o, p in zip(origin, patch_size))
    return np.asarray(image[(slice(None), *box)], dtype=np.float32), one_hot(label[box])


def sample_case(stack_path: str | os.PathLike, out_path: str | os.PathLike, params: PatchParams, seed: int) -> int:
    """Sample, standardise and write the patches of one stacked case (atomically); returns N found.

    A case that cannot supply a single patch (patch larger than the volume, or no patch below the
    background threshold) is written with N = 0 and a warning saying why, so the other cases and the
    steps that read patch files go on.
    """
    import h5py

    from medflow import io

    patch = [int(p) for p in params.patch_size]
    try:
        src = h5py.File(stack_path, "r")
    except OSError as exc:
        raise InputError(stack_path, f"cannot open as HDF5 ({exc})") from None
    with src:
        if "image" not in src or "label" not in src:
            raise InputError(stack_path, "needs 'image' and 'label' datasets")
        case = src.attrs.get("case_id", os.path.splitext(os.path.basename(str(stack_path)))[0])
        case = case.decode() if isinstance(case, bytes) else str(case)
        label = src["label"][()]
        image = src["image"]
        if image.shape[1:] != label.shape:
            raise InputError(stack_path, f"image {image.shape} and label {label.shape} do not match")
        origins, n_accepted = sample_origins(label, patch, params.n_patches, params.background_threshold, case_rng(seed, case))
        k = len(origins)
        if k == 0:
            why = (f"patch {patch} (Z, Y, X) is larger than the volume {list(label.shape)}"
                   if any(p > s for p, s in zip(patch, label.shape))
                   else f"no patch has a background fraction below {params.background_threshold}")
            log.warning("%s: no patch could be sampled: %s; writing 0 patches", case, why)
        elif k < params.n_patches:
            log.warning("%s: only %d of %d requested patches are possible", case, k, params.n_patches)
        with io.atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
            kw = _h5_kwargs(params.compression, k, patch)
            img_ds = f.create_dataset("image", shape=(k, 4, *patch), dtype=np.float32, **kw(4))
            lab_ds = f.create_dataset("label", shape=(k, len(STORED_LABELS), *patch), dtype=np.uint8, **kw(len(STORED_LABELS)))
            for i, origin in enumerate(origins):  # one patch in memory at a time
                x, y = extract(image, label, origin, patch)
                img_ds[i] = standardize(x)
                lab_ds[i] = y
            f.create_dataset("origins", data=origins.astype(np.int64).reshape(k, 3))
            f.attrs.update({"case_id": case, "patch_size_zyx": np.array(patch, np.int64), "n_patches": k,
                            "n_requested": int(params.n_patches), "n_accepted_origins": int(n_accepted),
                            "background_threshold": float(params.background_threshold), "seed": int(seed)})
    log.info("%s: %d patches of %s (Z, Y, X) from %d acceptable origins", case, k, patch, n_accepted)
    return k


def _h5_kwargs(compression: str, n: int, patch: Sequence[int]):
    """Dataset options: one patch per chunk (a patch is read whole); empty datasets stay contiguous."""
    def kw(channels: int) -> dict:
        if n == 0:
            return {}
        out: dict = {"chunks": (1, channels, *patch)}
        if compression == "gzip":
            out.update(compression="gzip", compression_opts=4, shuffle=True)
        elif compression == "lzf":
            out.update(compression="lzf", shuffle=True)
        elif compression != "none":
            raise ValueError(f"unknown compression {compression!r}: gzip, lzf or none")
        return out
    return kw
