"""The BraTS label/region mapping: WT={1,2,4}, TC={1,4}, ET={4}, with 4 stored as 3."""

import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from medflow.segmentation import regions

torch.set_num_threads(1)


def test_stored_and_brats_labels_round_trip():
    brats = np.array([0, 1, 2, 4, 4, 0], np.uint8)
    stored = regions.to_stored(brats)
    assert stored.tolist() == [0, 1, 2, 3, 3, 0]
    assert regions.to_brats(stored).tolist() == brats.tolist()
    assert regions.to_brats(stored).dtype == np.uint8


@pytest.mark.parametrize("bad", [[0, 3], [5], [0, 1, 7]])
def test_brats_labels_outside_0_1_2_4_are_rejected(bad):
    with pytest.raises(ValueError, match="0,1,2,4"):
        regions.to_stored(np.array(bad))


def test_region_membership_of_every_label():
    # One voxel per stored label 0, 1, 2, 3 (= BraTS 0, 1, 2, 4).
    m = regions.masks(np.array([0, 1, 2, 3]))
    assert m["WT"].tolist() == [False, True, True, True]
    assert m["TC"].tolist() == [False, True, False, True]
    assert m["ET"].tolist() == [False, False, False, True]
    assert m["label_1"].tolist() == [False, True, False, False]
    assert m["label_2"].tolist() == [False, False, True, False]
    assert m["label_4"].tolist() == [False, False, False, True]
    assert list(m) == list(regions.STRUCTURES)


def test_torch_masks_match_numpy():
    stored = np.random.default_rng(0).integers(0, 4, size=(3, 5, 7))
    np_m = regions.masks(stored)
    t_m = regions.masks(torch.from_numpy(stored))
    for name in regions.STRUCTURES:
        assert np.array_equal(t_m[name].numpy(), np_m[name])


def test_probabilities_to_labels_takes_the_most_probable_label_above_threshold():
    # Channels are stored labels 1, 2, 3; four voxels.
    probs = np.array([[0.9, 0.2, 0.6, 0.4], [0.1, 0.3, 0.7, 0.1], [0.2, 0.1, 0.1, 0.45]], np.float32)
    assert regions.probabilities_to_labels(probs, 0.5).tolist() == [1, 0, 2, 0]
    assert regions.probabilities_to_labels(probs, 0.4).tolist() == [1, 0, 2, 3]
    batch = torch.from_numpy(probs)[None]  # (B=1, 3, 4): labels along axis 1
    assert regions.probabilities_to_labels(batch, 0.4, axis=1)[0].tolist() == [1, 0, 2, 3]


def test_onehot_and_labels_are_inverse():
    stored = np.random.default_rng(1).integers(0, 4, size=(4, 6, 6)).astype(np.uint8)
    onehot = regions.labels_to_onehot(stored)
    assert onehot.shape == (3, 4, 6, 6) and onehot.sum(axis=0).max() == 1
    assert np.array_equal(regions.onehot_to_labels(onehot), stored)


# --- Properties over random label maps -----------------------------------------------------------------
SHAPES = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6)
stored_maps = hnp.arrays(st.sampled_from([np.uint8, np.int64]), SHAPES, elements=st.integers(0, 3))
brats_maps = hnp.arrays(np.uint8, SHAPES, elements=st.sampled_from([0, 1, 2, 4]))
# The BraTS definition, written out in BraTS labels (not through the module's tables).
BRATS_REGIONS = {"WT": {1, 2, 4}, "TC": {1, 4}, "ET": {4}, "label_1": {1}, "label_2": {2}, "label_4": {4}}


@given(stored_maps)
def test_region_masks_follow_the_brats_definition_for_any_label_map(stored):
    brats = regions.to_brats(stored)
    # Stored 0, 1, 2, 3 are BraTS 0, 1, 2, 4, voxel by voxel.
    assert brats.shape == stored.shape and brats.dtype == np.uint8
    assert np.array_equal(brats, np.where(stored == 3, 4, stored))
    m = regions.masks(stored)
    assert list(m) == list(regions.STRUCTURES)
    for name, labels in BRATS_REGIONS.items():
        expected = np.zeros(stored.shape, bool)
        for label in labels:
            expected |= brats == label
        assert m[name].shape == stored.shape and np.array_equal(m[name], expected), name
    # The regions nest: ET within TC within WT; WT is everything but background.
    assert not (m["ET"] & ~m["TC"]).any() and not (m["TC"] & ~m["WT"]).any()
    assert np.array_equal(m["WT"], stored != 0)


