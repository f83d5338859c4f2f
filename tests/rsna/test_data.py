"""The data sets and loaders over the preprocessing HDF5."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from medflow.errors import InputError
from medflow.rsna import data


def test_split_indices_follow_the_patient_split(prepared):
    idx = data.split_indices(prepared / "images.h5", prepared / "split.csv")
    split = pd.read_csv(prepared / "split.csv", dtype={"patientId": str})
    assert {k: len(v) for k, v in idx.items()} == split["split"].value_counts().to_dict()
    assert sorted(np.concatenate(list(idx.values()))) == list(range(len(split)))
    ids = data.read_info(prepared / "images.h5").patient_ids
    where = dict(zip(split["patientId"], split["split"]))
    assert all(where[ids[i]] == name for name, rows in idx.items() for i in rows)


def test_a_patient_without_a_split_is_an_input_error(prepared, tmp_path):
    split = pd.read_csv(prepared / "split.csv", dtype={"patientId": str})
    split.iloc[1:].to_csv(tmp_path / "split.csv", index=False)
    with pytest.raises(InputError, match=f"patientId {split['patientId'].iloc[0]} .* has no split"):
        data.split_indices(prepared / "images.h5", tmp_path / "split.csv")


def test_items_are_the_hdf5_rows_and_the_loader_keeps_their_order(prepared):
    path = prepared / "images.h5"
    with h5py.File(path, "r") as h5:
        image, meta, target = h5["image"][:], h5["meta"][:], h5["target"][:]
        features = json.loads(h5.attrs["meta_features"])
    info = data.read_info(path)
    assert info.meta_features == features and info.size == image.shape[-1] == 24
    np.testing.assert_array_equal(info.targets, target)
    rows = [5, 0, 17, 3]
    ds = data.H5Patients(path, rows)
    img, m, y = ds[2]
    assert img.dtype == torch.uint8 and m.dtype == torch.float32 and y.dtype == torch.float32
    np.testing.assert_array_equal(img.numpy(), image[17])
    np.testing.assert_array_equal(m.numpy(), meta[17])
    assert float(y) == target[17]
    batches = list(data.eval_loader(path, rows, batch_size=3, device=torch.device("cpu"), threads=1))
    assert [len(b[0]) for b in batches] == [3, 1]
    np.testing.assert_array_equal(torch.cat([b[0] for b in batches]).numpy(), image[rows])
    np.testing.assert_array_equal(torch.cat([b[2] for b in batches]).numpy(), target[rows])
