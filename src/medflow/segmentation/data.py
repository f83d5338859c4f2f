"""Datasets of the preprocessing stage's HDF5 files: patches for training (stacked cases for evaluation are
read by ``medflow.preprocess.stack.read_stack``).

Patch file (``results/brats/patches/{case}.h5``): ``image`` float32 (N, 4, pz, py, px), standardised;
``label`` uint8 (N, 3, pz, py, px), one-hot without background (stored labels 1, 2, 3).
Stacked case (``results/brats/stack/{case}.h5``): ``image`` float32 (4, Z, Y, X) flair, t1, t1ce, t2;
``label`` uint8 (Z, Y, X), stored labels {0, 1, 2, 3} (from the release's own); read by ``read_stack``.

Patches are read one at a time from disk (nothing assumes the data set fits in memory); each
DataLoader worker opens its own file handles, since h5py handles cannot cross a fork.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from medflow.errors import InputError
from medflow.ingest.brats import MODALITIES
from medflow.segmentation.regions import STORED_LABELS

N_MODALITIES = len(MODALITIES)  # input channels, in MODALITIES order
N_LABELS = len(STORED_LABELS)  # output channels: stored labels 1, 2, 3 (no background)


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
            raise InputError(
                path, f"'label' must be (N, {N_LABELS}, pz, py, px) matching 'image' {img.shape}, got {lab.shape}"
            )
        return int(img.shape[0]), tuple(int(s) for s in img.shape[2:])


class PatchDataset(Dataset):
    """All patches of the given patch files: item i -> (image float32 (4, pz, py, px),
    label float32 (3, pz, py, px))."""

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


def by_case(paths: Sequence[str | os.PathLike]) -> dict[str, str]:
    """{case id: path} of per-case files named ``<case>.h5`` (patches, stacks)."""
    return {Path(p).stem: str(p) for p in paths}
