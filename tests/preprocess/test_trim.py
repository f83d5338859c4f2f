"""Slice trimming: the kept range comes from the data (any modality or label), plus an optional margin."""

from __future__ import annotations

import numpy as np
import pytest

from medflow.errors import InputError
from medflow.preprocess.trim import kept_range, signal_per_slice, trim_range


def profile(n, on):
    p = np.zeros(n, bool)
    p[list(on)] = True
    return p


@pytest.mark.parametrize(
    "on, margin, expected",
    [
        ([3, 4, 9], 0, (3, 10)),  # inner empty slices are kept
        ([3, 9], 2, (1, 12)),
        ([1, 10], 5, (0, 12)),  # the margin stops at the volume's ends
        ([0, 11], 0, (0, 12)),
        ([6], 0, (6, 7)),
    ],
)
def test_kept_range(on, margin, expected):
    assert kept_range(profile(12, on), margin) == expected


def test_kept_range_of_an_empty_profile_is_none():
    assert kept_range(profile(12, []), 3) is None


def test_signal_per_slice_is_along_the_axial_axis():
    v = np.zeros((5, 6, 7))
    v[2, 3, 4] = -0.5  # any nonzero value is signal
    assert np.flatnonzero(signal_per_slice(v)).tolist() == [4]


def test_trim_range_is_the_union_over_modalities_and_label(nifti):
    shape = (8, 9, 20)
    vols = []
    for i, (lo, hi) in enumerate([(5, 12), (4, 10), (6, 15), (5, 13)]):
        v = np.zeros(shape, np.float32)
        v[2:5, 3:6, lo:hi] = 1.0
        vols.append(nifti(f"m{i}.nii", v))
    seg = np.zeros(shape, np.uint8)
    seg[3, 3, 16] = 2  # a label beyond every modality's signal is never dropped
    seg_path = nifti("seg.nii", seg)
    assert trim_range(vols)["kept_z_range"] == [4, 15]
    assert trim_range(vols, label_path=seg_path) == {"kept_z_range": [4, 17], "n_slices": 20, "margin": 0}
    assert trim_range(vols, margin=2, label_path=seg_path)["kept_z_range"] == [2, 19]


def test_no_signal_is_an_input_error(nifti):
    path = nifti("flair.nii", np.zeros((4, 4, 6), np.float32))
    with pytest.raises(InputError, match="no slice carries signal"):
        trim_range([path])
