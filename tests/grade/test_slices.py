"""Slice selection (tumour / top-k by area), per-channel standardisation, and the slice HDF5."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from medflow.errors import InputError
from medflow.grade.slices import resize_slices, select_slices, standardise, tumour_area, write_slices
from tests.grade.conftest import make_stack


def label_with_areas(areas, size=8):
    lab = np.zeros((len(areas), size, size), np.uint8)
    for z, a in enumerate(areas):
        lab[z].flat[:a] = 2
    return lab


def test_tumour_selects_every_slice_above_the_minimum():
    lab = label_with_areas([0, 3, 10, 0, 7, 1])
    assert tumour_area(lab).tolist() == [0, 3, 10, 0, 7, 1]
    assert select_slices(lab, "tumour", top_k=2, min_tumour_pixels=1).tolist() == [1, 2, 4, 5]
    assert select_slices(lab, "tumour", top_k=2, min_tumour_pixels=5).tolist() == [2, 4]


def test_top_k_takes_the_largest_tumour_areas_in_z_order():
    lab = label_with_areas([5, 3, 10, 0, 7, 7])
    assert select_slices(lab, "top_k", top_k=3, min_tumour_pixels=1).tolist() == [2, 4, 5]
    assert select_slices(lab, "top_k", top_k=2, min_tumour_pixels=1).tolist() == [2, 4]  # tie: lower z first
    assert select_slices(lab, "top_k", top_k=10, min_tumour_pixels=4).tolist() == [0, 2, 4, 5]
    assert select_slices(label_with_areas([0, 0]), "top_k", top_k=3, min_tumour_pixels=1).size == 0


def test_standardise_per_channel_over_the_brain():
    rng = np.random.default_rng(0)
    img = np.zeros((4, 3, 6, 6), np.float32)
    img[:, :, 1:5, 1:5] = rng.uniform(1, 100, (4, 3, 4, 4)) * np.array([1, 10, 100, 1000])[:, None, None, None]
    out = standardise(img)
    brain = img[0] > 0
    for c in range(4):
        assert out[c][brain].mean() == pytest.approx(0, abs=1e-5)
        assert out[c][brain].std() == pytest.approx(1, abs=1e-4)
    assert (out[:, ~brain] == 0).all()


def test_resize_only_when_needed():
    x = np.random.default_rng(0).random((2, 4, 40, 40)).astype(np.float32)
    assert resize_slices(x, 40) is x
    y = resize_slices(x, 20)
    assert y.shape == (2, 4, 20, 20) and abs(y.mean() - x.mean()) < 0.01


def test_slice_file_holds_the_selected_standardised_slices(cases, tmp_path):
    stacks, split_csv = cases
    out = tmp_path / "slices.h5"
    counts = write_slices(stacks, split_csv, out, select="top_k", top_k=3, min_tumour_pixels=5, size=32)
    split = pd.read_csv(split_csv)
    assert counts == {s: 3 * int((split["split"] == s).sum()) for s in ("train", "val", "test")}
    with h5py.File(out, "r") as f:
        assert f["image"].shape == (3 * len(split), 4, 32, 32) and f["image"].dtype == np.float32
        cases_col = f["case"].asstr()[...]
        assert sorted(set(cases_col)) == sorted(split["id"])
        grades = dict(zip(split["id"], split["grade"]))
        assert [int(g) for g in f["grade"][...]] == [1 if grades[c] == "HGG" else 0 for c in cases_col]
        assert json.loads(f.attrs["modalities"]) == ["flair", "t1", "t1ce", "t2"]
        first = cases_col[0]
        zs = f["z"][...][cases_col == first]
        with h5py.File(stacks[first], "r") as s:
            lab = s["label"][...]
            img = s["image"][...]
        assert zs.tolist() == select_slices(lab, "top_k", 3, 5).tolist()
        assert f["tumour_pixels"][...][cases_col == first].tolist() == tumour_area(lab)[zs].tolist()
        assert np.allclose(f["image"][0], standardise(img)[:, zs[0]], atol=1e-5)


def test_slices_are_resized_to_the_configured_size(cases, tmp_path):
    stacks, split_csv = cases
    write_slices(stacks, split_csv, tmp_path / "s.h5", select="tumour", top_k=1, min_tumour_pixels=1, size=48)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["image"].shape[1:] == (4, 48, 48)


def test_case_without_tumour_is_listed_and_left_out(tmp_path):
    stacks = {
        "BraTS20_Training_001": str(make_stack(tmp_path / "a.h5", "a", "HGG", 0)),
        "BraTS20_Training_002": str(make_stack(tmp_path / "b.h5", "b", "LGG", 1, tumour_z=(0, 0))),
    }
    split = tmp_path / "split.csv"
    pd.DataFrame({"id": list(stacks), "split": ["train", "test"], "grade": ["HGG", "LGG"]}).to_csv(split, index=False)
    write_slices(stacks, split, tmp_path / "s.h5", select="tumour", top_k=1, min_tumour_pixels=1, size=32)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert json.loads(f.attrs["cases_without_slices"]) == ["BraTS20_Training_002"]
        assert set(f["case"].asstr()[...]) == {"BraTS20_Training_001"}


def test_bad_inputs_name_the_file(cases, tmp_path):
    stacks, split_csv = cases
    missing = dict(list(stacks.items())[1:])
    with pytest.raises(InputError, match="has no stacked HDF5") as e:
        write_slices(missing, split_csv, tmp_path / "s.h5", select="tumour", top_k=1, min_tumour_pixels=1, size=32)
    assert e.value.path == str(split_csv)
    bad_grade = tmp_path / "split.csv"
    pd.read_csv(split_csv).assign(grade="GBM").to_csv(bad_grade, index=False)
    with pytest.raises(InputError, match="not HGG or LGG"):
        write_slices(stacks, bad_grade, tmp_path / "s.h5", select="tumour", top_k=1, min_tumour_pixels=1, size=32)
    broken = dict(stacks)
    first = next(iter(broken))
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    broken[first] = str(tmp_path / "broken.h5")
    with pytest.raises(InputError) as e:
        write_slices(broken, split_csv, tmp_path / "s.h5", select="tumour", top_k=1, min_tumour_pixels=1, size=32)
    assert e.value.path == str(tmp_path / "broken.h5")
    assert not (tmp_path / "s.h5").exists(), "nothing half-written"


def test_stacks_are_read_and_checked_by_the_one_stack_reader(cases, tmp_path):
    stacks, split_csv = cases
    first = next(iter(stacks))
    bad = tmp_path / "no_affine.h5"
    bad.write_bytes(open(stacks[first], "rb").read())
    with h5py.File(bad, "a") as f:
        del f.attrs["affine"]
    with pytest.raises(InputError, match="'affine' is missing") as e:
        write_slices(
            {**stacks, first: str(bad)},
            split_csv,
            tmp_path / "s.h5",
            select="tumour",
            top_k=1,
            min_tumour_pixels=1,
            size=32,
        )
    assert e.value.path == str(bad)
