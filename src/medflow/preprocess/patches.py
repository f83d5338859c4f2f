"""Patch sampling from a stacked case: the tutorial's acceptance rule without its rejection loop.

The tutorial draws a random origin, one-hot encodes the label patch (``to_categorical``) and keeps
the patch if its background fraction (label 0) is below ``background_threshold``, up to 1000 tries.
Here the foreground (label > 0) counts of all candidate origins are computed at once from a
summed-area table of the foreground's bounding box (``origin_table``), and N origins are drawn
without replacement from the acceptable ones. Uniform proposals followed by rejection are uniform over the accepted
origins, so this samples from the same distribution as the tutorial, only without duplicates, and it
finds a patch whenever one exists. Deterministic from ``(seed, case id)``.

Output ``results/brats/patches/{case}.h5``: ``image`` float32 (N, 4, pz, py, px) standardised per
channel and per axial slice (``standardise``); ``label`` uint8 (N, 3, pz, py, px), one-hot of the
stored labels 1 (NCR/NET), 2 (ED), 3 (ET = BraTS 4), no background channel; ``origins`` int64
(N, 3) (z, y, x) in the stacked (trimmed) volume; attributes ``case_id``, ``patch_size_zyx``,
``n_patches`` (found), ``n_requested``, ``n_accepted_origins``, ``background_threshold``, ``seed``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from medflow.errors import InputError
from medflow.segmentation.regions import STORED_LABELS  # one-hot channels: NCR/NET, ED, ET (4 stored as 3)

log = logging.getLogger(__name__)


@dataclass
class PatchParams:
    """``brats.patches`` in config. ``patch_size`` is (Z, Y, X) voxels."""

    patch_size: list[int] = field(default_factory=lambda: [16, 160, 160])
    n_patches: int = 8
    background_threshold: float = 0.95
    compression: str = "lzf"


def case_rng(seed: int, case: str) -> np.random.Generator:
    """The generator of one case: depends on the seed and the case id only."""
    return np.random.default_rng([int(seed), *case.encode()])


def standardise(image: np.ndarray) -> np.ndarray:
    """Per channel and per axial slice to mean 0 / sd 1 (population sd); a slice with sd 0 is only
    centred. ``image`` is (..., Z, Y, X), e.g. (4, Z, Y, X) or (N, 4, pz, py, px): every (Y, X) slice
    is standardised on its own, exactly the tutorial's loop over channels and slices, in float32 as
    the tutorial computed on float32 images. float32 out, same shape."""
    image = np.asarray(image)
    out = np.empty(image.shape, np.float32)
    for idx in np.ndindex(*image.shape[:-3]):  # one channel at a time keeps temporaries small
        x = out[idx]
        np.subtract(
            image[idx], image[idx].mean(axis=(-2, -1), keepdims=True, dtype=np.float32), out=x, dtype=np.float32
        )
        sd = np.sqrt(np.square(x).mean(axis=(-2, -1), keepdims=True))
        x /= np.where(sd != 0, sd, np.float32(1))
    return out


def one_hot(label: np.ndarray) -> np.ndarray:
    """Stored label map (...) -> uint8 (3, ...) for labels 1, 2, 3 (no background channel)."""
    label = np.asarray(label)
    channels = np.array(STORED_LABELS, label.dtype).reshape((-1,) + (1,) * label.ndim)
    return (label[None] == channels).view(np.uint8)


def _foreground_box(label: np.ndarray) -> list[tuple[int, int]] | None:
    """[start, stop) of the nonzero voxels along each axis of a (Z, Y, X) label, or None if none.
    One pass over the volume (a max per slice), then a max projection of the foreground slab."""
    z = np.flatnonzero(label.reshape(label.shape[0], -1).max(axis=1))
    if z.size == 0:
        return None
    plane = label[z[0] : z[-1] + 1].max(axis=0)  # (Y, X)
    y, x = np.flatnonzero(plane.max(axis=1)), np.flatnonzero(plane.max(axis=0))
    return [(int(z[0]), int(z[-1]) + 1), (int(y[0]), int(y[-1]) + 1), (int(x[0]), int(x[-1]) + 1)]


def max_background_voxels(volume: int, background_threshold: float) -> int:
    """Largest background voxel count b with ``b / volume < background_threshold`` (the tutorial's
    test in float64), so the rule becomes an exact integer comparison; -1 if none passes."""
    b = min(volume, int(np.floor(background_threshold * volume)))
    while b >= 0 and not (b / volume < background_threshold):
        b -= 1
    while b + 1 <= volume and (b + 1) / volume < background_threshold:
        b += 1
    return b


@dataclass
class OriginTable:
    """The acceptable patch origins of one case, in boxes.

    Along each axis, consecutive origins whose patches cover the same part of the foreground's
    bounding box form a run; every origin of a (z-run, y-run, x-run) cell has the same foreground
    count, so acceptance is decided per cell. ``starts``/``sizes``: per axis, first origin and length
    of each run; ``cells`` (K, 3): run indices of the acceptable cells; ``weights`` (K,): origins per cell.
    """

    starts: list[np.ndarray]
    sizes: list[np.ndarray]
    cells: np.ndarray
    weights: np.ndarray
    n_candidates: int

    @property
    def n_accepted(self) -> int:
        return int(self.weights.sum())

    def origins_of(self, flat: np.ndarray) -> np.ndarray:
        """(k, 3) origins (z, y, x) of acceptable-origin numbers in [0, n_accepted)."""
        flat = np.asarray(flat, np.int64)
        ends = np.cumsum(self.weights)
        cell = np.searchsorted(ends, flat, side="right")
        offset = flat - (ends[cell] - self.weights[cell])
        out = np.empty((len(flat), 3), np.int64)
        for axis in (2, 1, 0):  # unravel the offset inside the cell, C order
            run = self.cells[cell, axis]
            size = self.sizes[axis][run]
            out[:, axis] = self.starts[axis][run] + offset % size
            offset = offset // size
        return out

    def all_origins(self) -> np.ndarray:
        """Every acceptable origin, (M, 3), sorted (z, y, x)."""
        out = self.origins_of(np.arange(self.n_accepted))
        return out[np.lexsort(out.T[::-1])] if len(out) else out

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Up to ``n`` distinct acceptable origins (k, 3), uniformly without replacement."""
        k = min(int(n), self.n_accepted)
        return self.origins_of(rng.choice(self.n_accepted, size=k, replace=False) if k else np.zeros(0, np.int64))


