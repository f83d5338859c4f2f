"""Dice and HD95 against hand-computed cases, including the BraTS rules for empty masks."""

import numpy as np
import pytest

from medflow.segmentation import metrics


def vol(shape=(8, 10, 10)):
    return np.zeros(shape, bool)


def test_dice_hand_computed():
    a, b = vol(), vol()
    a[2, 2:6, 2:6] = True  # 16 voxels
    b[2, 4:8, 2:6] = True  # 16 voxels, 8 shared
    assert metrics.dice(a, b) == pytest.approx(2 * 8 / 32)
    assert metrics.dice(a, a) == 1.0


def test_empty_masks_follow_brats():
    empty, some = vol(), vol()
    some[1, 1, 1] = True
    assert metrics.dice(empty, empty) == 1.0
    assert metrics.hd95(empty, empty, (1, 1, 1)) == 0.0
    assert metrics.dice(empty, some) == 0.0 and metrics.dice(some, empty) == 0.0
    assert metrics.hd95(empty, some, (1, 1, 1)) == metrics.HD95_EMPTY == 373.13
    assert metrics.hd95(some, empty, (1, 1, 1)) == metrics.HD95_EMPTY


def test_hd95_of_two_voxels_uses_the_spacing():
    a, b = vol(), vol()
    a[2, 5, 5] = True
    b[5, 5, 1] = True  # 3 voxels along z, 4 along x
    assert metrics.hd95(a, b, (1, 1, 1)) == pytest.approx(5.0)
    assert metrics.hd95(a, b, (2, 1, 1)) == pytest.approx(np.hypot(6, 4))


def test_hd95_of_parallel_slabs():
    a, b = vol(), vol()
    a[2] = True  # whole slices touching the array border: every voxel is surface
    b[5] = True
    assert metrics.hd95(a, b, (2.5, 1, 1)) == pytest.approx(7.5)


def test_hd95_ignores_a_far_outlier_that_hausdorff_would_not():
    truth = vol((12, 10, 10))
    truth[0] = True  # 100 surface voxels at z=0
    pred = truth.copy()
    pred[9, 0, 0] = True  # 1 voxel of 101 lies 9 mm away: above the 95th percentile
    assert metrics.hd95(pred, truth, (1, 1, 1)) == 0.0
    pred[9, :, 0] = True  # 10 of 110 voxels (9%) lie 9 mm away: inside the top 5% no longer
    assert metrics.hd95(pred, truth, (1, 1, 1)) == pytest.approx(9.0)


def test_hd95_is_symmetric_and_independent_of_cropping():
    rng = np.random.default_rng(0)
    a = rng.random((20, 30, 30)) > 0.97
    b = np.roll(a, 3, axis=2) | (rng.random((20, 30, 30)) > 0.99)
    big_a, big_b = np.zeros((40, 60, 60), bool), np.zeros((40, 60, 60), bool)
    big_a[10:30, 15:45, 15:45], big_b[10:30, 15:45, 15:45] = a, b
    h = metrics.hd95(a, b, (1.5, 1, 1))
    assert h == pytest.approx(metrics.hd95(b, a, (1.5, 1, 1)))
    assert h == pytest.approx(metrics.hd95(big_a, big_b, (1.5, 1, 1)))


def test_case_metrics_by_region_and_label():
    truth = np.array([1, 1, 2, 2, 3, 0], np.uint8).reshape(1, 1, 6)
    pred = np.array([1, 2, 2, 0, 3, 3], np.uint8).reshape(1, 1, 6)
    res = metrics.case_metrics(pred, truth, (1, 1, 1))
    expected = {
        "WT": 2 * 4 / 10,  # truth voxels 0-4, pred 0,1,2,4,5
        "TC": 2 * 2 / 6,  # truth 0,1,4; pred 0,4,5
        "ET": 2 * 1 / 3,  # truth 4; pred 4,5
        "label_1": 2 * 1 / 3,
        "label_2": 2 * 1 / 4,
        "label_4": 2 * 1 / 3,
    }
    assert {k: v["dice"] for k, v in res.items()} == pytest.approx(expected)
    # ET: pred surface {4, 5} lies {0, 1} from truth, truth {4} lies 0 from pred: the 95th
    # percentile of [0, 1] with linear interpolation (numpy's, MedPy's) is 0.95.
    assert res["ET"]["hd95"] == pytest.approx(0.95)


def test_summarise_means_over_cases():
    per_case = {"a": {"WT": {"dice": 1.0, "hd95": 0.0}}, "b": {"WT": {"dice": 0.5, "hd95": 373.13}}}
    s = metrics.summarise(per_case)
    assert s["WT"]["dice"] == pytest.approx(0.75)
    assert s["WT"]["hd95"] == pytest.approx(186.565)
    assert s["WT"]["dice_median"] == pytest.approx(0.75)
