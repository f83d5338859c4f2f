"""OCT images for VGG16: the split table, an ImageFolder-style dataset over it, and the tutorial's transforms.

The dataset behaves like ``torchvision.datasets.ImageFolder`` (``classes``, ``class_to_idx``,
``samples``, ``targets``; greyscale converted to 3-channel RGB; sorted class names) but reads its
image list from ``split.csv``, so a validation set carved out of ``train`` by patient works too.
Images are opened one at a time: nothing assumes the data set fits in memory.

What shapes the model's input at test time (resize, crop, greyscale -> RGB, normalisation, the class order) is
one ``preprocessing`` dict: the train stage records it in the checkpoint, and evaluation and prediction build
their transform from the checkpoint's copy with :func:`eval_transform_for`, so they cannot drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
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
COLOUR = "RGB"  # greyscale (PIL mode L) scans are replicated to three channels by PIL's convert("RGB")


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


def eval_transform(
    image_size: int, resize: int, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> transforms.Compose:
    """Resize (shorter side to ``resize``, bilinear), centre crop ``image_size``, normalisation (ImageNet's
    by default) -> float tensor (3, image_size, image_size)."""
    return transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(tuple(mean), tuple(std)),
        ]
    )


def preprocessing(image_size: int, resize: int, classes: Sequence[str]) -> dict:
    """The checkpoint's ``meta["preprocessing"]``: plain data of everything that shaped the model's input.
    ``image_size``/``resize`` in pixels, ``mean``/``std`` per RGB channel of [0, 1] pixels, ``classes`` in
    output-column order."""
    return {
        "resize": int(resize),
        "interpolation": "bilinear",
        "crop": "center",
        "image_size": int(image_size),
        "colour": COLOUR,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "classes": list(classes),
    }


def checkpoint_preprocessing(meta: Mapping) -> dict:
    """``meta["preprocessing"]`` of a checkpoint; for one trained before it was recorded, the same dict built
    from the older keys (``image_size``, ``resize``, ``classes``), which then held for every checkpoint."""
    if "preprocessing" in meta:
        return dict(meta["preprocessing"])
    return preprocessing(meta["image_size"], meta["resize"], meta["classes"])


def eval_transform_for(prep: Mapping, source: str | os.PathLike = "checkpoint") -> transforms.Compose:
    """The evaluation/prediction transform a ``preprocessing`` dict describes; ``InputError(source, ...)`` if
    it records a step this code does not do (another colour handling, interpolation or crop)."""
    supported = {"interpolation": "bilinear", "crop": "center", "colour": COLOUR}
    wrong = [f"{k} {prep.get(k)!r} (supported: {v!r})" for k, v in supported.items() if prep.get(k) != v]
    if wrong:
        raise InputError(source, f"preprocessing this code cannot reproduce: {', '.join(wrong)}")
    return eval_transform(int(prep["image_size"]), int(prep["resize"]), prep["mean"], prep["std"])


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """The image at ``path`` as 3-channel RGB (greyscale replicated), decoded; ``InputError`` if unreadable.
    The one reader of training, evaluation and prediction images."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as exc:  # a file changed since ingest
        raise InputError(path, f"unreadable image ({exc})") from None


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
        img = open_rgb(path)
        if self.transform is not None:
            img = self.transform(img)
        return img, target


class ScanImages(torch.utils.data.Dataset):
    """New, unlabeled scans: item ``i`` is the image tensor (3, S, S) of ``root / paths[i]``, read and
    transformed as :class:`OctImages` does."""

    def __init__(self, root: str | os.PathLike, paths: Sequence[str], transform=None):
        self.root = Path(root)
        self.paths = [str(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = open_rgb(self.root / self.paths[i])
        return self.transform(img) if self.transform is not None else img
