"""Fixtures of the segmentation tests: a small fake data set on disk, shared by the session."""

import pytest
import torch

from tests.segmentation.fakes import make_case, write_patches, write_split, write_stack

torch.set_num_threads(1)  # the test machine is shared


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """Eight fake cases: 5 train, 1 val, 2 test, with stacks, patches and a split file."""
    root = tmp_path_factory.mktemp("brats")
    splits = {
        "train": [f"BraTS20_Training_{i:03d}" for i in range(1, 6)],
        "val": ["BraTS20_Training_006"],
        "test": ["BraTS20_Training_007", "BraTS20_Training_008"],
    }
    stacks, patches = {}, {}
    for i, case in enumerate(sorted(c for cs in splits.values() for c in cs)):
        image, label = make_case(i)
        stacks[case] = str(root / f"stack_{case}.h5")
        patches[case] = str(root / f"patches_{case}.h5")
        write_stack(stacks[case], case, image, label)
        write_patches(patches[case], image, label, n=6, seed=100 + i)
    split = root / "split.csv"
    write_split(split, splits)
    return {"root": root, "splits": splits, "stacks": stacks, "patches": patches, "split": str(split)}
