"""Patch sampling: the tutorial's acceptance rule and standardisation, without duplicates, deterministic."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from medflow.errors import InputError
from medflow.params import from_config
from medflow.preprocess.patches import (
    PatchParams,
    accepted_origins,
    case_rng,
    extract,
    max_background_voxels,
    one_hot,
    origin_table,
    sample_case,
    sample_origins,
    standardise,
)

CASE = "BraTS20_Training_011"


def tutorial_background_fraction(label_patch, num_classes=4):
    """The tutorial: to_categorical, then the sum of channel 0 over the patch volume."""
    y = np.eye(num_classes, dtype=np.float32)[label_patch]
    return np.sum(y[..., 0]) / label_patch.size


def tutorial_standardise(image):
    """The tutorial's loop (image (C, X, Y, Z), slices along the last axis), with sd 0 left unscaled."""
    out = np.zeros(image.shape)
    for c in range(image.shape[0]):
        for z in range(image.shape[3]):
            s = image[c, :, :, z]
            centered = s - np.mean(s)
            out[c, :, :, z] = centered / np.std(centered) if np.std(centered) != 0 else centered
    return out


def random_label(shape=(14, 20, 18), seed=0):
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    label[4:10, 6:14, 5:12] = rng.choice([0, 1, 2, 3], size=(6, 8, 7), p=[0.3, 0.2, 0.3, 0.2])
    label[1, 1, 1] = 2  # a stray voxel far from the rest
    return label


@pytest.mark.parametrize("threshold", [0.99, 0.95, 0.9, 0.8])
def test_accepted_origins_are_exactly_the_tutorial_rule(threshold):
    label = random_label()
    patch = (5, 8, 6)
    acc, n_candidates = accepted_origins(label, patch, threshold)
    expected = [
        o
        for o in np.ndindex(*(s - p + 1 for s, p in zip(label.shape, patch)))
        if tutorial_background_fraction(label[tuple(slice(a, a + p) for a, p in zip(o, patch))]) < threshold
    ]
    assert n_candidates == 10 * 13 * 13
    assert [tuple(o) for o in acc] == expected
    assert 0 < len(expected) < n_candidates


def brute_force_origins(label, patch, threshold):
    """Every origin (z, y, x) whose patch lies inside the volume and has background (label 0)
    fraction < threshold, in C order: the tutorial's rule tried at each origin."""
    n = [s - p + 1 for s, p in zip(label.shape, patch)]
    if min(n) <= 0:
        return []
    return [
        o
        for o in np.ndindex(*n)
        if np.count_nonzero(label[tuple(slice(a, a + p) for a, p in zip(o, patch))] == 0) / np.prod(patch) < threshold
    ]


