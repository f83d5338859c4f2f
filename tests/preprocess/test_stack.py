"""HDF5 stacking: axis order, label mapping, attributes, chunking and atomic writes."""

from __future__ import annotations

import json

import h5py
import nibabel as nib
import numpy as np
import pytest

from medflow.errors import InputError
from medflow.ingest.brats import MODALITIES
from medflow.preprocess.stack import StackParams, stack_case, to_stored_label

SHAPE_XYZ = (10, 12, 9)
KEPT = (2, 8)
CASE = "BraTS20_Training_007"
AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.5, 0], [0, 0, 0, 1]])


@pytest.fixture
def case_files(nifti):
    """Four modalities whose voxel values encode (modality, x, y, z) and a segmentation with labels 1, 2, 4."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE_XYZ), indexing="ij")
    mods = {m: nifti(f"{CASE}_{m}.nii", (1000 * c + 100 * x + 10 * y + z).astype(np.float32), affine=AFFINE)
            for c, m in enumerate(MODALITIES)}
    seg = np.zeros(SHAPE_XYZ, np.uint8)
    seg[2:5, 3:7, 3:6] = 2
    seg[3, 4:6, 4] = 1
    seg[4, 5, 3:5] = 4
    return mods, nifti(f"{CASE}_seg.nii", seg, affine=AFFINE), seg


def test_label_mapping_stores_4_as_3():
    seg = np.array([0, 1, 2, 4, 4, 0])
    out = to_stored_label(seg)
    assert out.dtype == np.uint8 and out.tolist() == [0, 1, 2, 3, 3, 0]
    with pytest.raises(InputError, match=r"\[3\]"):
        to_stored_label(np.array([0, 3]), "seg.nii")


def test_stack_layout_axes_and_attributes(case_files, tmp_path):
    mods, seg_path, seg = case_files
    out = tmp_path / "stack" / f"{CASE}.h5"
    names = [f"{CASE}_{m}.nii" for m in (*MODALITIES, "seg")]
    stack_case(CASE, mods, seg_path, KEPT, out, StackParams(chunk_zyx=[4, 8, 64]), source_files=names)
    with h5py.File(out) as f:
        image, label = f["image"], f["label"]
        assert image.dtype == np.float32 and image.shape == (4, KEPT[1] - KEPT[0], 12, 10)
        assert label.dtype == np.uint8 and label.shape == image.shape[1:]
        # image[c, z, y, x] = nifti[x, y, z + start]
        c, z, y, x = 2, 3, 5, 7
        assert image[c, z, y, x] == 1000 * c + 100 * x + 10 * y + (z + KEPT[0])
        assert image.chunks == (1, 4, 8, 10), "chunks of one modality, clipped to the volume"
        assert image.compression == "gzip" and label.compression == "gzip"
        assert sorted(np.unique(label[()]).tolist()) == [0, 1, 2, 3]
        attrs = dict(f.attrs)
        assert attrs["case_id"] == CASE
        assert json.loads(attrs["modalities"]) == list(MODALITIES)
        assert json.loads(attrs["source_files"]) == names
        np.testing.assert_array_equal(attrs["spacing_zyx"], [1.5, 1.0, 1.0])
        np.testing.assert_array_equal(attrs["affine"], AFFINE)
        np.testing.assert_array_equal(attrs["original_shape_zyx"], [9, 12, 10])
        np.testing.assert_array_equal(attrs["kept_z_range"], KEPT)
        stored = label[()]
    # The documented inverse puts the label back into the source grid.
    back = np.zeros(SHAPE_XYZ, np.uint8)
    back[:, :, KEPT[0] : KEPT[1]] = np.where(stored == 3, 4, stored).transpose(2, 1, 0)
    np.testing.assert_array_equal(back, seg)
    restored = nib.Nifti1Image(back, attrs["affine"])
    np.testing.assert_array_equal(restored.affine, nib.load(seg_path).affine)


def test_labels_outside_the_kept_range_are_refused(case_files, tmp_path):
    mods, seg_path, _ = case_files
    out = tmp_path / "x.h5"
    with pytest.raises(InputError, match="outside the kept slices"):
        stack_case(CASE, mods, seg_path, (5, 9), out, StackParams())
    assert not out.exists() and list(tmp_path.glob("*.h5")) == [], "nothing half-written"


def test_mismatched_segmentation_leaves_nothing(case_files, nifti, tmp_path):
    mods, _, _ = case_files
    bad = nifti("bad_seg.nii", np.zeros((10, 12, 7), np.uint8))
    with pytest.raises(InputError, match="bad_seg.nii: shape"):
        stack_case(CASE, mods, bad, KEPT, tmp_path / "y.h5", StackParams())
    assert list(tmp_path.glob("*.h5")) == [] and list(tmp_path.glob(".*")) == []


def test_uncompressed_option(case_files, tmp_path):
    mods, seg_path, _ = case_files
    stack_case(CASE, mods, seg_path, KEPT, tmp_path / "z.h5", StackParams(compression="none"))
    with h5py.File(tmp_path / "z.h5") as f:
        assert f["image"].compression is None and f["image"].chunks is not None
