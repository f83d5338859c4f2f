"""N4 bias-field correction (SimpleITK) of one BraTS modality, estimated on a shrunken image.

As in the tutorial, the foreground mask is Otsu's threshold of the image; unlike it, the field is
estimated on the image shrunk by ``shrink_factor`` (N4's cost grows with the voxel count) and the
field reconstructed at full resolution divides the full-resolution image. The output is float32 with
the input's header geometry; nothing is clipped or rescaled to an integer range. Background voxels
(exactly 0 in skull-stripped BraTS) stay exactly 0, which slice trimming relies on.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from medflow.errors import InputError

# Re-exported (the `as` keeps it when unused here): workflow/scripts/brats_n4.py imports it from this module.
from medflow.ingest.brats import MODALITIES as MODALITIES

if TYPE_CHECKING:  # for annotations only: SimpleITK is imported where it is used
    import SimpleITK as sitk

log = logging.getLogger(__name__)


@dataclass
class N4Params:
    """``brats.n4`` in config. ``iterations``: maximum iterations per fitting level (its length is
    the number of fitting levels; the control-point grid doubles at each level)."""

    shrink_factor: int = 4
    iterations: list[int] = field(default_factory=lambda: [50, 50, 50, 50])
    convergence_threshold: float = 0.001
    histogram_bins: int = 200
    otsu_bins: int = 200
    control_points: int = 4


def _sitk_image(data_xyz: np.ndarray, spacing_xyz) -> sitk.Image:
    import SimpleITK as sitk

    # SimpleITK's array view is (Z, Y, X) for an image indexed (x, y, z).
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data_xyz, dtype=np.float32).transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing_xyz])
    return img


def otsu_mask(image: sitk.Image, bins: int = 200) -> sitk.Image:
    """1 above Otsu's threshold, 0 below (the tutorial's ``OtsuThreshold(image, 0, 1, 200)``)."""
    import SimpleITK as sitk

    return sitk.OtsuThreshold(image, 0, 1, int(bins))


def estimate_log_field(data_xyz: np.ndarray, spacing_xyz, params: N4Params, threads: int = 1) -> np.ndarray:
    """N4's log bias field (X, Y, Z) float32 at full resolution, estimated at ``params.shrink_factor``.

    ``data_xyz`` is one modality in the NIfTI file's (X, Y, Z) order; ``spacing_xyz`` in mm.
    The corrected image is ``data / exp(log_field)``.
    """
    import SimpleITK as sitk

    threads = max(1, int(threads))
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    image = _sitk_image(data_xyz, spacing_xyz)
    mask = otsu_mask(image, params.otsu_bins)
    small, small_mask = image, mask
    if params.shrink_factor > 1:
        shrink = [int(params.shrink_factor)] * image.GetDimension()
        small, small_mask = sitk.Shrink(image, shrink), sitk.Shrink(mask, shrink)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetNumberOfThreads(threads)
    corrector.SetMaximumNumberOfIterations([int(i) for i in params.iterations])
    corrector.SetConvergenceThreshold(float(params.convergence_threshold))
    corrector.SetNumberOfHistogramBins(int(params.histogram_bins))
    corrector.SetNumberOfControlPoints([int(params.control_points)] * image.GetDimension())
    corrector.Execute(small, small_mask)
    log_field = corrector.GetLogBiasFieldAsImage(image)  # B-spline field evaluated on the full grid
    return sitk.GetArrayFromImage(log_field).transpose(2, 1, 0).astype(np.float32)


def correct_array(
    data_xyz: np.ndarray, spacing_xyz, params: N4Params, threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(corrected float32 (X, Y, Z), log field float32 (X, Y, Z)) of one modality."""
    data = np.asarray(data_xyz, dtype=np.float32)
    log_field = estimate_log_field(data, spacing_xyz, params, threads)
    return (data / np.exp(log_field)).astype(np.float32), log_field


def correct_file(in_path: str | os.PathLike, out_path: str | os.PathLike, params: N4Params, threads: int = 1) -> None:
    """Correct one NIfTI modality; write float32 NIfTI with the input's header (affine, qform/sform,
    units) and no intensity scaling."""
    import nibabel as nib

    from medflow import io
    from medflow.ingest.brats import load_nifti

    img, data = load_nifti(in_path, dtype=np.float32)
    if not data.any():
        raise InputError(in_path, "all voxels are zero: nothing to correct")
    try:
        corrected, _ = correct_array(data, img.header.get_zooms()[:3], params, threads)
    except RuntimeError as exc:  # ITK exceptions, e.g. an empty Otsu mask
        raise InputError(in_path, f"N4 failed ({str(exc).strip().splitlines()[-1]})") from None
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    out = nib.Nifti1Image(corrected, img.affine, header)
    out.header.set_slope_inter(1.0, 0.0)  # float data: no scaling, nothing clipped
    with io.atomic_path(out_path) as tmp:
        nib.save(out, str(tmp))
    log.info("%s -> %s", os.path.basename(str(in_path)), os.path.basename(str(out_path)))


def correct_case(in_paths: dict, out_paths: dict, params: N4Params, threads: int = 1) -> None:
    """Correct each modality {modality: in path} -> {modality: out path} (one job per case)."""
    for modality, path in in_paths.items():
        correct_file(path, out_paths[modality], params, threads)