@st.composite
def acceptance_cases(draw):
    """(label (Z, Y, X) uint8, patch (Z, Y, X), threshold in (0, 1]): foreground scattered anywhere,
    borders and corners included; patches from 1 voxel to the volume, and sometimes larger; thresholds
    anywhere in the config's range, many exactly k / patch volume (the boundary case) or one of the
    patches' own background fractions (so accepted and refused origins mix)."""
    shape = draw(st.tuples(*[st.integers(1, 9)] * 3))
    density = draw(st.sampled_from([0.02, 0.1, 0.4, 0.8, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    label = np.where(rng.random(shape) < density, rng.integers(1, 4, shape), 0).astype(np.uint8)
    for corner in draw(st.sets(st.tuples(*[st.sampled_from([0, -1])] * 3), max_size=3)):
        label[corner] = draw(st.integers(1, 3))
    patch = [draw(st.integers(1, s)) for s in shape]
    if draw(st.integers(0, 9)) == 0:  # now and then a patch longer than the volume along one or two axes
        for axis in draw(st.sets(st.integers(0, 2), min_size=1, max_size=2)):
            patch[axis] = shape[axis] + draw(st.integers(1, 2))
    patch = tuple(patch)
    volume = int(np.prod(patch))
    thresholds = [st.floats(1e-6, 1.0), st.integers(1, volume).map(lambda k: k / volume)]
    n = [s - p + 1 for s, p in zip(shape, patch)]
    if min(n) > 0:  # a patch's own background fraction (or the least one above 0): accepted and refused mixed
        some = [
            np.count_nonzero(label[tuple(slice(a, a + p) for a, p in zip(o, patch))] == 0) / volume
            for o in np.ndindex(*n)
        ]
        thresholds.append(st.sampled_from(sorted({max(f, 1 / volume) for f in some})))
    threshold = draw(st.one_of(thresholds))
    return label, patch, threshold


def corner_label(shape, corners):
    label = np.zeros(shape, np.uint8)
    for c in corners:
        label[c] = 1
    return label


@given(acceptance_cases())
@example((corner_label((6, 7, 5), [(0, 0, 0)]), (2, 3, 2), 11 / 12))
@example((corner_label((6, 7, 5), [(-1, -1, -1)]), (2, 3, 2), 11 / 12))
@example((corner_label((6, 7, 5), [(0, -1, 0), (-1, 0, -1)]), (6, 7, 5), 1.0))
@example((corner_label((6, 7, 5), [(0, 0, 0), (-1, -1, -1)]), (6, 7, 5), 1 - 2 / 210))
@example((np.ones((4, 5, 6), np.uint8), (4, 5, 6), 1e-6))
@example((corner_label((4, 5, 6), [(1, 2, 3)]), (1, 1, 1), 1.0))
# One voxel inside a larger patch: every origin covering it forms one cell of 2 x 3 x 4 origins.
@example((corner_label((5, 6, 7), [(2, 3, 3)]), (2, 3, 4), 1.0))
# A patch taller than the foreground along y, with several x runs: cells hold several y origins each,
# so numbering origins cell by cell is not their sorted order.
@example((corner_label((1, 4, 6), [(0, 1, 1), (0, 1, 4)]), (1, 3, 2), 1.0))
# Too long along two axes: no candidate at all (not a product of two negative counts).
@example((corner_label((3, 4, 5), [(1, 1, 1)]), (5, 6, 2), 1.0))
def test_acceptance_equals_the_brute_force_rule(case):
    """For any label map, patch size and threshold: the accepted origins are exactly the brute-force
    rule's; the candidate count, the table and the sampler agree with it."""
    label, patch, threshold = case
    expected = brute_force_origins(label, patch, threshold)
    acc, n_candidates = accepted_origins(label, patch, threshold)
    assert n_candidates == int(np.prod([max(0, s - p + 1) for s, p in zip(label.shape, patch)]))
    assert [tuple(o) for o in acc] == expected
    assert acc.shape == (len(expected), 3) and acc.dtype == np.int64
    assert origin_table(label, patch, threshold).n_accepted == len(expected)
    k = min(5, len(expected))
    drawn, n_accepted = sample_origins(label, patch, 5, threshold, np.random.default_rng(0))
    assert n_accepted == len(expected) and drawn.shape == (k, 3)
    assert len({tuple(o) for o in drawn}) == k and {tuple(o) for o in drawn} <= set(expected)


def test_background_rule_as_an_integer_bound():
    # 389120 / 409600 is 0.95 exactly: not below the threshold, so at most 389119 background voxels.
    assert max_background_voxels(16 * 160 * 160, 0.95) == 389119
    assert max_background_voxels(10, 1.0) == 9 and max_background_voxels(10, 0.05) == 0
    assert max_background_voxels(10, 0.5) == 4 and max_background_voxels(10, 0.1) == 0, "exactly the threshold: refused"


def test_sampled_origins_are_distinct_accepted_and_deterministic():
    label = random_label()
    patch, n = (5, 8, 6), 12
    acc = {tuple(o) for o in accepted_origins(label, patch, 0.9)[0]}
    a, n_acc = sample_origins(label, patch, n, 0.9, case_rng(42, CASE))
    assert len(a) == n and n_acc == len(acc)
    assert len({tuple(o) for o in a}) == n and {tuple(o) for o in a} <= acc
    b, _ = sample_origins(label, patch, n, 0.9, case_rng(42, CASE))
    np.testing.assert_array_equal(a, b)
    c, _ = sample_origins(label, patch, n, 0.9, case_rng(42, "BraTS20_Training_012"))
    d, _ = sample_origins(label, patch, n, 0.9, case_rng(43, CASE))
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    everything, _ = sample_origins(label, patch, 10**6, 0.9, case_rng(0, CASE))
    assert {tuple(o) for o in everything} == acc, "asking for more than exist returns each acceptable origin once"


def test_sampling_is_uniform_over_acceptable_origins():
    label = random_label()
    patch = (5, 8, 6)
    acc = accepted_origins(label, patch, 0.8)[0]
    counts = {tuple(o): 0 for o in acc}
    rng = np.random.default_rng(5)
    draws = 200 * len(acc)
    for _ in range(draws // 20):
        for o in sample_origins(label, patch, 20, 0.8, rng)[0]:
            counts[tuple(o)] += 1
    freq = np.array(list(counts.values())) / draws
    assert freq.min() > 0 and freq.max() / freq.min() < 2.5, "like the tutorial's uniform proposals"


def test_standardise_matches_the_tutorial_loop():
    rng = np.random.default_rng(1)
    image = rng.normal(5, 3, (4, 6, 7, 8)).astype(np.float32)  # (C, Z, Y, X)
    image[1, 2] = 7.0  # a constant slice: centred, not scaled
    ours = standardise(image)
    theirs = tutorial_standardise(image.transpose(0, 3, 2, 1)).transpose(0, 3, 2, 1)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert (ours[1, 2] == 0).all()
    np.testing.assert_allclose(ours[0].mean(axis=(-2, -1)), 0, atol=1e-5)
    np.testing.assert_allclose(ours[0].std(axis=(-2, -1)), 1, atol=1e-5)
    np.testing.assert_allclose(standardise(image[None])[0], ours), "a batch of patches, the same rule"


def test_one_hot_drops_background():
    label = np.array([[0, 1], [2, 3]], np.uint8)
    oh = one_hot(label)
    assert oh.shape == (3, 2, 2) and oh.dtype == np.uint8
    assert oh[:, 0, 0].tolist() == [0, 0, 0] and oh[:, 1, 1].tolist() == [0, 0, 1] and oh[:, 0, 1].tolist() == [1, 0, 0]


def write_stack(path, image, label, case=CASE):
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image, chunks=(1, *(min(c, n) for c, n in zip((4, 8, 8), image.shape[1:]))))
        f.create_dataset("label", data=label)
        f.attrs["case_id"] = case


def test_sample_case_writes_the_contract(tmp_path, caplog):
    label = random_label()
    image = np.random.default_rng(2).normal(100, 20, (4, *label.shape)).astype(np.float32)
    write_stack(tmp_path / "stack.h5", image, label)
    params = PatchParams(patch_size=[5, 8, 6], n_patches=6, background_threshold=0.9)
    with caplog.at_level(logging.INFO, logger="medflow.preprocess.patches"):
        assert sample_case(tmp_path / "stack.h5", tmp_path / "patches.h5", params, seed=42) == 6
    n_acc = len(accepted_origins(label, params.patch_size, 0.9)[0])
    # All requested patches found: one info line, no warning.
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, f"{CASE}: 6 patches of [5, 8, 6] (Z, Y, X) from {n_acc} acceptable origins")
    ]
    with h5py.File(tmp_path / "patches.h5") as f:
        assert f["image"].shape == (6, 4, 5, 8, 6) and f["image"].dtype == np.float32
        assert f["label"].shape == (6, 3, 5, 8, 6) and f["label"].dtype == np.uint8
        assert f["origins"].shape == (6, 3)
        # One patch per chunk (a patch is read whole), compressed as configured.
        assert f["image"].chunks == (1, 4, 5, 8, 6) and f["label"].chunks == (1, 3, 5, 8, 6)
        assert f["image"].compression == "lzf" and f["image"].shuffle and f["label"].compression == "lzf"
        assert f.attrs["n_patches"] == 6 and f.attrs["n_requested"] == 6
        assert f.attrs["n_accepted_origins"] == n_acc and f.attrs["seed"] == 42
        assert f.attrs["background_threshold"] == 0.9
        assert f.attrs["case_id"] == CASE and f.attrs["patch_size_zyx"].tolist() == [5, 8, 6]
        expected, _ = sample_origins(label, params.patch_size, 6, 0.9, case_rng(42, CASE))
        np.testing.assert_array_equal(f["origins"][()], expected)
        for i, (z, y, x) in enumerate(f["origins"][()]):
            box = (slice(z, z + 5), slice(y, y + 8), slice(x, x + 6))
            np.testing.assert_allclose(f["image"][i], standardise(image[(slice(None), *box)]), atol=1e-6)
            np.testing.assert_array_equal(f["label"][i], one_hot(label[box]))
            assert 1 - f["label"][i].sum() / (5 * 8 * 6) < 0.9


@pytest.mark.parametrize(
    "patch, why",
    [
        ([5, 8, 6], "no patch has a background fraction below 0.95"),
        ([14, 20, 6], "no patch has a background fraction below 0.95"),
        ([5, 30, 6], "patch [5, 30, 6] (Z, Y, X) is larger than the volume [14, 20, 18]"),
    ],
)
def test_case_without_a_possible_patch_gives_a_message_and_an_empty_file(tmp_path, caplog, patch, why):
    label = np.zeros((14, 20, 18), np.uint8)
    label[5, 5, 5] = 1
    write_stack(tmp_path / "stack.h5", np.ones((4, *label.shape), np.float32), label)
    with caplog.at_level(logging.WARNING):
        n = sample_case(tmp_path / "stack.h5", tmp_path / "p.h5", PatchParams(patch_size=patch, n_patches=3), seed=0)
    assert n == 0
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"{CASE}: no patch could be sampled: {why}; writing 0 patches"
    ]
    with h5py.File(tmp_path / "p.h5") as f:
        assert f["image"].shape == (0, 4, *patch) and f["label"].shape == (0, 3, *patch)
        assert f.attrs["n_patches"] == 0 and f.attrs["n_requested"] == 3


