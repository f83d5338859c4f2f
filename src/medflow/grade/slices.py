"""Axial slice dataset for the BraTS grade classifier (LGG vs HGG), built from the stacked cases.

Per case (``results/brats/stack/{case}.h5``: ``image`` float32 (4, Z, Y, X) flair, t1, t1ce, t2;
``label`` uint8 (Z, Y, X)) the slices are chosen from the tumour label (``select``):

- ``tumour``: every axial slice with at least ``min_tumour_pixels`` tumour pixels;
- ``top_k``: the ``top_k`` slices with the largest tumour area (ties: lower z first), among those
  with at least ``min_tumour_pixels``.

Each channel is standardised per case over the brain (voxels where any modality is > 0: zero mean,
unit SD; background 0), so intensities of different scanners and bias fields are comparable while
slices of one case keep their relative contrast. Slices whose (Y, X) differs from ``size`` are
resized (bilinear, antialiased).

Output HDF5 (one file, streamed case by case, never held in memory as a whole):
``image`` float32 (N, 4, size, size), chunked one slice per chunk; ``case`` (N) str;
``split`` (N) str; ``grade`` (N) uint8 (1 = HGG, 0 = LGG); ``z`` (N) int32 (index into the stacked
volume's Z); ``tumour_pixels`` (N) int32 (at the stack's resolution); attributes ``modalities``,
``select``, ``top_k``, ``min_tumour_pixels``, ``size``, ``cases_without_slices`` (JSON).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medflow import io
from medflow.errors import InputError
from medflow.ingest.brats import MODALITIES
from medflow.ingest.splits import read_split
from medflow.preprocess.stack import read_stack

log = logging.getLogger(__name__)

GRADES = {"LGG": 0, "HGG": 1}
SELECT = ("tumour", "top_k")


def tumour_area(label: np.ndarray) -> np.ndarray:
    """Tumour pixels (label > 0) per axial slice: (Z, Y, X) -> (Z,)."""
    return np.count_nonzero(label.reshape(label.shape[0], -1), axis=1)


def select_slices(label: np.ndarray, select: str, top_k: int, min_tumour_pixels: int) -> np.ndarray:
    """Z indices (ascending) of the slices to use, from the label volume (Z, Y, X)."""
    area = tumour_area(label)
    eligible = np.flatnonzero(area >= max(1, int(min_tumour_pixels)))
    if select == "tumour":
        return eligible
    if select == "top_k":
        order = eligible[np.argsort(-area[eligible], kind="stable")]
        return np.sort(order[: int(top_k)])
    raise ValueError(f"select must be one of {SELECT}, not {select!r}")


def standardise(image: np.ndarray) -> np.ndarray:
    """Per-channel z-score over the brain of a (C, Z, Y, X) volume; background (all channels <= 0) 0."""
    brain = np.any(image > 0, axis=0)
    out = np.zeros_like(image, dtype=np.float32)
    if not brain.any():
        return out
    for c in range(image.shape[0]):
        v = image[c][brain]
        sd = float(v.std())
        out[c][brain] = (v - float(v.mean())) / (sd if sd > 0 else 1.0)
    return out


def resize_slices(x: np.ndarray, size: int) -> np.ndarray:
    """(N, C, Y, X) -> (N, C, size, size), bilinear with antialiasing; unchanged if already that size."""
    if x.shape[-2:] == (size, size):
        return x
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True).numpy()


@dataclass(frozen=True)
class SliceParams:
    """``brats.grade.slices``: which slices (``select``, ``top_k``, ``min_tumour_pixels``) at which ``size``.
    The grade checkpoint records them (``meta.preprocessing``), so prediction chooses slices as training did."""

    select: str
    top_k: int
    min_tumour_pixels: int
    size: int

    def as_dict(self) -> dict:
        return asdict(self)


def slices_for_case(
    image: np.ndarray, label: np.ndarray, params: SliceParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model inputs of one stacked case: ``(x (N, 4, size, size) float32, z (N,) int32, tumour_pixels (N,)
    int32)``, slices chosen from the stored ``label`` (Z, Y, X) (the true one in training and evaluation, the
    predicted one on new data) out of the standardised ``image`` (4, Z, Y, X). N may be 0."""
    if label.shape != image.shape[1:]:
        raise ValueError(f"label {label.shape} and image {image.shape[1:]} differ in shape")
    zs = select_slices(label, params.select, params.top_k, params.min_tumour_pixels)
    x = resize_slices(standardise(image)[:, zs].transpose(1, 0, 2, 3), int(params.size))
    return np.ascontiguousarray(x, dtype=np.float32), zs.astype(np.int32), tumour_area(label)[zs].astype(np.int32)


