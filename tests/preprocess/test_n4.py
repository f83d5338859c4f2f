"""N4 on a shrunken image: recovers a known bias field, keeps geometry, clips nothing."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medflow.errors import InputError
from medflow.preprocess.n4 import N4Params, correct_array, correct_file

SHAPE_XYZ = (48, 48, 40)
PARAMS = N4Params(shrink_factor=2, iterations=[50, 50])


def phantom(scale=1000.0):
    """(image (X, Y, Z) float32, true log bias field, inner-tissue mask): a two-tissue ellipsoid times
    a smooth field, zero outside, mildly noisy."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE_XYZ), indexing="ij")
    r = np.sqrt((x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.75) ** 2)
    brain = r <= 1
    inner = r <= 0.7
    tissue = np.where(inner, 1.0, 0.6) * brain
    log_bias = 0.25 * x - 0.15 * y**2 + 0.1 * z
    noise = np.random.default_rng(0).normal(0, 0.01, SHAPE_XYZ)
    image = (tissue * np.exp(log_bias) + noise * brain) * scale
    return image.astype(np.float32), log_bias, inner


def cov(values):
    return values.std() / values.mean()


def test_estimated_field_matches_the_true_one_and_flattens_tissue():
    image, log_bias, inner = phantom()
    corrected, log_field = correct_array(image, (1.0, 1.0, 1.0), PARAMS, threads=1)
    assert corrected.dtype == np.float32 and corrected.shape == image.shape
    assert np.corrcoef(log_field[inner], log_bias[inner])[0, 1] > 0.95
    assert cov(corrected[inner]) < 0.5 * cov(image[inner])
    assert (corrected[image == 0] == 0).all(), "background stays exactly zero (trimming relies on it)"


def test_corrected_file_keeps_geometry_and_is_not_clipped(nifti, tmp_path):
    image, _, _ = phantom(scale=90000.0)  # above the uint16 range the tutorial clipped into
    affine = np.array([[-1.0, 0, 0, 12.5], [0, -1.0, 0, 239.0], [0, 0, 1.2, -30.0], [0, 0, 0, 1]])
    src = nifti("t1.nii", image, affine=affine, zooms=(1.0, 1.0, 1.2))
    out = tmp_path / "out" / "t1.nii.gz"
    correct_file(src, out, PARAMS, threads=2)
    a, b = nib.load(src), nib.load(out)
    assert b.get_data_dtype() == np.float32
    np.testing.assert_array_equal(b.affine, a.affine)
    np.testing.assert_array_equal(b.header.get_qform(), a.header.get_qform())
    np.testing.assert_array_equal(b.header.get_sform(), a.header.get_sform())
    assert b.header.get_zooms() == a.header.get_zooms()
    data = b.get_fdata()
    assert data.max() > 65535, "no clipping into an integer range"
    assert [p.name for p in out.parent.iterdir()] == ["t1.nii.gz"], "no temporary file left"


def test_shrinking_makes_little_difference_to_the_field():
    image, _, inner = phantom()
    _, full = correct_array(image, (1.0, 1.0, 1.0), N4Params(shrink_factor=1, iterations=[20, 20]))
    _, fast = correct_array(image, (1.0, 1.0, 1.0), N4Params(shrink_factor=4, iterations=[20, 20]))
    assert np.corrcoef(full[inner], fast[inner])[0, 1] > 0.95


def test_all_zero_volume_is_an_input_error(nifti, tmp_path):
    src = nifti("flair.nii", np.zeros((16, 16, 8), np.int16))
    with pytest.raises(InputError, match="all voxels are zero"):
        correct_file(src, tmp_path / "out.nii.gz", PARAMS)
    assert not (tmp_path / "out.nii.gz").exists()


def test_params_from_config_ignore_rule_settings():
    p = N4Params.from_config({"per_modality": False, "threads": 2, "shrink_factor": 3, "iterations": [7, 7]})
    assert p.shrink_factor == 3 and p.iterations == [7, 7] and p.histogram_bins == 200
