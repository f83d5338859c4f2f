"""HDF5 stacking: axis order, label mapping, attributes, chunking and atomic writes; reading a stack back."""

from __future__ import annotations

import json
import logging
import re

import h5py
import nibabel as nib
import numpy as np
import pytest

from medflow.errors import InputError
from medflow.ingest import releases
from medflow.ingest.brats import MODALITIES
from medflow.params import from_config
from medflow.preprocess.stack import StackParams, read_stack, stack_case, to_stored_label

SHAPE_XYZ = (10, 12, 9)
KEPT = (2, 8)
CASE = "BraTS20_Training_007"
# Zooms (x, y, z) = (0.9, 1.1, 1.5) mm: all different, so a reversed or rolled spacing shows.
AFFINE = np.array([[-0.9, 0, 0, 0], [0, -1.1, 0, 239.0], [0, 0, 1.5, 0], [0, 0, 0, 1]])


@pytest.fixture
def case_files(nifti):
    """Four modalities whose voxel values encode (modality, x, y, z) and a segmentation with labels 1, 2, 4."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE_XYZ), indexing="ij")
    mods = {
        m: nifti(f"{CASE}_{m}.nii", (1000 * c + 100 * x + 10 * y + z).astype(np.float32), affine=AFFINE)
        for c, m in enumerate(MODALITIES)
    }
    seg = np.zeros(SHAPE_XYZ, np.uint8)
    seg[2:5, 3:7, 3:6] = 2
    seg[3, 4:6, 4] = 1
    seg[4, 5, 3:5] = 4
    return mods, nifti(f"{CASE}_seg.nii", seg, affine=AFFINE), seg


def test_label_mapping_stores_4_as_3():
    seg = np.array([0, 1, 2, 4, 4, 0])
    out = to_stored_label(seg)
    assert out.dtype == np.uint8 and out.tolist() == [0, 1, 2, 3, 3, 0]
    with pytest.raises(
        InputError, match=r"^seg.nii: segmentation values \{3\} outside the BraTS 2020 label set \{0, 1, 2, 4\}$"
    ):
        to_stored_label(np.array([0, 3]), "seg.nii")
    # At most eight of the bad values are listed; without a path the message says "segmentation".
    with pytest.raises(InputError, match=r"^segmentation: segmentation values \{3, 5, 6, 7, 8, 9, 10, 11\} outside"):
        to_stored_label(np.array([0, 3, 5, 6, 7, 8, 9, 10, 11, 12]))


def test_label_mapping_follows_the_release():
    """2021 shares 2020's labels; 2023-GLI's are already the stored ones, and its 4 is an error."""
    raw_2020 = np.array([[0, 1], [2, 4]], np.uint8)
    stored = to_stored_label(raw_2020)
    assert stored.tolist() == [[0, 1], [2, 3]] and stored.dtype == np.uint8
    np.testing.assert_array_equal(to_stored_label(raw_2020, release=releases.get("2021")), stored)
    gli = to_stored_label(np.array([[0, 1], [2, 3]], np.int16), release=releases.get("2023-gli"))
    assert gli.dtype == np.uint8 and gli.shape == (2, 2)
    np.testing.assert_array_equal(gli, stored)
    with pytest.raises(
        InputError,
        match=r"^gli_seg.nii.gz: segmentation values \{4\} outside the BraTS 2023-gli label set \{0, 1, 2, 3\}$",
    ):
        to_stored_label(raw_2020, "gli_seg.nii.gz", release=releases.get("2023-gli"))
    with pytest.raises(InputError, match=r"^s.nii.gz: segmentation values \{3\} outside the BraTS 2021 label set"):
        to_stored_label(np.array([0, 3]), "s.nii.gz", release=releases.get("2021"))


def test_stack_layout_axes_and_attributes(case_files, tmp_path, caplog):
    mods, seg_path, seg = case_files
    out = tmp_path / "stack" / f"{CASE}.h5"
    names = [f"{CASE}_{m}.nii.gz" for m in (*MODALITIES, "seg")]  # the raw files', not the inputs' names
    with caplog.at_level(logging.INFO, logger="medflow.preprocess.stack"):
        stack_case(CASE, mods, seg_path, KEPT, out, StackParams(chunk_zyx=[4, 8, 64]), source_files=names)
    assert [r.getMessage() for r in caplog.records] == [f"{CASE}: image (4, 6, 12, 10), slices [2, 8) of 9"], (
        "the rule log says what was kept"
    )
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
        np.testing.assert_allclose(attrs["spacing_zyx"], [1.5, 1.1, 0.9], rtol=1e-6)
        assert attrs["spacing_zyx"].dtype == np.float64 and attrs["affine"].dtype == np.float64
        np.testing.assert_array_equal(attrs["affine"], nib.load(mods["flair"]).affine)  # flair's by default
        np.testing.assert_array_equal(attrs["original_shape_zyx"], [9, 12, 10])
        np.testing.assert_array_equal(attrs["kept_z_range"], KEPT)
        stored = label[()]
    # The documented inverse puts the label back into the source grid.
    back = np.zeros(SHAPE_XYZ, np.uint8)
    back[:, :, KEPT[0] : KEPT[1]] = np.where(stored == 3, 4, stored).transpose(2, 1, 0)
    np.testing.assert_array_equal(back, seg)
    restored = nib.Nifti1Image(back, attrs["affine"])
    np.testing.assert_array_equal(restored.affine, nib.load(seg_path).affine)


@pytest.mark.parametrize("before, after", [(3, 3), (0, 2), (2, 0)])
def test_labels_outside_the_kept_range_are_refused(case_files, nifti, tmp_path, before, after):
    """Trimming must never drop tumour: labelled voxels below start or from stop on are counted."""
    mods, _, _ = case_files
    seg = np.zeros(SHAPE_XYZ, np.uint8)
    seg[4, 5, 3:6] = 2  # inside [2, 8)
    seg[0, :before, 1] = 1
    seg[9, :after, 8] = 4
    seg_path = nifti("edge_seg.nii", seg, affine=AFFINE)
    out = tmp_path / "x.h5"
    with pytest.raises(
        InputError, match=rf"edge_seg.nii: {before + after} labelled voxels lie outside the kept slices \[2, 8\)"
    ):
        stack_case(CASE, mods, seg_path, KEPT, out, StackParams())
    assert not out.exists() and list(tmp_path.glob("*.h5")) == [], "nothing half-written"


def test_bad_label_value_names_the_segmentation(case_files, nifti, tmp_path):
    mods, _, seg = case_files
    bad = nifti("bad_values_seg.nii", np.where(seg == 1, 3, seg).astype(np.uint8), affine=AFFINE)
    with pytest.raises(InputError) as err:
        stack_case(CASE, mods, bad, KEPT, tmp_path / "v.h5", StackParams())
    assert str(err.value) == f"{bad}: segmentation values {{3}} outside the BraTS 2020 label set {{0, 1, 2, 4}}"
    assert list(tmp_path.glob("*.h5")) == []


def _stacked(path):
    with h5py.File(path) as f:
        return f["image"][()], f["label"][()], dict(f.attrs)


@pytest.mark.parametrize(
    "name, raw",
    [("2021", lambda seg: seg), ("2023-gli", lambda seg: np.where(seg == 4, 3, seg).astype(np.uint8))],
)
def test_other_releases_stack_to_the_same_stored_labels(case_files, nifti, tmp_path, name, raw):
    """The same tumour in another release's labels gives the 2020 stack, voxel for voxel; only the
    recorded release differs."""
    mods, seg_path, seg = case_files
    other = nifti(f"{name}_seg.nii.gz", raw(seg), affine=AFFINE)
    stack_case(CASE, mods, seg_path, KEPT, tmp_path / "2020.h5", StackParams())
    stack_case(CASE, mods, other, KEPT, tmp_path / "other.h5", StackParams(), release=releases.get(name))
    image, label, attrs = _stacked(tmp_path / "2020.h5")
    image_o, label_o, attrs_o = _stacked(tmp_path / "other.h5")
    assert sorted(np.unique(label_o).tolist()) == [0, 1, 2, 3]
    np.testing.assert_array_equal(label_o, label)
    np.testing.assert_array_equal(image_o, image)
    assert attrs["release"] == "2020" and attrs_o["release"] == name
    assert read_stack(tmp_path / "other.h5").release == name


def test_2023_gli_segmentation_holding_a_4_is_refused(case_files, nifti, tmp_path):
    """A 2020-style segmentation given as 2023-GLI (a mislabelled download or a wrong config) stops the case."""
    mods, seg_path, _ = case_files
    with pytest.raises(InputError) as err:
        stack_case(CASE, mods, seg_path, KEPT, tmp_path / "g.h5", StackParams(), release=releases.get("2023-gli"))
    assert (
        str(err.value) == f"{seg_path}: segmentation values {{4}} outside the BraTS 2023-gli label set {{0, 1, 2, 3}}"
    )
    assert list(tmp_path.glob("*.h5")) == [], "nothing half-written"


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


def test_stacked_volume_is_the_trimmed_nifti_voxel_for_voxel(case_files, tmp_path):
    """image[c] = modality c's (X, Y, Z) data transposed to (Z, Y, X), slices [start, stop), for c in
    flair, t1, t1ce, t2 whatever order the inputs are given in; label the same with 4 stored as 3."""
    mods, seg_path, seg = case_files
    shuffled = {m: mods[m] for m in ("t2", "t1ce", "flair", "t1")}
    out = tmp_path / f"{CASE}.h5"
    stack_case(CASE, shuffled, seg_path, KEPT, out, StackParams(chunk_zyx=[4, 8, 64], compression="lzf"))
    start, stop = KEPT
    with h5py.File(out) as f:
        image, label, attrs = f["image"][()], f["label"][()], dict(f.attrs)
        assert f["image"].compression == "lzf" and f["label"].chunks == (4, 8, 10)
    for c, m in enumerate(MODALITIES):
        src = nib.load(mods[m]).get_fdata(dtype=np.float32)
        np.testing.assert_array_equal(image[c], src.transpose(2, 1, 0)[start:stop], err_msg=m)
    expected = np.where(seg == 4, 3, seg).transpose(2, 1, 0)[start:stop]
    np.testing.assert_array_equal(label, expected)
    np.testing.assert_allclose(attrs["spacing_zyx"], [1.5, 1.1, 0.9], rtol=1e-6)
    np.testing.assert_allclose(attrs["affine"], AFFINE, rtol=1e-6)
    np.testing.assert_array_equal(attrs["kept_z_range"], KEPT)
    # Without explicit names: the input files' names, flair, t1, t1ce, t2, seg.
    assert json.loads(attrs["source_files"]) == [f"{CASE}_{m}.nii" for m in (*MODALITIES, "seg")]


def test_given_affine_is_stored_instead_of_the_files(case_files, tmp_path):
    """The validated raw affine (a JSON list in the workflow) wins over the corrected file's header."""
    mods, seg_path, _ = case_files
    raw = AFFINE.copy()
    raw[:3, 3] += 0.25
    stack_case(CASE, mods, seg_path, KEPT, tmp_path / "a.h5", StackParams(), affine=raw.tolist())
    # A hand-written integer affine is stored as floats like every other.
    integer = [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]]
    stack_case(CASE, mods, seg_path, KEPT, tmp_path / "b.h5", StackParams(), affine=integer)
    with h5py.File(tmp_path / "a.h5") as f, h5py.File(tmp_path / "b.h5") as g:
        np.testing.assert_array_equal(f.attrs["affine"], raw)
        np.testing.assert_array_equal(g.attrs["affine"], integer)
        assert f.attrs["affine"].dtype == np.float64 and g.attrs["affine"].dtype == np.float64