def read_slice_params(path: str | os.PathLike) -> SliceParams:
    """The :class:`SliceParams` a slice HDF5 was written with (its attributes)."""
    import h5py

    with h5py.File(path, "r") as f:
        try:
            return SliceParams(
                select=str(f.attrs["select"]),
                top_k=int(f.attrs["top_k"]),
                min_tumour_pixels=int(f.attrs["min_tumour_pixels"]),
                size=int(f.attrs["size"]),
            )
        except KeyError as exc:
            raise InputError(path, f"slice file lacks the attribute {exc}") from None


def write_slices(
    stacks: Mapping[str, str | os.PathLike],
    split_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    select: str,
    top_k: int,
    min_tumour_pixels: int,
    size: int,
) -> dict[str, int]:
    """Write the slice HDF5 for every case of the split file (columns id, split, grade); ``stacks``
    maps case -> stacked file. Returns slices per split. A case without eligible slices is logged, listed
    in the file's attributes and left out (evaluation reports it)."""
    import h5py

    split = read_split(split_path)
    if not {"id", "split", "grade"} <= set(split.columns):
        raise InputError(split_path, "split file lacks the columns id, split, grade")
    rows = split.set_index("id")
    missing = [c for c in rows.index if c not in stacks]
    if missing:
        raise InputError(split_path, f"case {missing[0]} has no stacked HDF5")
    params = SliceParams(select, int(top_k), int(min_tumour_pixels), int(size))
    counts: dict[str, int] = {}
    empty: list[str] = []
    str_dt = h5py.string_dtype()
    with io.atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        c = len(MODALITIES)
        img = f.create_dataset(
            "image",
            shape=(0, c, size, size),
            maxshape=(None, c, size, size),
            dtype=np.float32,
            chunks=(1, c, size, size),
        )
        cols = {
            "case": f.create_dataset("case", shape=(0,), maxshape=(None,), dtype=str_dt),
            "split": f.create_dataset("split", shape=(0,), maxshape=(None,), dtype=str_dt),
            "grade": f.create_dataset("grade", shape=(0,), maxshape=(None,), dtype=np.uint8),
            "z": f.create_dataset("z", shape=(0,), maxshape=(None,), dtype=np.int32),
            "tumour_pixels": f.create_dataset("tumour_pixels", shape=(0,), maxshape=(None,), dtype=np.int32),
        }
        for case in sorted(rows.index):
            grade = str(rows.at[case, "grade"])
            if grade not in GRADES:
                raise InputError(split_path, f"case {case} has grade {grade!r}, not HGG or LGG")
            stack = read_stack(stacks[case])
            x, zs, pixels = slices_for_case(stack.image, stack.label, params)
            if zs.size == 0:
                log.warning("%s: no slice with >= %d tumour pixels; case left out", case, min_tumour_pixels)
                empty.append(case)
                continue
            n0, n = img.shape[0], len(zs)
            img.resize(n0 + n, axis=0)
            img[n0:] = x
            values = {
                "case": [case] * n,
                "split": [str(rows.at[case, "split"])] * n,
                "grade": np.full(n, GRADES[grade], np.uint8),
                "z": zs,
                "tumour_pixels": pixels,
            }
            for k, ds in cols.items():
                ds.resize(n0 + n, axis=0)
                ds[n0:] = values[k]
            counts[values["split"][0]] = counts.get(values["split"][0], 0) + n
        f.attrs["modalities"] = json.dumps(list(MODALITIES))
        f.attrs["select"] = select
        f.attrs["top_k"] = int(top_k)
        f.attrs["min_tumour_pixels"] = int(min_tumour_pixels)
        f.attrs["size"] = int(size)
        f.attrs["cases_without_slices"] = json.dumps(empty)
    log.info("slices per split: %s (%d cases without eligible slices)", counts, len(empty))
    return counts


def stack_paths(paths: Sequence[str | os.PathLike]) -> dict[str, str]:
    """case id -> path, from stacked file names ``<case>.h5``."""
    return {Path(p).stem: str(p) for p in paths}