@given(stored_maps, brats_maps)
def test_stored_and_brats_labels_round_trip_for_any_label_map(stored, brats):
    assert np.array_equal(regions.to_stored(regions.to_brats(stored)), stored)
    back = regions.to_stored(brats)
    assert back.dtype == np.uint8 and back.max(initial=0) <= 3
    assert np.array_equal(regions.to_brats(back), brats)


@given(stored_maps)
def test_onehot_round_trip_for_any_label_map(stored):
    onehot = regions.labels_to_onehot(stored)
    assert onehot.shape == (3, *stored.shape) and onehot.dtype == np.uint8
    for c in range(3):  # channel c is stored label c + 1
        assert np.array_equal(onehot[c], (stored == c + 1).astype(np.uint8))
    assert np.array_equal(regions.onehot_to_labels(onehot), stored)
    t = regions.onehot_to_labels(torch.from_numpy(onehot))
    assert t.dtype == torch.int64 and np.array_equal(t.numpy(), stored)


@given(stored_maps)
def test_torch_masks_equal_numpy_masks_for_any_label_map(stored):
    np_m = regions.masks(stored)
    t_m = regions.masks(torch.from_numpy(stored.astype(np.int64)))
    for name in regions.STRUCTURES:
        assert t_m[name].dtype == torch.bool and np.array_equal(t_m[name].numpy(), np_m[name]), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_masks_of_a_cuda_label_map_stay_on_its_device():
    stored = np.random.default_rng(2).integers(0, 4, size=(4, 5, 6))
    t_m = regions.masks(torch.from_numpy(stored).cuda())
    for name, expected in regions.masks(stored).items():
        assert t_m[name].is_cuda and np.array_equal(t_m[name].cpu().numpy(), expected), name


@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.just(3), st.integers(1, 5), st.integers(1, 5)),
        # Values exactly at a threshold and ties between channels are drawn often.
        elements=st.one_of(st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]), st.floats(0, 1, width=32)),
    ),
    st.sampled_from([0.3, 0.5, 0.7]),
)
def test_probabilities_to_labels_follows_the_per_voxel_rule(probs, threshold):
    # Per voxel: the channel with the highest probability (first on ties), if it reaches the threshold
    # (compared in the probabilities' own precision, as numpy and torch compare an array with a float).
    expected = np.zeros(probs.shape[1:], np.uint8)
    for idx in np.ndindex(*probs.shape[1:]):
        p = [probs[(c, *idx)] for c in range(3)]
        if max(p) >= probs.dtype.type(threshold):
            expected[idx] = p.index(max(p)) + 1
    got = regions.probabilities_to_labels(probs, threshold)
    assert got.dtype == np.uint8 and np.array_equal(got, expected)
    batch = torch.from_numpy(probs)[None]  # (1, 3, ...): labels along axis 1
    assert np.array_equal(regions.probabilities_to_labels(batch, threshold, axis=1)[0].numpy(), expected)


def test_label_maps_from_lists_and_empty_arrays():
    # Plain lists take the numpy path; an empty map has empty masks and converts without error.
    m = regions.masks([[0, 3], [1, 2]])
    assert m["TC"].tolist() == [[False, True], [True, False]]
    empty = np.zeros((0, 4), np.uint8)
    assert regions.to_brats(empty).shape == (0, 4) and regions.to_stored(empty).shape == (0, 4)
    assert regions.labels_to_onehot(empty).shape == (3, 0, 4)


@pytest.mark.parametrize("bad", [[0, 4], [-1, 2], [7]])
def test_stored_labels_outside_0_to_3_are_rejected(bad):
    # The message names the labels found, so a user sees which file holds BraTS (not stored) labels.
    with pytest.raises(ValueError, match=re.escape(f"0..3, got {sorted(set(bad))}")):
        regions.to_brats(np.array(bad))


def test_default_threshold_is_one_half_and_onehot_along_any_axis():
    probs = np.array([[0.5, 0.49], [0.2, 0.1], [0.1, 0.3]], np.float32)  # (3 labels, 2 voxels)
    assert regions.probabilities_to_labels(probs).tolist() == [1, 0]
    stored = np.array([[0, 1, 2, 3], [3, 3, 0, 1]], np.uint8)  # (B=2, 4)
    batch = np.moveaxis(regions.labels_to_onehot(stored), 0, 1)  # (B, 3, 4): labels along axis 1
    assert np.array_equal(regions.onehot_to_labels(batch, axis=1), stored)
    assert np.array_equal(regions.onehot_to_labels(torch.from_numpy(batch), axis=1).numpy(), stored)


def test_region_tables():
    assert regions.REGIONS_STORED == {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
    assert regions.STRUCTURES == ("WT", "TC", "ET", "label_1", "label_2", "label_4")