@pytest.mark.parametrize("kept", [(-1, 5), (3, 3), (0, 10)])
def test_kept_range_outside_the_volume_is_an_input_error(case_files, tmp_path, kept):
    mods, seg_path, _ = case_files
    with pytest.raises(InputError, match=rf"flair.nii: kept slice range \[{kept[0]}, {kept[1]}\) outside its 9 slices"):
        stack_case(CASE, mods, seg_path, kept, tmp_path / "k.h5", StackParams())
    assert list(tmp_path.glob("*.h5")) == []


def test_whole_volume_range_is_accepted(case_files, tmp_path):
    mods, seg_path, seg = case_files
    stack_case(CASE, mods, seg_path, (0, 9), tmp_path / "w.h5", StackParams())
    with h5py.File(tmp_path / "w.h5") as f:
        assert f["image"].shape == (4, 9, 12, 10)
        np.testing.assert_array_equal(f["label"][()], np.where(seg == 4, 3, seg).transpose(2, 1, 0))


def test_modality_of_another_shape_is_an_input_error(case_files, nifti, tmp_path):
    mods, seg_path, _ = case_files
    odd = dict(mods, t1ce=nifti("odd_t1ce.nii", np.ones((10, 12, 8), np.float32), affine=AFFINE))
    with pytest.raises(InputError, match=r"odd_t1ce.nii: shape \[10, 12, 8\] differs from flair's"):
        stack_case(CASE, odd, seg_path, KEPT, tmp_path / "s.h5", StackParams())
    assert list(tmp_path.glob("*.h5")) == []


