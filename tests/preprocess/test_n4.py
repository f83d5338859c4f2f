"""N4 on a shrunken image: recovers a known bias field, keeps geometry, clips nothing."""

from __future__ import annotations

import logging
import re

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medflow.errors import InputError
from medflow.params import from_config
from medflow.preprocess.n4 import N4Params, correct_array, correct_case, correct_file, estimate_log_field, otsu_mask

SHAPE_XYZ = (32, 32, 28)  # small: N4 on it takes well under a second
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
    with pytest.raises(InputError, match=r"flair.nii: all voxels are zero: nothing to correct$"):
        correct_file(src, tmp_path / "out.nii.gz", PARAMS)
    assert not (tmp_path / "out.nii.gz").exists()


def test_params_from_config():
    p = from_config(N4Params, {"shrink_factor": 3, "iterations": [7, 7]})
    assert p.shrink_factor == 3 and p.iterations == [7, 7] and p.histogram_bins == 200
    with pytest.raises(ValueError, match="threads"):  # how N4 runs is the rule's business, not the params'
        from_config(N4Params, {"threads": 2, "shrink_factor": 3})


SMALL_XYZ = (24, 22, 20)  # every axis a different length: a swapped axis changes the shape
SMALL_PARAMS = N4Params(shrink_factor=2, iterations=[10, 10])
ZOOMS = (0.9, 1.1, 1.5)  # mm, (x, y, z): all different, so a reversed spacing shows


