"""The RSNA data sets and loaders: rows of the preprocessing HDF5, selected by the patient split.

Images are read from the HDF5 one at a time by the data loader (a worker opens the file itself), so
the data set never has to fit in memory. The metadata features are the HDF5's ``meta`` rows, written
once by ``rsna_preprocess``: training, validation and evaluation all read the same features.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medflow import train as mtrain
from medflow.errors import InputError
from medflow.ingest import splits


class H5Patients(torch.utils.data.Dataset):
    """Rows ``indices`` of the preprocessing HDF5 -> (image uint8 (H, W), meta float32 (F,), target float32)."""

    def __init__(self, path: str | os.PathLike, indices: Sequence[int]):
        self.path = str(path)
        self.indices = np.asarray(indices, dtype=np.int64)
        self._h5 = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        if self._h5 is None:  # opened in the process that reads (h5py handles do not survive fork)
            import h5py

            self._h5 = h5py.File(self.path, "r")
        j = int(self.indices[i])
        h5 = self._h5
        return (
            torch.from_numpy(h5["image"][j]),
            torch.from_numpy(h5["meta"][j]),
            torch.tensor(float(h5["target"][j]), dtype=torch.float32),
        )

    def __getstate__(self):
        return {**self.__dict__, "_h5": None}


@dataclass(frozen=True)
class H5Info:
    """What the preprocessing HDF5 says about itself: feature names (F,), image size (pixels), patient ids (N,),
    and the parameters its images and features were made with (``preprocess.preprocessing_record``; None in
    a file written before they were recorded)."""

    meta_features: list[str]
    size: int
    patient_ids: list[str]
    targets: np.ndarray  # (N,) int 0/1
    preprocessing: dict | None = None


def read_info(h5_path: str | os.PathLike) -> H5Info:
    """Feature names, image size, patient ids and targets of a preprocessing HDF5."""
    import h5py

    with h5py.File(h5_path, "r") as h5:
        ids = [s.decode() if isinstance(s, bytes) else str(s) for s in h5["patient_id"][:]]
        return H5Info(
            meta_features=list(json.loads(h5.attrs["meta_features"])),
            size=int(h5.attrs["size"]),
            patient_ids=ids,
            targets=np.asarray(h5["target"][:]).astype(int),
            preprocessing=json.loads(h5.attrs["preprocessing"]) if "preprocessing" in h5.attrs else None,
        )


def read_rows(h5_path: str | os.PathLike, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (n, size, size) and metadata features float32 (n, F) of HDF5 rows ``rows``, in that order."""
    import h5py

    with h5py.File(h5_path, "r") as h5:
        size, n_meta = h5["image"].shape[1:], h5["meta"].shape[1]
        images = np.stack([h5["image"][int(j)] for j in rows]) if len(rows) else np.zeros((0, *size), np.uint8)
        meta = np.stack([h5["meta"][int(j)] for j in rows]) if len(rows) else np.zeros((0, n_meta), np.float32)
    return images, meta


def split_indices(h5_path: str | os.PathLike, split_csv: str | os.PathLike) -> dict[str, np.ndarray]:
    """Row indices of the HDF5 per split name, from the ingest stage's patient-level split.
    Patients of the split that the HDF5 lacks (excluded upstream) are simply absent."""
    ids = read_info(h5_path).patient_ids
    split = splits.read_split(split_csv, id_col="patientId")
    where = dict(zip(split["patientId"], split["split"]))
    unknown = [i for i in ids if i not in where]
    if unknown:
        raise InputError(split_csv, f"patientId {unknown[0]} of {h5_path} has no split")
    out: dict[str, list[int]] = {}
    for k, pid in enumerate(ids):
        out.setdefault(where[pid], []).append(k)
    return {name: np.asarray(v, dtype=np.int64) for name, v in out.items()}


def eval_loader(
    h5_path: str | os.PathLike, indices: Sequence[int], *, batch_size: int, device: torch.device, threads: int
) -> torch.utils.data.DataLoader:
    """An ordered loader over rows ``indices`` (evaluation, prediction): batches of (image, meta, target)."""
    return torch.utils.data.DataLoader(
        H5Patients(h5_path, indices), batch_size=int(batch_size), shuffle=False, **mtrain.loader_kwargs(device, threads)
    )
