"""HDF5 stacking: one file per case holding the four corrected, trimmed modalities and the label.

Layout of ``results/brats/stack/{case}.h5``:

- ``image`` float32 (4, Z, Y, X), modalities flair, t1, t1ce, t2 (N4-corrected, trimmed);
- ``label`` uint8 (Z, Y, X), BraTS labels 0, 1, 2 and 4 stored as 3;
- attributes ``case_id``, ``modalities`` (JSON list), ``spacing_zyx`` (mm), ``affine`` (4x4 of the
  source NIfTI), ``original_shape_zyx``, ``kept_z_range`` [start, stop) in the original volume and
  ``source_files`` (JSON list of file names, flair, t1, t1ce, t2, seg).

Axes: a NIfTI array ``a`` indexed (i, j, k) = (X, Y, Z) maps to ``image[c, z, y, x] =
a[x, y, z + start]`` with ``start = kept_z_range[0]``; the inverse is
``a[:, :, start:stop] = stack.transpose(2, 1, 0)``, which lies in the grid of ``affine``.

Datasets are chunked (one modality, ``chunk_zyx`` voxels per chunk) and compressed, so reading a
patch decompresses only the chunks it touches. Modalities are written one at a time so a job holds
about one volume in memory.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from medflow.errors import InputError
from medflow.ingest.brats import MODALITIES

log = logging.getLogger(__name__)


@dataclass
class StackParams:
    """``brats.stack`` in config: chunk shape (Z, Y, X) and compression (gzip level 0-9, lzf or none)."""

    chunk_zyx: list[int] = field(default_factory=lambda: [16, 64, 64])
    compression: str = "gzip"
    compression_level: int = 4

    @classmethod
    def from_config(cls, cfg: dict) -> "StackParams":
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})

    def h5_kwargs(self, shape_zyx: Sequence[int]) -> dict:
        chunks = tuple(max(1, min(int(c), int(s))) for c, s in zip(self.chunk_zyx, shape_zyx))
        kw: dict = {"chunks": chunks}
        if self.compression == "gzip":
            kw.update(compression="gzip", compression_opts=int(self.compression_level), shuffle=True)
        elif self.compression == "lzf":
            kw.update(compression="lzf", shuffle=True)
        elif self.compression != "none":
            raise ValueError(f"unknown compression {self.compression!r}: gzip, lzf or none")
        return kw


def to_zyx(data_xyz: np.ndarray) -> np.ndarray:
    """NIfTI (X, Y, Z) array -> (Z, Y, X) view."""
    return np.asarray(data_xyz).transpose(2, 1, 0)


def to_stored_label(seg: np.ndarray, path: str | os.PathLike = "segmentation") -> np.ndarray:
    """BraTS labels {0, 1, 2, 4} -> stored uint8 {0, 1, 2, 3} (4 becomes 3); anything else -> InputError."""
    seg = np.asarray(seg)
    bad = np.setdiff1d(np.unique(seg), (0, 1, 2, 4))
    if bad.size:
        raise InputError(path, f"segmentation values {bad.tolist()[:8]} outside {{0, 1, 2, 4}}")
    out = seg.astype(np.uint8)
    out[out == 4] = 3
    return out


def stack_case(case: str, modality_paths: Mapping[str, str | os.PathLike], seg_path: str | os.PathLike,
               kept_z_range: Sequence[int], out_path: str | os.PathLike, params: StackParams,
               affine: np.ndarray | None = None, source_files: Sequence[str] | None = None) -> None:
    """Write the stacked case (see module docstring) atomically.

    ``modality_paths``: {modality: corrected NIfTI}; ``seg_path``: the raw segmentation;
    ``kept_z_range``: [start, stop) along the NIfTI k (axial) axis; ``affine``: the source NIfTI's
    (default: the first modality's); ``source_files``: names of the raw files for provenance.
    """
    import h5py

    from medflow import io
    from medflow.ingest.brats import load_nifti

    start, stop = (int(v) for v in kept_z_range)
    with io.atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        ref = None
        for c, mod in enumerate(MODALITIES):
            img, data = load_nifti(modality_paths[mod], dtype=np.float32)
            if ref is None:
                ref = img
                shape_zyx = to_zyx(data).shape
                if not (0 <= start < stop <= shape_zyx[0]):
                    raise InputError(modality_paths[mod], f"kept slice range [{start}, {stop}) outside its {shape_zyx[0]} slices")
                out_zyx = (stop - start, *shape_zyx[1:])
                ds = f.create_dataset("image", shape=(len(MODALITIES), *out_zyx), dtype=np.float32,
                                      **_with_channel(params.h5_kwargs(out_zyx)))
            elif to_zyx(data).shape != shape_zyx:
                raise InputError(modality_paths[mod], f"shape {list(data.shape)} differs from flair's")
            ds[c] = to_zyx(data)[start:stop]
            del data
        _, seg = load_nifti(seg_path)
        if to_zyx(seg).shape != shape_zyx:
            raise InputError(seg_path, f"shape {list(seg.shape)} differs from the modalities'")
        label = to_stored_label(to_zyx(seg), seg_path)
        dropped = int(np.count_nonzero(label[:start])) + int(np.count_nonzero(label[stop:]))
        if dropped:
            raise InputError(seg_path, f"{dropped} labelled voxels lie outside the kept slices [{start}, {stop})")
        f.create_dataset("label", data=np.ascontiguousarray(label[start:stop]), **params.h5_kwargs(out_zyx))
        zooms = ref.header.get_zooms()[:3]
        f.attrs["case_id"] = case
        f.attrs["modalities"] = json.dumps(list(MODALITIES))
        f.attrs["spacing_zyx"] = np.array(zooms[::-1], dtype=float)
        f.attrs["affine"] = np.asarray(ref.affine if affine is None else affine, dtype=float)
        f.attrs["original_shape_zyx"] = np.array(shape_zyx, dtype=np.int64)
        f.attrs["kept_z_range"] = np.array([start, stop], dtype=np.int64)
        names = source_files if source_files is not None else [os.path.basename(str(p)) for p in (*(modality_paths[m] for m in MODALITIES), seg_path)]
        f.attrs["source_files"] = json.dumps(list(names))
    log.info("%s: image (4, %d, %d, %d), slices [%d, %d) of %d", case, *out_zyx, start, stop, shape_zyx[0])


def _with_channel(kw: dict) -> dict:
    """Chunk the (4, Z, Y, X) image one modality at a time."""
    return {**kw, "chunks": (1, *kw["chunks"])}
