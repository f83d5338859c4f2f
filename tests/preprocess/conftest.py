"""Small NIfTI volumes in the BraTS geometry for the preprocessing tests."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medflow.synthetic.brats import brats_affine


def write_nifti(path, data_xyz, affine=None, zooms=None):
    """Save an (X, Y, Z) array as NIfTI with the BraTS affine (or ``affine``); returns the path."""
    affine = brats_affine(data_xyz.shape) if affine is None else affine
    img = nib.Nifti1Image(np.asarray(data_xyz), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if zooms is not None:
        img.header.set_zooms(zooms)
    nib.save(img, str(path))
    return path


@pytest.fixture
def nifti(tmp_path):
    def make(name, data_xyz, **kw):
        return write_nifti(tmp_path / name, data_xyz, **kw)

    return make
