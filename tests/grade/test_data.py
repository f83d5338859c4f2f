"""medflow.grade.data: the slice index, one split's slices as stored, and the training augmentation."""

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from medflow.grade.data import Augment, GradeSlices, read_index
from medflow.grade.slices import write_slices

SIZE = 32


@pytest.fixture(scope="module")
def slices(cases, tmp_path_factory):
    """The slice file of the session's 16 stacked cases (written as the conftest's run writes it) and its split
    table. The splits interleave in file order (train, val, test, train, ...; grades alternate HGG, LGG), so a
    split's rows are neither one block of the file nor of one grade pattern with another split."""
    stacks, _ = cases
    tmp = tmp_path_factory.mktemp("grade_data")
    ids = sorted(stacks)
    split = pd.DataFrame(
        {
            "id": ids,
            "split": [("train", "val", "test", "train")[i % 4] for i in range(len(ids))],
            "grade": ["HGG" if i % 2 == 0 else "LGG" for i in range(len(ids))],
        }
    )
    split.to_csv(tmp / "split.csv", index=False)
    write_slices(stacks, tmp / "split.csv", tmp / "slices.h5", select="top_k", top_k=3, min_tumour_pixels=5, size=SIZE)
    return tmp / "slices.h5", split


def stored(path, row):
    with h5py.File(path, "r") as f:
        return f["image"][row]


def test_index_holds_the_per_slice_columns_without_the_images(slices):
    path, split = slices
    index = read_index(path)
    assert set(index) == {"case", "split", "grade", "z", "tumour_pixels"}
    with h5py.File(path, "r") as f:
        n = f["image"].shape[0]
        assert index["case"].tolist() == f["case"].asstr()[...].tolist()
        assert index["z"].tolist() == f["z"][...].tolist()
    assert all(len(v) == n for v in index.values())
    assert index["case"].dtype.kind == "U" and index["split"].dtype.kind == "U" and index["grade"].dtype == np.int64
    # Every case's split and grade are those of the split file.
    truth = split.set_index("id")
    assert index["split"].tolist() == truth.loc[index["case"], "split"].tolist()
    assert index["grade"].tolist() == (truth.loc[index["case"], "grade"] == "HGG").astype(int).tolist()


@pytest.mark.parametrize("name", ["train", "val", "test"])
def test_a_split_holds_only_its_slices_with_cases_and_targets_aligned(slices, name):
    path, split = slices
    index = read_index(path)
    ds = GradeSlices(path, name)
    assert ds.rows.tolist() == np.flatnonzero(index["split"] == name).tolist()
    assert len(ds) == len(ds.rows) > 0
    assert set(ds.cases) == set(split.loc[split["split"] == name, "id"])
    grade = split.set_index("id")["grade"]
    assert ds.targets.tolist() == [int(grade[c] == "HGG") for c in ds.cases]
    # Row by row: case, grade and image of item i are those of the file's row ds.rows[i].
    assert ds.cases.tolist() == index["case"][ds.rows].tolist()
    assert ds.targets.tolist() == index["grade"][ds.rows].tolist()
    # A given index (train and evaluate read it once) selects the same slices.
    given = GradeSlices(path, name, index=index)
    assert given.rows.tolist() == ds.rows.tolist() and given.cases.tolist() == ds.cases.tolist()


def test_without_augment_an_item_is_the_stored_slice_of_its_case(slices):
    path, _ = slices
    ds = GradeSlices(path, "val")
    with h5py.File(path, "r") as f:
        for i in range(len(ds)):
            x, y, j = ds[i]
            assert np.array_equal(x.numpy(), f["image"][ds.rows[i]])
            assert f["case"].asstr()[ds.rows[i]] == ds.cases[i] and y == f["grade"][ds.rows[i]] == ds.targets[i]
            assert j == i


def test_items_batch_into_what_predict_and_the_loss_take(slices):
    """Batches are (x (B, 4, S, S) float32, grade (B,) int64, dataset index (B,) int64): cross-entropy takes the
    grade, and predict_slices keeps each probability with ``ds.cases[index]``."""
    path, _ = slices
    ds = GradeSlices(path, "test")
    x, y, i = ds[0]
    assert x.dtype == torch.float32 and x.shape == (4, SIZE, SIZE)
    assert type(y) is int and type(i) is int
    seen = []
    for xb, yb, ib in DataLoader(ds, batch_size=4, shuffle=True):
        assert xb.dtype == torch.float32 and xb.shape[1:] == (4, SIZE, SIZE)
        assert yb.dtype == ib.dtype == torch.int64
        assert yb.tolist() == ds.targets[ib.numpy()].tolist()
        assert all(torch.equal(xb[k], ds[int(ib[k])][0]) for k in range(len(ib)))
        seen += ib.tolist()
    assert sorted(seen) == list(range(len(ds)))


def test_hflip_mirrors_left_right_about_half_the_time(slices):
    path, _ = slices
    ds = GradeSlices(path, "train", Augment(hflip=True))
    plain = torch.from_numpy(stored(path, ds.rows[0]))
    mirrored = plain.flip(-1)  # X is the last axis; the tumour sits right of centre, so the two differ
    assert not torch.equal(plain, mirrored)
    torch.manual_seed(0)
    draws = [ds[0][0] for _ in range(40)]
    flipped = [torch.equal(x, mirrored) for x in draws]
    assert all(f or torch.equal(x, plain) for f, x in zip(flipped, draws)), "a flip or nothing, never anything else"
    assert 10 <= sum(flipped) <= 30


@pytest.mark.parametrize("s", [0.1, 0.5])
def test_intensity_scales_each_channel_within_one_plus_minus_s(slices, s):
    path, _ = slices
    ds = GradeSlices(path, "train", Augment(intensity=s))
    plain = stored(path, ds.rows[1])
    brain = plain != 0
    torch.manual_seed(1)
    factors = []
    for _ in range(20):
        x = ds[1][0].numpy()
        assert x.dtype == np.float32
        assert np.all(x[~brain] == 0), "the background stays 0"
        f = np.array([np.median(x[c][brain[c]] / plain[c][brain[c]]) for c in range(4)])
        np.testing.assert_allclose(x, plain * f[:, None, None].astype(np.float32), rtol=1e-5, atol=1e-6)
        factors.append(f)
    factors = np.array(factors)
    assert np.all((factors >= 1 - s - 1e-6) & (factors <= 1 + s + 1e-6))
    assert factors.max() - factors.min() > s, "drawn afresh, spread over the range"
    assert len({round(v, 6) for v in factors[0]}) == 4, "one factor per channel"
    assert np.array_equal(GradeSlices(path, "train")[1][0].numpy(), plain), "no augment: unchanged"
