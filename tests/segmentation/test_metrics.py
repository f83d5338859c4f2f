"""Dice and HD95 against hand-computed cases (including the BraTS rules for empty masks) and, for solid
3D objects at anisotropic spacing, against a brute-force surface distance and MONAI."""

import numpy as np
import pytest

from medflow.segmentation import metrics, regions


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


# --- Solid 3D objects at anisotropic spacing, against independent references -------------------------
# Solid objects have interior voxels, so HD95 over the whole mask instead of its surface, or a
# 26-connected surface (a thinner shell), give different numbers; all-surface masks cannot tell.

SPACING = (2.0, 1.0, 0.7)  # mm along (z, y, x)
SHAPE = (14, 22, 26)


def sphere(center, radius_mm, shape=SHAPE, spacing=SPACING):
    """Ball of ``radius_mm`` around ``center`` (voxel indices), in mm at ``spacing`` (an ellipsoid in voxels)."""
    grid = np.indices(shape, dtype=float)
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grid, center, spacing)) <= radius_mm**2


def box(lo, hi, shape=SHAPE):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def brute_surface(mask):
    """Mask voxels with at least one background face neighbour (outside the array is background)."""
    padded = np.pad(mask, 1)
    inner = np.ones_like(mask)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return mask & ~inner


def brute_hd95(a, b, spacing):
    """Every surface voxel of one mask to every surface voxel of the other, Euclidean in mm; the
    larger of the two directed 95th percentiles (numpy's linear interpolation)."""
    pa = np.argwhere(brute_surface(a)) * np.asarray(spacing)
    pb = np.argwhere(brute_surface(b)) * np.asarray(spacing)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


SOLID_PAIRS = {
    "sphere shifted in y and x": (sphere((7, 11, 13), 6), sphere((7, 13, 16), 6)),
    "sphere inside a larger one": (sphere((7, 11, 13), 7), sphere((7, 11, 13), 4)),
    "resized and offset spheres": (sphere((7, 11, 13), 7), sphere((6, 9, 15), 5)),
    "offset cubes": (box((2, 3, 4), (8, 12, 14)), box((4, 6, 7), (10, 16, 20))),
    "sphere in a cube": (sphere((7, 11, 13), 6), box((3, 5, 6), (11, 17, 20))),
    "cube on the array border vs sphere": (box((0, 0, 0), (6, 10, 12)), sphere((3, 6, 6), 5)),
}


@pytest.mark.parametrize("name", SOLID_PAIRS)
def test_hd95_of_solid_objects_equals_brute_force_surface_distance(name):
    a, b = SOLID_PAIRS[name]
    expected = brute_hd95(a, b, SPACING)
    assert metrics.hd95(a, b, SPACING) == pytest.approx(expected, rel=1e-9)
    assert metrics.hd95(b, a, SPACING) == pytest.approx(expected, rel=1e-9)


def test_brute_force_surface_is_the_face_connected_shell():
    # The reference itself: a 3x3x3 cube has one interior voxel; a 5-voxel plus sign has none.
    cube = box((1, 1, 1), (4, 4, 4), (5, 5, 5))
    assert brute_surface(cube).sum() == 26 and not brute_surface(cube)[2, 2, 2]
    # A voxel whose only background neighbours are diagonal is interior under the 6-neighbourhood.
    cross = np.zeros((5, 5, 5), bool)
    cross[2, 1:4, 1:4] = cross[1:4, 2, 2] = True
    assert brute_surface(cross).sum() == cross.sum() - 1 and not brute_surface(cross)[2, 2, 2]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_hd95_and_dice_of_solid_objects_equal_monai():
    # MONAI's surface is also mask XOR its face-connected (scipy default) erosion, padded with background.
    monai_metrics = pytest.importorskip("monai.metrics")  # a development dependency; its import costs ~8 s CPU
    import torch

    torch.set_num_threads(1)

    for name, (a, b) in SOLID_PAIRS.items():
        ta, tb = torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]
        ref = monai_metrics.compute_hausdorff_distance(
            ta, tb, include_background=True, percentile=95, spacing=list(SPACING)
        )
        assert metrics.hd95(a, b, SPACING) == pytest.approx(float(ref), rel=1e-5), name
        ref_dice = monai_metrics.DiceMetric(include_background=True, reduction="none")(ta.float(), tb.float())
        assert metrics.dice(a, b) == pytest.approx(float(ref_dice), rel=1e-6), name


def test_dice_of_offset_cubes_is_the_hand_counted_overlap():
    a, b = SOLID_PAIRS["offset cubes"]  # 6x9x10 and 6x10x13 voxels; overlap 4x6x7
    assert metrics.dice(a, b) == pytest.approx(2 * 4 * 6 * 7 / (6 * 9 * 10 + 6 * 10 * 13))
    assert metrics.dice_from_counts(4 * 6 * 7, 6 * 9 * 10, 6 * 10 * 13) == pytest.approx(metrics.dice(a, b))
    assert metrics.dice_from_counts(0, 0, 0) == 1.0 and metrics.dice_from_counts(0, 3, 0) == 0.0