def origin_table(label: np.ndarray, patch_size: Sequence[int], background_threshold: float) -> OriginTable:
    """Which origins (z, y, x) of a (Z, Y, X) stored label pass the tutorial's rule: background
    (label 0) fraction of the patch ``< background_threshold``.

    Cost: one pass over the label for the foreground's bounding box, then prefix sums over that box
    read at the grid of runs, never one value per origin.
    """
    label = np.asarray(label)
    patch = [int(p) for p in patch_size]
    n_origins = [s - p + 1 for s, p in zip(label.shape, patch)]
    empty = OriginTable(
        [np.zeros(0, np.int64)] * 3,
        [np.ones(0, np.int64)] * 3,
        np.zeros((0, 3), np.int64),
        np.zeros(0, np.int64),
        max(0, int(np.prod(n_origins))) if min(n_origins) > 0 else 0,
    )
    volume = int(np.prod(patch))
    need = volume - max_background_voxels(volume, background_threshold)  # foreground voxels required
    box = _foreground_box(label) if min(n_origins) > 0 else None
    if box is None or need > volume:
        return empty
    fg = label[tuple(slice(a, b) for a, b in box)] != 0
    starts, sizes, lo, hi = [], [], [], []
    for (a, b), p, n in zip(box, patch, n_origins):
        # Origins whose patch touches the box; the others hold only background.
        o = np.arange(max(0, a - p + 1), min(n - 1, b - 1) + 1)
        o_lo, o_hi = np.clip(o - a, 0, b - a), np.clip(o + p - a, 0, b - a)
        first = np.concatenate([[0], np.flatnonzero((np.diff(o_lo) != 0) | (np.diff(o_hi) != 0)) + 1])
        starts.append(o[first])
        sizes.append(np.diff(np.concatenate([first, [len(o)]])))
        lo.append(o_lo[first])
        hi.append(o_hi[first])
    # Box sums one axis at a time: a prefix sum along the axis, read at the runs' window ends, so
    # each step works on a smaller array (a separable summed-area table); most shrinking axis first.
    count = fg
    for axis in sorted(range(3), key=lambda a: len(lo[a]) / fg.shape[a]):
        shape = list(count.shape)
        shape[axis] += 1
        prefix = np.zeros(shape, np.int32)
        np.cumsum(count, axis=axis, dtype=np.int32, out=prefix[(slice(None),) * axis + (slice(1, None),)])
        count = np.take(prefix, hi[axis], axis=axis) - np.take(prefix, lo[axis], axis=axis)
    cells = np.argwhere(count >= need).astype(np.int64)
    weights = sizes[0][cells[:, 0]] * sizes[1][cells[:, 1]] * sizes[2][cells[:, 2]]
    return OriginTable(starts, sizes, cells, weights.astype(np.int64), empty.n_candidates)