def test_compression_options():
    kw = StackParams(chunk_zyx=[16, 64, 64], compression_level=7).h5_kwargs((9, 40, 100))
    assert kw == {"chunks": (9, 40, 64), "compression": "gzip", "compression_opts": 7, "shuffle": True}
    assert StackParams(compression="lzf").h5_kwargs((2, 2, 2)) == {
        "chunks": (2, 2, 2),
        "compression": "lzf",
        "shuffle": True,
    }
    assert StackParams(compression="none").h5_kwargs((2, 2, 2)) == {"chunks": (2, 2, 2)}
    assert StackParams(chunk_zyx=[4, 4, 4], compression="none").h5_kwargs((1, 3, 9)) == {"chunks": (1, 3, 4)}
    with pytest.raises(ValueError, match="^unknown compression 'zstd': gzip, lzf or none$"):
        StackParams(compression="zstd").h5_kwargs((2, 2, 2))
    p = from_config(StackParams, {"chunk_zyx": [8, 8, 8], "compression": "lzf"})
    assert p == StackParams(chunk_zyx=[8, 8, 8], compression="lzf", compression_level=4)


# --- read_stack ---------------------------------------------------------------------------------


def test_read_stack(case_files, tmp_path):
    """What the later stages get back from a stack_case file: the volume, the stored label and the geometry."""
    mods, seg_path, seg = case_files
    path = tmp_path / f"{CASE}.h5"
    stack_case(CASE, mods, seg_path, KEPT, path, StackParams())
    s = read_stack(path)
    assert s.case_id == CASE
    assert s.image.dtype == np.float32 and s.image.shape == (4, KEPT[1] - KEPT[0], 12, 10)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(s.image, f["image"][()])
    assert s.label.dtype == np.uint8 and s.label.shape == s.image.shape[1:] and s.label.max() == 3
    np.testing.assert_array_equal(s.label, np.where(seg == 4, 3, seg).transpose(2, 1, 0)[KEPT[0] : KEPT[1]])
    assert s.original_shape_zyx == (9, 12, 10) and s.kept_z_range == KEPT
    np.testing.assert_allclose(s.spacing_zyx, (1.5, 1.1, 0.9), rtol=1e-6)
    assert s.affine.shape == (4, 4) and np.allclose(s.affine, AFFINE)
    assert read_stack(path, with_label=False).label is None
    assert s.release == "2020"