def test_fewer_acceptable_patches_than_requested_are_all_taken_with_a_warning(tmp_path, caplog):
    label = np.zeros((6, 8, 8), np.uint8)
    label[2:4, 2:5, 3:6] = 1
    write_stack(tmp_path / "stack.h5", np.ones((4, *label.shape), np.float32), label)
    params = PatchParams(patch_size=[2, 3, 3], n_patches=50, background_threshold=0.5)
    expected = accepted_origins(label, params.patch_size, 0.5)[0]
    with caplog.at_level(logging.WARNING):
        n = sample_case(tmp_path / "stack.h5", tmp_path / "p.h5", params, seed=1)
    assert n == len(expected) == 5
    assert [r.getMessage() for r in caplog.records] == [f"{CASE}: only 5 of 50 requested patches are possible"]
    with h5py.File(tmp_path / "p.h5") as f:
        assert sorted(map(tuple, f["origins"][()])) == [tuple(o) for o in expected]


def test_without_a_case_id_attribute_the_file_name_is_the_case(tmp_path):
    """The case id names the patches and seeds the case's generator, so it falls back to the stack's
    file name (and a bytes attribute is decoded)."""
    label = random_label()
    image = np.zeros((4, *label.shape), np.float32)
    params = PatchParams(patch_size=[5, 8, 6], n_patches=4, background_threshold=0.9, compression="gzip")
    with h5py.File(tmp_path / f"{CASE}.h5", "w") as f:
        f["image"], f["label"] = image, label
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["image"], f["label"] = image, label
        f.attrs["case_id"] = np.bytes_("BraTS20_Training_099")
    sample_case(tmp_path / f"{CASE}.h5", tmp_path / "a.h5", params, seed=3)
    sample_case(tmp_path / "other.h5", tmp_path / "b.h5", params, seed=3)
    for out, case in (("a.h5", CASE), ("b.h5", "BraTS20_Training_099")):
        with h5py.File(tmp_path / out) as f:
            assert f.attrs["case_id"] == case
            np.testing.assert_array_equal(
                f["origins"][()], sample_origins(label, params.patch_size, 4, 0.9, case_rng(3, case))[0]
            )
            assert f["image"].compression == "gzip" and f["image"].compression_opts == 4 and f["image"].shuffle


