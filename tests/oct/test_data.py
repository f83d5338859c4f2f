"""OCT loading: the split table, ImageFolder semantics over it and the tutorial's transforms."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medflow.errors import InputError
from medflow.oct.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augment,
    OctImages,
    eval_transform,
    split_table,
    train_transform,
)

AUG = Augment(crop_scale=(0.8, 1.0), rotation=15, brightness=0.2, contrast=0.2, hflip=True)


@pytest.fixture
def table(tmp_path):
    rows = []
    for cls, value in (("NORMAL", 200), ("CNV", 50)):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for n, (w, h) in enumerate([(70, 50), (40, 60)], start=1):
            name = f"{cls}-1000001-{n}.jpeg"
            Image.fromarray(np.full((h, w), value, np.uint8), mode="L").save(tmp_path / "train" / cls / name)
            rows.append(
                {"id": name[:-5], "split": "train", "label": cls, "patient": "1000001", "path": f"train/{cls}/{name}"}
            )
    return tmp_path, pd.DataFrame(rows)


def test_dataset_has_imagefolder_semantics(table):
    root, df = table
    c2i = {"CNV": 0, "DME": 1, "DRUSEN": 2, "NORMAL": 3}
    ds = OctImages(root, df, c2i, eval_transform(32, 36))
    assert ds.classes == ["CNV", "DME", "DRUSEN", "NORMAL"] and ds.class_to_idx == c2i
    assert ds.targets == [3, 3, 0, 0] and len(ds) == 4
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and y == 3
    # A uniform grey image becomes three equal channels, ImageNet-normalised.
    expected = (200 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=0.02)


def test_train_transform_is_random_eval_transform_is_not(table):
    root, _ = table
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80), dtype=np.uint8)).convert("RGB")
    t = train_transform(32, 36, AUG)
    names = [type(s).__name__ for s in t.transforms]
    assert names == [
        "RandomResizedCrop",
        "RandomRotation",
        "ColorJitter",
        "RandomHorizontalFlip",
        "CenterCrop",
        "ToTensor",
        "Normalize",
    ]
    torch.manual_seed(0)
    a, b = t(img), t(img)
    assert a.shape == (3, 32, 32) and not torch.equal(a, b)
    e = eval_transform(32, 36)
    assert torch.equal(e(img), e(img)) and e(img).shape == (3, 32, 32)
    no_flip = train_transform(32, 36, dataclasses.replace(AUG, hflip=False))
    assert "RandomHorizontalFlip" not in [type(s).__name__ for s in no_flip.transforms]


def test_split_table_keeps_one_split_and_maps_every_label_of_the_file(tmp_path):
    rows = [("a", "train", "NORMAL"), ("b", "test", "CNV"), ("c", "train", "DME"), ("d", "val", "DRUSEN")]
    path = tmp_path / "split.csv"
    pd.DataFrame(
        [{"id": i, "split": s, "label": c, "patient": "007", "path": f"{s}/{c}/{i}.jpeg"} for i, s, c in rows]
    ).to_csv(path, index=False)
    part, c2i = split_table(path, "train")
    assert part["id"].tolist() == ["a", "c"] and part.index.tolist() == [0, 1]
    assert part["patient"].tolist() == ["007", "007"]  # ids stay strings
    assert c2i == {"CNV": 0, "DME": 1, "DRUSEN": 2, "NORMAL": 3}
    with pytest.raises(InputError, match="no images in split 'unused'"):
        split_table(path, "unused")
