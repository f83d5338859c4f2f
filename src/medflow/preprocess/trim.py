"""Slice trimming: keep the axial slices between the first and last one that carry signal.

Decided from the data (the tutorial cut fixed slices 0-5 and 140-154): a slice carries signal when
any voxel of any modality is nonzero, or when the segmentation labels any voxel in it (a label is
never dropped). An optional margin of extra slices is kept at both ends, within the volume.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from medflow.errors import InputError

log = logging.getLogger(__name__)


def signal_per_slice(volume_xyz: np.ndarray) -> np.ndarray:
    """(Z,) bool: which axial slices of an (X, Y, Z) volume hold any nonzero voxel."""
    return np.asarray(volume_xyz != 0).any(axis=(0, 1))


def kept_range(has_signal: np.ndarray, margin: int = 0) -> tuple[int, int] | None:
    """[start, stop) of the kept slices from a (Z,) bool signal profile, widened by ``margin`` slices
    at each end and clipped to [0, Z); None when no slice has signal."""
    idx = np.flatnonzero(has_signal)
    if idx.size == 0:
        return None
    n = len(has_signal)
    return max(0, int(idx[0]) - int(margin)), min(n, int(idx[-1]) + 1 + int(margin))


def trim_range(
    paths: Sequence[str | os.PathLike], margin: int = 0, label_path: str | os.PathLike | None = None
) -> dict:
    """Kept slice range of one case from its modality files (and segmentation), read one at a time.

    Returns ``{"kept_z_range": [start, stop), "n_slices": Z, "margin": margin}`` with Z the original
    number of axial slices (the NIfTI k axis).
    """
    from medflow.ingest.brats import load_nifti

    profile = None
    for path in [*paths, *([label_path] if label_path else [])]:
        _, data = load_nifti(path)
        p = signal_per_slice(data)
        if profile is not None and p.shape != profile.shape:
            raise InputError(path, f"{p.shape[0]} axial slices, the other files have {profile.shape[0]}")
        profile = p if profile is None else profile | p
    rng = kept_range(profile, margin)
    if rng is None:
        raise InputError(paths[0], "no slice carries signal in any modality")
    return {"kept_z_range": list(rng), "n_slices": int(profile.shape[0]), "margin": int(margin)}


def write_trim(case: str, images, seg, margin: int, out) -> dict:
    """The brats_trim stage: ``trim_range`` of the corrected images (and label, if any) written as JSON."""
    from medflow import io

    result = trim_range(list(images), margin, label_path=seg or None)
    io.write_json(out, result)
    log.info("%s: kept slices %s of %d", case, result["kept_z_range"], result["n_slices"])
    return result
