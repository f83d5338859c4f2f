"""OCT images for VGG16: the split table, an ImageFolder-style dataset over it, and the tutorial's transforms.

The dataset behaves like ``torchvision.datasets.ImageFolder`` (``classes``, ``class_to_idx``,
``samples``, ``targets``; greyscale converted to 3-channel RGB; sorted class names) but reads its
image list from ``split.csv``, so a validation set carved out of ``train`` by patient works too.
Images are opened one at a time: nothing assumes the data set fits in memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torchvision import transforms

from medflow.errors import InputError
from medflow.ingest.oct import class_to_idx, read_split

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Augment:
    """``oct.train.augment``: train-time augmentation (config/config.yaml)."""

    crop_scale: tuple[float, float]  # RandomResizedCrop's area range, fractions of the image
    rotation: float  # degrees either way
    brightness: float
    contrast: float
    hflip: bool


def split_table(split_path: str | os.PathLike, split: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """The rows of ``split`` in ``split.csv`` (``id, split, label, patient, path``; index reset) and the
    ImageFolder ``class_to_idx`` of every label in the file; ``InputError`` if the split has no image."""
    table = read_split(split_path)
    part = table[table["split"] == split].reset_index(drop=True)
    if part.empty:
        raise InputError(split_path, f"no images in split {split!r}")
    return part, class_to_idx(sorted(table["label"].unique()))


def train_transform(image_size: int, resize: int, augment: Augment) -> transforms.Compose:
    """Random resized crop to ``resize``, rotation, colour jitter, horizontal flip, centre crop to
    ``image_size`` (pixels), ImageNet normalisation -> float tensor (3, image_size, image_size)."""
    steps = [
        transforms.RandomResizedCrop(resize, scale=tuple(augment.crop_scale)),
        transforms.RandomRotation(degrees=float(augment.rotation)),
        transforms.ColorJitter(brightness=float(augment.brightness), contrast=float(augment.contrast)),
    ]
    if augment.hflip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]
    return transforms.Compose(steps)


def eval_transform(image_size: int, resize: int) -> transforms.Compose:
    """Resize (shorter side to ``resize``), centre crop ``image_size``, ImageNet normalisation."""
    return transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class OctImages(torch.utils.data.Dataset):
    """Images of one split; item ``i`` is ``(image tensor (3, S, S), class index)``."""

    def __init__(self, root: str | os.PathLike, table: pd.DataFrame, class_to_idx: Mapping[str, int], transform=None):
        self.root = Path(root)
        self.classes = sorted(class_to_idx, key=class_to_idx.get)
        self.class_to_idx = dict(class_to_idx)
        self.ids = table["id"].astype(str).tolist()
        self.samples = [(str(self.root / p), self.class_to_idx[c]) for p, c in zip(table["path"], table["label"])]
        self.targets = [t for _, t in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, target = self.samples[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except OSError as exc:  # a file changed since ingest
            raise InputError(path, f"unreadable image ({exc})") from None
        if self.transform is not None:
            img = self.transform(img)
        return img, target
