"""Reading the preprocessing stage's HDF5 files: patches for training, stacked cases for evaluation.

Patch file (``results/brats/patches/{case}.h5``): ``image`` float32 (N, 4, pz, py, px), standardised;
``label`` uint8 (N, 3, pz, py, px), one-hot without background (stored labels 1, 2, 3).
Stacked case (``results/brats/stack/{case}.h5``): ``image`` float32 (4, Z, Y, X) flair, t1, t1ce, t2;
``label`` uint8 (Z, Y, X) with BraTS 4 stored as 3; attributes described in ``read_stack``.

Patches are read one at a time from disk (nothing assumes the data set fits in memory); each
DataLoader worker opens its own file handles, since h5py handles cannot cross a fork.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from medflow.errors import InputError

N_MODALITIES = 4
N_LABELS = 3


def _open(path: str | os.PathLike) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot open as HDF5 ({exc})") from None


def patch_count(path: str | os.PathLike) -> tuple[int, tuple[int, int, int]]:
    """Number of patches in a patch file and their spatial size (pz, py, px), after checking shapes."""
    with _open(path) as f:
        for key in ("image", "label"):
            if key not in f:
                raise InputError(path, f"no '{key}' dataset")
        img, lab = f["image"], f["label"]
        if img.ndim != 5 or img.shape[1] != N_MODALITIES:
            raise InputError(path, f"'image' must be (N, {N_MODALITIES}, pz, py, px), got {img.shape}")
        if lab.shape != (img.shape[0], N_LABELS, *img.shape[2:]):
            raise InputError(path, f"'label' must be (N, {N_LABELS}, pz, py, px) matching 'image' {img.shape}, got {lab.shape}")
        return int(img.shape[0]), tuple(int(s) for s in img.shape[2:])


class PatchDataset(Dataset):
    """All patches of the given patch files: item i -> (image float32 (4, pz, py, px), label float32 (3, pz, py, px))."""

    def __init__(self, files: Sequence[str | os.PathLike]):
        self.files = [str(f) for f in files]
        self.index: list[tuple[int, int]] = []
        sizes = set()
        for i, path in enumerate(self.files):
            n, size = patch_count(path)
            if n:
                sizes.add(size)
            self.index.extend((i, j) for j in range(n))
        if len(sizes) > 1:
            raise InputError(self.files[0], f"patch files hold different patch sizes {sorted(sizes)}")
        self.patch_size: tuple[int, int, int] | None = sizes.pop() if sizes else None
        self._handles: dict[int, h5py.File] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self.index)

    def _file(self, i: int) -> h5py.File:
        if self._pid != os.getpid():  # a new worker process: never reuse the parent's handles
            self._handles, self._pid = {}, os.getpid()
        if i not in self._handles:
            self._handles[i] = _open(self.files[i])
        return self._handles[i]

    def __getitem__(self, k: int):
        i, j = self.index[k]
        f = self._file(i)
        image = torch.from_numpy(np.asarray(f["image"][j], dtype=np.float32))
        label = torch.from_numpy(np.asarray(f["label"][j], dtype=np.float32))
        return image, label

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, None
        return state

    def close(self) -> None:
        for h in self._handles.values():
            h.close()
        self._handles = {}


@dataclass
class Stack:
    """A stacked case: ``image`` (4, Z, Y, X) float32, ``label`` (Z, Y, X) uint8 stored labels or None,
    ``spacing_zyx`` mm, ``affine`` 4x4 of the source NIfTI, ``original_shape_zyx`` and ``kept_z_range``
    [start, stop) placing the stack in the original volume."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing_zyx: tuple[float, float, float]
    affine: np.ndarray
    original_shape_zyx: tuple[int, int, int]
    kept_z_range: tuple[int, int]


def _attr(f: h5py.File, path, name: str):
    if name not in f.attrs:
        raise InputError(path, f"attribute '{name}' is missing")
    value = f.attrs[name]
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        value = json.loads(value)
    return value


def read_stack(path: str | os.PathLike, with_label: bool = True) -> Stack:
    """Read and check a stacked case (whole volume: evaluation works on one case at a time)."""
    with _open(path) as f:
        if "image" not in f:
            raise InputError(path, "no 'image' dataset")
        image = np.asarray(f["image"][()], dtype=np.float32)
        if image.ndim != 4 or image.shape[0] != N_MODALITIES:
            raise InputError(path, f"'image' must be ({N_MODALITIES}, Z, Y, X), got {image.shape}")
        label = None
        if with_label:
            if "label" not in f:
                raise InputError(path, "no 'label' dataset")
            label = np.asarray(f["label"][()])
            if label.shape != image.shape[1:]:
                raise InputError(path, f"'label' shape {label.shape} differs from the image's {image.shape[1:]}")
            bad = np.setdiff1d(np.unique(label), (0, 1, 2, 3))
            if bad.size:
                raise InputError(path, f"'label' holds values {bad.tolist()} outside the stored labels 0..3")
            label = label.astype(np.uint8)
        case_id = str(_attr(f, path, "case_id"))
        spacing = tuple(float(s) for s in np.ravel(_attr(f, path, "spacing_zyx")))
        affine = np.asarray(_attr(f, path, "affine"), dtype=float)
        original = tuple(int(s) for s in np.ravel(_attr(f, path, "original_shape_zyx")))
        kept = tuple(int(s) for s in np.ravel(_attr(f, path, "kept_z_range")))
    if len(spacing) != 3 or affine.shape != (4, 4) or len(original) != 3 or len(kept) != 2:
        raise InputError(path, "attributes spacing_zyx (3), affine (4x4), original_shape_zyx (3) or kept_z_range (2) are malformed")
    if kept[1] - kept[0] != image.shape[1] or not (0 <= kept[0] < kept[1] <= original[0]) or original[1:] != image.shape[2:]:
        raise InputError(path, f"kept_z_range {list(kept)} and original_shape_zyx {list(original)} do not fit the image {image.shape[1:]}")
    return Stack(case_id, image, label, spacing, affine, original, kept)


def by_case(paths: Sequence[str | os.PathLike]) -> dict[str, str]:
    """{case id: path} of per-case files named ``<case>.h5`` (patches, stacks)."""
    return {Path(p).stem: str(p) for p in paths}