def test_uncompressed_patches(tmp_path):
    n = sample_case(
        _one_patch_stack(tmp_path),
        tmp_path / "p.h5",
        PatchParams(patch_size=[2, 2, 2], n_patches=1, compression="none"),
        seed=0,
    )
    with h5py.File(tmp_path / "p.h5") as f:
        assert n == 1 and f["image"].compression is None and f["image"].chunks == (1, 4, 2, 2, 2)


def test_extract_reads_the_patch_at_its_origin():
    """(z, y, x) origin, (pz, py, px) size: the image box as float32 whatever the input dtype, and the
    label box one-hot."""
    rng = np.random.default_rng(4)
    image = rng.normal(size=(4, 6, 7, 8))  # float64
    label = rng.integers(0, 4, (6, 7, 8)).astype(np.uint8)
    x, y = extract(image, label, (1, 2, 3), (3, 4, 5))
    assert x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_array_equal(x, image[:, 1:4, 2:6, 3:8].astype(np.float32))
    np.testing.assert_array_equal(y, one_hot(label[1:4, 2:6, 3:8]))


def test_standardise_computes_in_float32_whatever_the_input():
    """Raw int16 or float64 input is standardised as its float32 values (the tutorial's float32)."""
    rng = np.random.default_rng(3)
    f64 = rng.normal(300, 50, (2, 3, 5, 6)) * (1 + 1e-9)
    i16 = rng.integers(0, 3000, (2, 3, 5, 6)).astype(np.int16)
    np.testing.assert_array_equal(standardise(f64), standardise(f64.astype(np.float32)))
    np.testing.assert_array_equal(standardise(i16), standardise(i16.astype(np.float32)))