def test_read_stack_release_attribute(case_files, tmp_path):
    """Stacks written before the release was recorded read as 2020; an unknown name is refused."""
    mods, seg_path, _ = case_files
    path = tmp_path / "old.h5"
    stack_case(CASE, mods, seg_path, KEPT, path, StackParams(), release=releases.get("2021"))
    assert read_stack(path).release == "2021"
    with h5py.File(path, "r+") as f:
        del f.attrs["release"]
    assert read_stack(path).release == "2020"
    with h5py.File(path, "r+") as f:
        f.attrs["release"] = "2019"
    with pytest.raises(
        InputError, match=rf"^{re.escape(str(path))}: attribute 'release' names an unknown BraTS release '2019'$"
    ):
        read_stack(path)


def test_stack_with_a_raw_label_4_is_refused(case_files, tmp_path):
    mods, seg_path, _ = case_files
    path = tmp_path / "case.h5"
    stack_case(CASE, mods, seg_path, KEPT, path, StackParams())
    with h5py.File(path, "r+") as f:
        label = f["label"][()]
        f["label"][...] = np.where(label == 3, 4, label)  # not converted to the stored 3
    with pytest.raises(InputError, match="case.h5: 'label' holds values \\[4\\]"):
        read_stack(path)


def test_a_new_case_without_segmentation_stacks_without_a_label(case_files, tmp_path):
    mods, seg_path, _ = case_files
    stack_case(CASE, mods, None, KEPT, tmp_path / "new.h5", StackParams(), release=releases.get("2020"))
    stack_case(CASE, mods, seg_path, KEPT, tmp_path / "labelled.h5", StackParams())
    with h5py.File(tmp_path / "new.h5") as new, h5py.File(tmp_path / "labelled.h5") as labelled:
        assert "label" not in new and (new["image"][...] == labelled["image"][...]).all()
        assert json.loads(new.attrs["source_files"]) == [f"{CASE}_{m}.nii" for m in MODALITIES]
    assert read_stack(tmp_path / "new.h5", with_label=False).image.shape == (4, KEPT[1] - KEPT[0], 12, 10)
