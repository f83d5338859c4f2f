"""Reading patch HDF5 files, and refusing malformed ones with one clear message (stacks: tests/preprocess)."""

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medflow.errors import InputError
from medflow.segmentation.data import PatchDataset, by_case
from tests.segmentation.fakes import PATCH


def test_patch_dataset_streams_every_patch(dataset):
    files = [dataset["patches"][c] for c in dataset["splits"]["train"]]
    ds = PatchDataset(files)
    assert len(ds) == 6 * len(files) and ds.patch_size == PATCH
    image, label = ds[7]  # file 1, patch 1
    with h5py.File(files[1]) as f:
        assert np.array_equal(image.numpy(), f["image"][1])
        assert np.array_equal(label.numpy(), f["label"][1])
    assert image.dtype == label.dtype == torch.float32
    # Worker processes open their own handles.
    batches = list(DataLoader(ds, batch_size=4, num_workers=1))
    assert sum(len(b[0]) for b in batches) == len(ds)


def test_malformed_patch_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["image"] = np.zeros((2, 4, 8, 8, 8), np.float32)
        f["label"] = np.zeros((2, 4, 8, 8, 8), np.uint8)  # 4 label channels, not 3
    with pytest.raises(InputError, match="bad.h5: 'label' must be"):
        PatchDataset([bad])
    not_h5 = tmp_path / "text.h5"
    not_h5.write_text("hello")
    with pytest.raises(InputError, match="text.h5: cannot open as HDF5"):
        PatchDataset([not_h5])


def test_by_case_keys_per_case_files_by_their_stem():
    """The rules pass every case's file as a list; the library picks cases by split through these keys."""
    files = ["results/brats/patches/BraTS20_Training_002.h5", "/abs/BraTS20_Training_010.h5"]
    assert by_case(files) == {"BraTS20_Training_002": files[0], "BraTS20_Training_010": files[1]}