def asymmetric_phantom():
    """(X, Y, Z) float32 of shape SMALL_XYZ: an off-centre two-tissue ellipsoid plus a blob in one
    octant under a field that varies along every axis, zero outside (no mirror or transpose of it is
    equal to it)."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in SMALL_XYZ), indexing="ij")
    r = np.sqrt(((x - 0.1) / 0.8) ** 2 + ((y + 0.05) / 0.7) ** 2 + ((z - 0.1) / 0.75) ** 2)
    blob = (x - 0.5) ** 2 + (y - 0.45) ** 2 + (z + 0.5) ** 2 <= 0.12
    tissue = np.where(r <= 0.6, 1.0, 0.6) * (r <= 1) + 0.8 * (blob & (r > 1))
    return (1000 * tissue * np.exp(0.3 * x - 0.2 * y**2 + 0.15 * z + 0.1 * x * z)).astype(np.float32)


def affine_for(zooms):
    """A rotated, flipped, translated affine with column norms ``zooms``."""
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[-c, -s, 0], [s, -c, 0], [0, 0, 1.0]])
    a = np.eye(4)
    a[:3, :3] = rot * np.asarray(zooms)
    a[:3, 3] = [90.5, 126.0, -72.0]
    return a


def test_corrected_file_is_correct_array_voxel_for_voxel(nifti, tmp_path, caplog):
    """What lands on disk is correct_array of the file's (X, Y, Z) data at the file's zooms: not mirrored,
    not transposed, not rescaled, with exactly the input's zero (background) mask and header."""
    image = asymmetric_phantom()
    src = nifti("t2.nii", image, affine=affine_for(ZOOMS))
    out = tmp_path / "t2_n4.nii.gz"
    with caplog.at_level(logging.INFO, logger="medflow.preprocess.n4"):
        correct_file(src, out, SMALL_PARAMS)
    assert [r.getMessage() for r in caplog.records] == ["t2.nii -> t2_n4.nii.gz"], "the rule log names the file"
    written, original = nib.load(out), nib.load(src)
    for key in ("qform_code", "sform_code", "xyzt_units", "pixdim", "srow_x", "srow_y", "srow_z"):
        np.testing.assert_array_equal(written.header[key], original.header[key], err_msg=key)
    data = np.asanyarray(written.dataobj)
    assert data.shape == SMALL_XYZ and data.dtype == np.float32
    np.testing.assert_allclose(written.header.get_zooms(), ZOOMS, rtol=1e-6)
    # The header's float32 zooms exactly: N4's B-spline domain is sensitive to the last bit of the spacing.
    expected, _ = correct_array(image, nib.load(src).header.get_zooms(), SMALL_PARAMS)
    np.testing.assert_allclose(data, expected, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(data == 0, image == 0)
    assert (data[image != 0] > 0).all()


@pytest.fixture
def n4_spy(monkeypatch):
    """Records what the N4 filter is given: the shrunken image and mask it fits, its settings and
    threads, and the full-resolution image its field is evaluated on."""
    seen = {}

    class Spy(sitk.N4BiasFieldCorrectionImageFilter):
        def Execute(self, image, mask):
            seen.update(
                small=image,
                small_mask=mask,
                levels=self.GetMaximumNumberOfIterations(),
                points=self.GetNumberOfControlPoints(),
                bins=self.GetNumberOfHistogramBins(),
                threshold=self.GetConvergenceThreshold(),
                threads=self.GetNumberOfThreads(),
                global_threads=sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
            )
            return super().Execute(image, mask)

        def GetLogBiasFieldAsImage(self, reference):
            seen["full"] = reference
            return super().GetLogBiasFieldAsImage(reference)

    monkeypatch.setattr(sitk, "N4BiasFieldCorrectionImageFilter", Spy)
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    yield seen
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def test_simpleitk_sees_the_volume_in_x_y_z_with_its_spacing(n4_spy):
    """The image N4 works on is indexed (x, y, z) like the NIfTI array, with spacing (x, y, z) in mm;
    the shrunken one keeps the physical extent; the mask is Otsu's with the configured bins; every
    N4 setting is the configured one."""
    # Noise makes the histogram continuous, so Otsu's threshold depends on the number of bins.
    image = asymmetric_phantom() * np.random.default_rng(1).uniform(0.7, 1.3, SMALL_XYZ).astype(np.float32)
    params = N4Params(
        shrink_factor=2,
        iterations=[3, 2, 2],
        convergence_threshold=0.01,
        histogram_bins=64,
        otsu_bins=50,
        control_points=5,
    )
    _, log_field = correct_array(image, ZOOMS, params)
    full = n4_spy["full"]
    assert full.GetSize() == SMALL_XYZ
    np.testing.assert_allclose(full.GetSpacing(), ZOOMS)
    i, j, k = 20, 3, 15
    assert full.GetPixel(i, j, k) == image[i, j, k]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(full).transpose(2, 1, 0), image)
    small = n4_spy["small"]
    assert small.GetSize() == tuple(n // 2 for n in SMALL_XYZ)
    np.testing.assert_allclose(small.GetSpacing(), [2 * z for z in ZOOMS])
    otsu50 = sitk.GetArrayFromImage(sitk.Shrink(sitk.OtsuThreshold(full, 0, 1, 50), [2, 2, 2]))
    otsu200 = sitk.GetArrayFromImage(sitk.Shrink(sitk.OtsuThreshold(full, 0, 1, 200), [2, 2, 2]))
    assert (otsu50 != otsu200).any()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(n4_spy["small_mask"]), otsu50)
    assert n4_spy["levels"] == (3, 2, 2) and n4_spy["points"] == (5, 5, 5)
    assert n4_spy["bins"] == 64 and n4_spy["threshold"] == pytest.approx(0.01)
    assert log_field.shape == SMALL_XYZ and log_field.dtype == np.float32


def test_without_shrinking_n4_fits_the_full_image(n4_spy):
    correct_array(asymmetric_phantom(), ZOOMS, N4Params(shrink_factor=1, iterations=[2]))
    assert n4_spy["small"].GetSize() == SMALL_XYZ