def test_hd95_of_a_solid_sphere_grown_by_a_shell_is_the_shell_thickness():
    # Concentric spheres 3 mm apart in radius: every surface voxel of one lies ~3 mm from the other.
    spacing = (1.0, 1.0, 1.0)
    outer, inner = sphere((10, 10, 10), 8, (21, 21, 21), spacing), sphere((10, 10, 10), 5, (21, 21, 21), spacing)
    assert metrics.hd95(outer, inner, spacing) == pytest.approx(brute_hd95(outer, inner, spacing))
    assert 2.5 <= metrics.hd95(outer, inner, spacing) <= 3.5


def test_integer_masks_count_as_boolean():
    # Masks read from NIfTI are often uint8 0/1 or 0/255: any non-zero voxel is in the mask.
    a, b = SOLID_PAIRS["resized and offset spheres"]
    for dtype, value in [(np.uint8, 1), (np.uint8, 255), (np.int64, 2)]:
        ia, ib = a.astype(dtype) * value, b.astype(dtype) * value
        assert metrics.dice(ia, b) == metrics.dice(a, ib) == pytest.approx(metrics.dice(a, b)), (dtype, value)
        expected = pytest.approx(metrics.hd95(a, b, SPACING))
        assert metrics.hd95(ia, b, SPACING) == metrics.hd95(a, ib, SPACING) == expected


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.dice(vol((2, 3, 4)), vol((2, 3, 5)))
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.hd95(vol((2, 3, 4)), vol((2, 3, 5)), (1, 1, 1))


def test_case_metrics_of_nested_solid_regions():
    # A BraTS-like tumour: oedema (2) around necrosis (1) around enhancing tumour (stored 3).
    truth = np.zeros(SHAPE, np.uint8)
    truth[sphere((7, 11, 13), 8)] = 2
    truth[sphere((7, 11, 13), 5)] = 1
    truth[sphere((7, 11, 13), 3)] = 3
    pred = np.zeros(SHAPE, np.uint8)
    pred[sphere((7, 12, 14), 7)] = 2
    pred[sphere((6, 12, 14), 5)] = 3
    pred[sphere((6, 12, 14), 2)] = 1
    res = metrics.case_metrics(pred, truth, SPACING)
    brats_t, brats_p = regions.to_brats(truth), regions.to_brats(pred)
    brats = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,), "label_1": (1,), "label_2": (2,), "label_4": (4,)}
    for name, labels in brats.items():
        p, t = np.isin(brats_p, labels), np.isin(brats_t, labels)
        assert res[name]["dice"] == pytest.approx(2 * (p & t).sum() / (p.sum() + t.sum())), name
        assert res[name]["hd95"] == pytest.approx(brute_hd95(p, t, SPACING)), name
    assert list(res) == list(regions.STRUCTURES)
    no_hd = metrics.case_metrics(pred, truth, SPACING, with_hd95=False)
    assert no_hd == {name: {"dice": row["dice"]} for name, row in res.items()}


def test_summarise_std_and_median_over_cases_and_flat_row():
    per_case = {
        c: {"WT": {"dice": d, "hd95": h}, "ET": {"dice": 1 - d, "hd95": 2 * h}}
        for c, d, h in [("a", 0.9, 1.0), ("b", 0.6, 4.0), ("c", 0.3, 10.0)]
    }
    s = metrics.summarise(per_case)
    assert s["WT"]["dice"] == pytest.approx(0.6) and s["WT"]["dice_median"] == pytest.approx(0.6)
    assert s["WT"]["dice_std"] == pytest.approx(np.std([0.9, 0.6, 0.3]))  # population std (ddof=0)
    assert s["WT"]["hd95"] == pytest.approx(5.0) and s["WT"]["hd95_median"] == pytest.approx(4.0)
    assert s["ET"]["hd95_std"] == pytest.approx(np.std([2.0, 8.0, 20.0]))
    assert set(s["ET"]) == {"dice", "dice_std", "dice_median", "hd95", "hd95_std", "hd95_median"}
    assert metrics.summarise({}) == {}
    one = metrics.summarise({"a": per_case["a"]})  # a single case: its values, spread 0
    assert one["WT"] == {
        "dice": 0.9,
        "dice_std": 0.0,
        "dice_median": 0.9,
        "hd95": 1.0,
        "hd95_std": 0.0,
        "hd95_median": 1.0,
    }
    flat = metrics.flat_row(s, structures=("WT", "ET"))
    assert flat["WT_dice"] == pytest.approx(0.6) and flat["ET_hd95_median"] == pytest.approx(8.0)
    assert len(flat) == 12 and all(type(v) is float for v in flat.values())
    full = {name: {"dice": 0.5} for name in regions.STRUCTURES}
    assert list(metrics.flat_row(full)) == [f"{name}_dice" for name in regions.STRUCTURES]