def accepted_origins(
    label: np.ndarray, patch_size: Sequence[int], background_threshold: float
) -> tuple[np.ndarray, int]:
    """Every acceptable origin (M, 3) (z, y, x), sorted, and the number of candidate origins."""
    table = origin_table(label, patch_size, background_threshold)
    return table.all_origins(), table.n_candidates


def sample_origins(
    label: np.ndarray, patch_size: Sequence[int], n: int, background_threshold: float, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Up to ``n`` distinct acceptable origins (k, 3) (z, y, x), drawn uniformly, and how many were acceptable."""
    table = origin_table(label, patch_size, background_threshold)
    return table.draw(n, rng), table.n_accepted


def extract(
    image, label: np.ndarray, origin: Sequence[int], patch_size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(image (4, pz, py, px) as stored, one-hot label (3, pz, py, px)) at ``origin``. ``image`` may be
    an h5py dataset: only the chunks under the patch are read."""
    box = tuple(slice(int(o), int(o) + int(p)) for o, p in zip(origin, patch_size))
    return np.ascontiguousarray(image[(slice(None), *box)], dtype=np.float32), one_hot(label[box])


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
        # A chunk cache of 64 MiB: overlapping patches reuse decompressed chunks.
        src = h5py.File(stack_path, "r", rdcc_nbytes=64 * 2**20, rdcc_nslots=10007)
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
        origins, n_accepted = sample_origins(
            label, patch, params.n_patches, params.background_threshold, case_rng(seed, case)
        )
        k = len(origins)
        if k == 0:
            why = (
                f"patch {patch} (Z, Y, X) is larger than the volume {list(label.shape)}"
                if any(p > s for p, s in zip(patch, label.shape))
                else f"no patch has a background fraction below {params.background_threshold}"
            )
            log.warning("%s: no patch could be sampled: %s; writing 0 patches", case, why)
        elif k < params.n_patches:
            log.warning("%s: only %d of %d requested patches are possible", case, k, params.n_patches)
        with io.atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
            kw = _h5_kwargs(params.compression, k, patch)
            img_ds = f.create_dataset("image", shape=(k, 4, *patch), dtype=np.float32, **kw(4))
            lab_ds = f.create_dataset(
                "label", shape=(k, len(STORED_LABELS), *patch), dtype=np.uint8, **kw(len(STORED_LABELS))
            )
            for i, origin in enumerate(origins):  # one patch in memory at a time
                x, y = extract(image, label, origin, patch)
                img_ds[i] = standardise(x)
                lab_ds[i] = y
            f.create_dataset("origins", data=origins.astype(np.int64).reshape(k, 3))
            f.attrs.update(
                {
                    "case_id": case,
                    "patch_size_zyx": np.array(patch, np.int64),
                    "n_patches": k,
                    "n_requested": int(params.n_patches),
                    "n_accepted_origins": int(n_accepted),
                    "background_threshold": float(params.background_threshold),
                    "seed": int(seed),
                }
            )
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
