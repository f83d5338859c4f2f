"""Torch dataset over the slice HDF5 (see :mod:`medflow.grade.slices`), read one slice at a time."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import h5py
import numpy as np
import torch


def read_index(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The per-slice columns (case, split, grade, z, tumour_pixels) without the images."""
    with h5py.File(path, "r") as f:
        return {
            "case": f["case"].asstr()[...].astype(str),
            "split": f["split"].asstr()[...].astype(str),
            "grade": f["grade"][...].astype(np.int64),
            "z": f["z"][...],
            "tumour_pixels": f["tumour_pixels"][...],
        }


@dataclass(frozen=True)
class Augment:
    """``brats.grade.train.augment``: ``hflip`` (left-right mirror, p = 0.5) and ``intensity`` s (each
    channel scaled by U(1 - s, 1 + s); the background stays 0)."""

    hflip: bool = False
    intensity: float = 0.0


class GradeSlices(torch.utils.data.Dataset):
    """Slices of one split: item ``i`` is ``(image (4, S, S) float32, grade (0 LGG / 1 HGG), i)``.

    ``augment`` (train only, see :class:`Augment`). The HDF5 file is opened lazily in each loader
    worker (h5py handles do not survive a fork).
    """

    def __init__(
        self, path: str | os.PathLike, split: str, augment: Augment | None = None, index: Mapping | None = None
    ):
        self.path = str(path)
        index = index or read_index(path)
        self.rows = np.flatnonzero(index["split"] == split)
        self.cases = index["case"][self.rows]
        self.targets = index["grade"][self.rows]
        self.augment = augment or Augment()
        self._file = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.rows)

    def _images(self):
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file["image"]

    def __getitem__(self, i: int):
        x = torch.from_numpy(self._images()[int(self.rows[i])])
        if self.augment.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        s = float(self.augment.intensity)
        if s > 0:
            x = x * (1 + (torch.rand(x.shape[0], 1, 1) * 2 - 1) * s)
        return x, int(self.targets[i]), i


class ArraySlices(torch.utils.data.Dataset):
    """In-memory slices of one new case, in the item format of :class:`GradeSlices` so the same prediction
    function serves both: item ``i`` is ``(x[i] (4, S, S) float32, grade, i)``; ``grade`` is -1 (unknown)
    unless given (a labelled case fed through the predict path)."""

    def __init__(self, x: np.ndarray, grade: int = -1):
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.grade = int(grade)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.grade, i
