"""MRNet exams for training and inference: one plane's series read from disk, resized, augmented,
and packed into batches of whole exams under a slice budget.

A batch is ``{"slices": (N, H, W) uint8, "counts": (B,) int64, "label": (B,) float32}``: the slices
of B exams concatenated (exam by exam, in order), ``counts`` the slices of each. Grey levels stay
uint8 until the model, which keeps loader traffic and host-to-device copies small.

An exam table (``exam_table``) is what datasets and loaders are built from: one row per exam with
``id``, ``split`` (its folder: train or valid), ``label`` (0/1 for one task) and ``slices`` (in one plane);
new exams to predict have a ``path`` (their series in that plane) instead of a ``split``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from medflow.errors import InputError
from medflow.ingest.mrnet import IN_PLANE, npy_path
from medflow.train import loader_kwargs


class ExamDataset(Dataset):
    """Exams of one plane. Item i: ``(slices (S, size, size) uint8, label float)``.

    ``splits`` gives each exam's folder (train or valid) under ``root``, or ``paths`` names each exam's
    series file (new exams, anywhere); nothing is cached, so any number of exams streams from disk.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        plane: str,
        ids: Sequence[str],
        splits: Sequence[str],
        labels: Sequence[int],
        size: int = IN_PLANE,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        paths: Sequence[str | os.PathLike] | None = None,
    ):
        if not (len(ids) == len(splits) == len(labels)) or (paths is not None and len(paths) != len(ids)):
            raise ValueError("ids, splits, labels (and paths) must have one entry per exam")
        if paths is None:
            self.paths = [npy_path(root, s, plane, e) for e, s in zip(ids, splits)]
        else:
            self.paths = [Path(p) for p in paths]
        self.ids = list(ids)
        self.labels = [float(y) for y in labels]
        self.size = int(size)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, float]:
        exam = torch.from_numpy(load_series(self.paths[i]))
        if exam.shape[-1] != self.size or exam.shape[-2] != self.size:
            exam = resize(exam, self.size)
        if self.augment is not None:
            exam = self.augment(exam)
        return exam, self.labels[i]


def resize(exam: torch.Tensor, size: int) -> torch.Tensor:
    """(S, H, W) uint8 -> (S, size, size) uint8. Shrinking averages the pixels each output pixel covers
    (area interpolation: no aliasing, and cheap for the integer factors of 256); enlarging is bilinear."""
    x = exam.unsqueeze(0).float()
    if size < min(exam.shape[-2:]):
        x = F.interpolate(x, size=(size, size), mode="area")
    else:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x[0].round_().clamp_(0, 255).to(torch.uint8)


def load_series(path: Path) -> np.ndarray:
    """One validated series (S, 256, 256) uint8; a file changed since ingest still fails clearly."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(path, f"unreadable as a .npy array ({e.__class__.__name__})") from None
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise InputError(path, f"expected uint8 (slices, H, W), got {arr.dtype} {arr.shape}")
    return arr


class PackedBatchSampler(Sampler[list[int]]):
    """Batches of whole exams with at most ``max_slices`` slices in all (an exam with more slices than
    that forms a batch of its own). ``shuffle`` draws a new exam order each epoch from torch's global
    generator, which the training loop seeds per epoch, so runs repeat exactly."""

    def __init__(self, slice_counts: Sequence[int], max_slices: int, shuffle: bool = False):
        if max_slices < 1:
            raise ValueError("max_slices must be at least 1")
        self.counts = [int(c) for c in slice_counts]
        self.max_slices = int(max_slices)
        self.shuffle = shuffle

    def _batches(self, order: Sequence[int]) -> list[list[int]]:
        batches, current, total = [], [], 0
        for i in order:
            if current and total + self.counts[i] > self.max_slices:
                batches.append(current)
                current, total = [], 0
            current.append(i)
            total += self.counts[i]
        if current:
            batches.append(current)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.counts)).tolist() if self.shuffle else range(len(self.counts))
        yield from self._batches(order)

    def __len__(self) -> int:  # exact without shuffling, an estimate with it
        return len(self._batches(range(len(self.counts))))


def collate_packed(items: Sequence[tuple[torch.Tensor, float]]) -> dict[str, torch.Tensor]:
    exams = [x for x, _ in items]
    return {
        "slices": torch.cat(exams, dim=0),
        "counts": torch.tensor([len(x) for x in exams], dtype=torch.int64),
        "label": torch.tensor([y for _, y in items], dtype=torch.float32),
    }


def packed_loader(
    dataset: ExamDataset,
    slice_counts: Sequence[int],
    max_slices: int,
    *,
    shuffle: bool,
    device: torch.device,
    threads: int,
) -> DataLoader:
    """A DataLoader of packed batches (workers and pinning from the rule's threads and the device)."""
    return DataLoader(
        dataset,
        batch_sampler=PackedBatchSampler(slice_counts, max_slices, shuffle),
        collate_fn=collate_packed,
        **loader_kwargs(device, threads),
    )


def exam_table(manifest: pd.DataFrame, ids: Sequence[str], task: str, plane: str) -> pd.DataFrame:
    """Manifest rows of ``ids``, in that order -> ``id, split, label`` (of ``task``), ``slices`` (of ``plane``)."""
    ids = list(ids)
    df = manifest.set_index("id").loc[ids]
    return pd.DataFrame(
        {
            "id": ids,
            "split": df["split"].values,
            "label": df[task].astype(int).values,
            "slices": df[f"slices_{plane}"].astype(int).values,
        }
    )


def exam_dataset(
    root: str | os.PathLike,
    plane: str,
    exams: pd.DataFrame,
    size: int,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> ExamDataset:
    """The ``plane`` series of an exam table's exams, in its row order: under ``root`` by ``split``, or the
    files of a ``path`` column where the table has one (new exams)."""
    ids = exams["id"].tolist()
    splits = exams["split"].tolist() if "split" in exams else [""] * len(ids)
    paths = exams["path"].tolist() if "path" in exams else None
    return ExamDataset(root, plane, ids, splits, exams["label"].tolist(), size, augment, paths=paths)


def exam_loader(
    root: str | os.PathLike,
    plane: str,
    exams: pd.DataFrame,
    *,
    size: int,
    batch_slices: int,
    shuffle: bool,
    device: torch.device,
    threads: int,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> DataLoader:
    """Packed batches of an exam table's exams (``batch_slices`` slices at most, whole exams)."""
    return packed_loader(
        exam_dataset(root, plane, exams, size, augment),
        exams["slices"],
        batch_slices,
        shuffle=shuffle,
        device=device,
        threads=threads,
    )
