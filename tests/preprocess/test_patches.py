"""Patch sampling: the tutorial's acceptance rule and standardisation, without duplicates, deterministic."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest

from medflow.preprocess.patches import (PatchParams, accepted_origins, case_rng, max_background_voxels, one_hot,
                                        sample_case, sample_origins, standardize)

CASE = "BraTS20_Training_011"


def tutorial_background_fraction(label_patch, num_classes=4):
    """The tutorial: to_categorical, then the sum of channel 0 over the patch volume."""
    y = np.eye(num_classes, dtype=np.float32)[label_patch]
    return np.sum(y[..., 0]) / label_patch.size


def tutorial_standardize(image):
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
    expected = [o for o in np.ndindex(*(s - p + 1 for s, p in zip(label.shape, patch)))
                if tutorial_background_fraction(label[tuple(slice(a, a + p) for a, p in zip(o, patch))]) < threshold]
    assert n_candidates == 10 * 13 * 13
    assert [tuple(o) for o in acc] == expected
    assert 0 < len(expected) < n_candidates


def test_background_rule_as_an_integer_bound():
    # 389120 / 409600 is 0.95 exactly: not below the threshold, so at most 389119 background voxels.
    assert max_background_voxels(16 * 160 * 160, 0.95) == 389119
    assert max_background_voxels(10, 1.0) == 9 and max_background_voxels(10, 0.05) == 0


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


def test_standardize_matches_the_tutorial_loop():
    rng = np.random.default_rng(1)
    image = rng.normal(5, 3, (4, 6, 7, 8)).astype(np.float32)  # (C, Z, Y, X)
    image[1, 2] = 7.0  # a constant slice: centred, not scaled
    ours = standardize(image)
    theirs = tutorial_standardize(image.transpose(0, 3, 2, 1)).transpose(0, 3, 2, 1)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert (ours[1, 2] == 0).all()
    np.testing.assert_allclose(ours[0].mean(axis=(-2, -1)), 0, atol=1e-5)
    np.testing.assert_allclose(ours[0].std(axis=(-2, -1)), 1, atol=1e-5)
    np.testing.assert_allclose(standardize(image[None])[0], ours), "a batch of patches, the same rule"


def test_one_hot_drops_background():
    label = np.array([[0, 1], [2, 3]], np.uint8)
    oh = one_hot(label)
    assert oh.shape == (3, 2, 2) and oh.dtype == np.uint8
    assert oh[:, 0, 0].tolist() == [0, 0, 0] and oh[:, 1, 1].tolist() == [0, 0, 1] and oh[:, 0, 1].tolist() == [1, 0, 0]


def write_stack(path, image, label, case=CASE):
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image, chunks=(1, 4, 8, 8))
        f.create_dataset("label", data=label)
        f.attrs["case_id"] = case


def test_sample_case_writes_the_contract(tmp_path):
    label = random_label()
    image = np.random.default_rng(2).normal(100, 20, (4, *label.shape)).astype(np.float32)
    write_stack(tmp_path / "stack.h5", image, label)
    params = PatchParams(patch_size=[5, 8, 6], n_patches=6, background_threshold=0.9)
    assert sample_case(tmp_path / "stack.h5", tmp_path / "patches.h5", params, seed=42) == 6
    with h5py.File(tmp_path / "patches.h5") as f:
        assert f["image"].shape == (6, 4, 5, 8, 6) and f["image"].dtype == np.float32
        assert f["label"].shape == (6, 3, 5, 8, 6) and f["label"].dtype == np.uint8
        assert f["origins"].shape == (6, 3)
        assert f.attrs["n_patches"] == 6 and f.attrs["n_requested"] == 6
        assert f.attrs["case_id"] == CASE and f.attrs["patch_size_zyx"].tolist() == [5, 8, 6]
        expected, _ = sample_origins(label, params.patch_size, 6, 0.9, case_rng(42, CASE))
        np.testing.assert_array_equal(f["origins"][()], expected)
        for i, (z, y, x) in enumerate(f["origins"][()]):
            box = (slice(z, z + 5), slice(y, y + 8), slice(x, x + 6))
            np.testing.assert_allclose(f["image"][i], standardize(image[(slice(None), *box)]), atol=1e-6)
            np.testing.assert_array_equal(f["label"][i], one_hot(label[box]))
            assert 1 - f["label"][i].sum() / (5 * 8 * 6) < 0.9


@pytest.mark.parametrize("patch, why", [([5, 8, 6], "no patch has a background fraction below"),
                                        ([5, 30, 6], "larger than the volume")])
def test_case_without_a_possible_patch_gives_a_message_and_an_empty_file(tmp_path, caplog, patch, why):
    label = np.zeros((14, 20, 18), np.uint8)
    label[5, 5, 5] = 1
    write_stack(tmp_path / "stack.h5", np.ones((4, *label.shape), np.float32), label)
    with caplog.at_level(logging.WARNING):
        n = sample_case(tmp_path / "stack.h5", tmp_path / "p.h5", PatchParams(patch_size=patch, n_patches=3), seed=0)
    assert n == 0
    assert f"{CASE}: no patch could be sampled" in caplog.text and why in caplog.text
    with h5py.File(tmp_path / "p.h5") as f:
        assert f["image"].shape == (0, 4, *patch) and f["label"].shape == (0, 3, *patch)
        assert f.attrs["n_patches"] == 0 and f.attrs["n_requested"] == 3