@pytest.mark.parametrize("threads, expected", [(None, 1), (0, 1), (3, 3)])
def test_n4_uses_the_jobs_threads(n4_spy, nifti, tmp_path, threads, expected):
    """N4 runs on the rule's ``threads`` (one by default, at least one): a cluster job must not use
    more cores than it was given."""
    src = nifti("t1.nii", asymmetric_phantom())
    params = N4Params(shrink_factor=2, iterations=[2])
    kw = {} if threads is None else {"threads": threads}
    correct_file(src, tmp_path / "a.nii.gz", params, **kw)
    assert n4_spy["threads"] == expected and n4_spy["global_threads"] == expected
    correct_case({"t1": src}, {"t1": tmp_path / "b.nii.gz"}, params, **kw)
    assert n4_spy["threads"] == expected and n4_spy["global_threads"] == expected
    estimate_log_field(asymmetric_phantom(), ZOOMS, params, **kw)
    assert n4_spy["threads"] == expected and n4_spy["global_threads"] == expected


def test_float64_input_is_corrected_as_its_float32_values():
    """nibabel's get_fdata gives float64: correct_array works on its float32 rounding, exactly as
    correct_file (which reads float32) does, so both give the same bits."""
    image = asymmetric_phantom().astype(np.float64) * (1 + 1e-7) + 0.0123
    a, field_a = correct_array(image, ZOOMS, SMALL_PARAMS)
    b, field_b = correct_array(image.astype(np.float32), ZOOMS, SMALL_PARAMS)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(field_a, field_b)
    np.testing.assert_array_equal(a, b)


def test_estimate_log_field_takes_the_raw_int16_data():
    """BraTS files are int16; SimpleITK's N4 accepts only float images, so the data are converted."""
    image = asymmetric_phantom().astype(np.int16)
    np.testing.assert_array_equal(
        estimate_log_field(image, ZOOMS, SMALL_PARAMS),
        estimate_log_field(image.astype(np.float32), ZOOMS, SMALL_PARAMS),
    )


def test_otsu_mask_is_the_tutorials_200_bin_threshold():
    """1 on the tissue, 0 on the background; by default the tutorial's 200-bin Otsu threshold (on a
    continuous histogram the number of bins moves the threshold)."""
    image = asymmetric_phantom()
    mask = sitk.GetArrayFromImage(otsu_mask(sitk.GetImageFromArray(image.transpose(2, 1, 0)))).transpose(2, 1, 0)
    assert set(np.unique(mask).tolist()) == {0, 1}
    assert not mask[image == 0].any() and mask[image > 900].all()
    noisy = sitk.GetImageFromArray(np.random.default_rng(0).gamma(2.0, 100, (12, 12, 12)).astype(np.float32))
    ours = sitk.GetArrayFromImage(otsu_mask(noisy))
    np.testing.assert_array_equal(ours, sitk.GetArrayFromImage(sitk.OtsuThreshold(noisy, 0, 1, 200)))
    assert (ours != sitk.GetArrayFromImage(sitk.OtsuThreshold(noisy, 0, 1, 201))).any()


def test_n4_failure_is_one_line_naming_the_file(nifti, tmp_path):
    """A one-slice volume cannot be shrunk: ITK's multi-line exception becomes one InputError line
    with ITK's own last line as the reason."""
    src = nifti("flat.nii", np.tile(np.arange(1, 10, dtype=np.float32)[:, None, None], (1, 9, 1)))
    with pytest.raises(InputError) as err:
        correct_file(src, tmp_path / "out.nii.gz", SMALL_PARAMS)
    assert re.fullmatch(
        rf"{re.escape(str(src))}: N4 failed \(Refusing to change spacing from \[1, 1, 1\] to \[[^]]*\]\)",
        str(err.value),
    ), str(err.value)
    assert not (tmp_path / "out.nii.gz").exists()


def test_correct_case_writes_each_modality_from_its_own_input(nifti, tmp_path):
    image = asymmetric_phantom()
    ins = {"flair": nifti("flair.nii", image), "t1": nifti("t1.nii", 2 * image[::-1])}
    outs = {m: tmp_path / f"{m}_n4.nii.gz" for m in ins}
    correct_case(ins, outs, SMALL_PARAMS)
    for m, src in ins.items():
        expected, _ = correct_array(nib.load(src).get_fdata(), (1.0, 1.0, 1.0), SMALL_PARAMS)
        np.testing.assert_allclose(nib.load(outs[m]).get_fdata(), expected, rtol=1e-6)