def test_unreadable_or_malformed_stacks_are_input_errors(tmp_path):
    params = PatchParams(patch_size=[2, 2, 2], n_patches=1)
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(InputError, match=r"junk.h5: cannot open as HDF5 \("):
        sample_case(tmp_path / "junk.h5", tmp_path / "p.h5", params, seed=0)
    with h5py.File(tmp_path / "nolabel.h5", "w") as f:
        f["image"] = np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(InputError, match=r"nolabel.h5: needs 'image' and 'label' datasets$"):
        sample_case(tmp_path / "nolabel.h5", tmp_path / "p.h5", params, seed=0)
    with h5py.File(tmp_path / "noimage.h5", "w") as f:
        f["label"] = np.zeros((3, 3, 3), np.uint8)
    with pytest.raises(InputError, match=r"noimage.h5: needs 'image' and 'label' datasets$"):
        sample_case(tmp_path / "noimage.h5", tmp_path / "p.h5", params, seed=0)
    write_stack(tmp_path / "odd.h5", np.zeros((4, 3, 3, 4), np.float32), np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(InputError, match=r"odd.h5: image \(4, 3, 3, 4\) and label \(3, 3, 3\) do not match$"):
        sample_case(tmp_path / "odd.h5", tmp_path / "p.h5", params, seed=0)
    with pytest.raises(ValueError, match="unknown compression 'zip'"):
        sample_case(
            _one_patch_stack(tmp_path),
            tmp_path / "p.h5",
            PatchParams(patch_size=[2, 2, 2], n_patches=1, compression="zip"),
            seed=0,
        )
    assert not (tmp_path / "p.h5").exists()


def _one_patch_stack(tmp_path):
    label = np.ones((2, 2, 2), np.uint8)
    write_stack(tmp_path / "one.h5", np.zeros((4, 2, 2, 2), np.float32), label)
    return tmp_path / "one.h5"


def test_params_from_config():
    p = from_config(PatchParams, {"patch_size": [4, 8, 8], "n_patches": 2, "background_threshold": 0.5})
    assert p == PatchParams(patch_size=[4, 8, 8], n_patches=2, background_threshold=0.5, compression="lzf")
