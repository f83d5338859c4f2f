"""The BraTS label/region mapping: WT={1,2,4}, TC={1,4}, ET={4}, with 4 stored as 3."""

import numpy as np
import pytest
import torch

from medflow.segmentation import regions


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
    probs = np.array([[0.9, 0.2, 0.6, 0.4],
                      [0.1, 0.3, 0.7, 0.1],
                      [0.2, 0.1, 0.1, 0.45]], np.float32)
    assert regions.probabilities_to_labels(probs, 0.5).tolist() == [1, 0, 2, 0]
    assert regions.probabilities_to_labels(probs, 0.4).tolist() == [1, 0, 2, 3]
    batch = torch.from_numpy(probs)[None]  # (B=1, 3, 4): labels along axis 1
    assert regions.probabilities_to_labels(batch, 0.4, axis=1)[0].tolist() == [1, 0, 2, 3]


def test_onehot_and_labels_are_inverse():
    stored = np.random.default_rng(1).integers(0, 4, size=(4, 6, 6)).astype(np.uint8)
    onehot = regions.labels_to_onehot(stored)
    assert onehot.shape == (3, 4, 6, 6) and onehot.sum(axis=0).max() == 1
    assert np.array_equal(regions.onehot_to_labels(onehot), stored)
