"""BraTS ingest: discovery of real-layout quirks, every problem of a malformed case at once, split and manifest."""

from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medflow.errors import InputError
from medflow.ingest import brats
from medflow.synthetic import brats as sb
from tests.ingest.problems import assert_reported

CFG = {
    "n_cases": 4,
    "hgg_fraction": 0.5,
    "shape_xyz": [32, 32, 24],
    "blank_slices": [1, 3],
    "bias_strength": 0.3,
    "noise": 0.03,
}
CASE = "BraTS20_Training_002"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine") / "MICCAI_BraTS2020_TrainingData"
    sb.generate(CFG, root, seed=3)
    return root


@pytest.fixture
def raw(pristine, tmp_path):
    """A private copy each test may break."""
    return shutil.copytree(pristine, tmp_path / "MICCAI_BraTS2020_TrainingData")


def path(raw, kind, case=CASE):
    return raw / case / f"{case}_{kind}.nii"


def rewrite(raw, kind, data, affine=None):
    img = nib.load(path(raw, kind), mmap=False)
    header = img.header.copy()
    header.set_data_dtype(data.dtype)
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine, header), path(raw, kind))


def test_discover_cases_lists_case_folders_only(raw):
    (raw / "README.txt").write_text("not a case")
    (raw / "extras").mkdir()
    assert brats.discover_cases(raw) == sb.case_ids(CFG)


@pytest.mark.parametrize("where", ["", "missing"])
def test_discover_cases_names_the_missing_folder(tmp_path, where):
    with pytest.raises(InputError, match="brats.raw_dir" if not where else "not found"):
        brats.discover_cases(str(tmp_path / where) if where else "")


def test_case_files_finds_gz_and_the_misnamed_segmentation(raw):
    flair = path(raw, "flair")
    with open(flair, "rb") as src, gzip.open(str(flair) + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    flair.unlink()
    path(raw, "seg").rename(raw / CASE / "W39_1998.09.19_Segm.nii")  # as case 355 of the real download
    files = brats.case_files(raw, CASE)
    assert files["flair"].endswith(f"{CASE}_flair.nii.gz")
    assert files["seg"].endswith("W39_1998.09.19_Segm.nii")
    info = brats.validate_case(raw, CASE)
    assert info["source_files"]["seg"] == "<non-standard file name>", "a dated file name stays out of derived files"
    assert info["source_files"]["flair"] == f"{CASE}_flair.nii.gz"


def test_valid_case_is_described(raw):
    info = brats.validate_case(raw, CASE)
    assert info["shape_xyz"] == CFG["shape_xyz"] and info["spacing_xyz"] == [1.0, 1.0, 1.0]
    np.testing.assert_array_equal(info["affine"], sb.brats_affine(CFG["shape_xyz"]))
    assert set(info["files"]) == {"flair", "t1", "t1ce", "t2", "seg"}


def _missing(raw):
    path(raw, "t1ce").unlink()
    return "t1ce", "missing t1ce"


def _not_nifti(raw):
    path(raw, "flair").write_text("<html>download failed</html>")
    return "flair", "not a readable NIfTI"


def _truncated(raw):
    p = path(raw, "t2")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return "t2", "truncated"


def _shape(raw):
    rewrite(raw, "t1", np.ones((32, 32, 20), np.int16))
    return "t1", "shape"


def _affine(raw):
    img = nib.load(path(raw, "t1ce"), mmap=False)
    shifted = img.affine.copy()
    shifted[0, 3] += 2.0
    rewrite(raw, "t1ce", np.asanyarray(img.dataobj), affine=shifted)
    return "t1ce", "affine"


def _labels(raw):
    seg = np.asanyarray(nib.load(path(raw, "seg"), mmap=False).dataobj).copy()
    seg[0, 0, 0] = 7
    seg[0, 0, 1] = 3  # BraTS has no label 3
    rewrite(raw, "seg", seg)
    return "seg", r"values \{3, 7\} outside"


def _all_zero(raw):
    rewrite(raw, "t1", np.zeros(CFG["shape_xyz"], np.int16))
    return "t1", "all voxels are zero"


def _nan(raw):
    data = np.asanyarray(nib.load(path(raw, "flair"), mmap=False).dataobj).astype(np.float32)
    data[10, 10, 10] = np.nan
    rewrite(raw, "flair", data)
    return "flair", "NaN"


@pytest.mark.parametrize("breakage", [_missing, _not_nifti, _truncated, _shape, _affine, _labels, _all_zero, _nan])
def test_malformed_case_raises_one_error_naming_the_file(raw, breakage):
    kind, message = breakage(raw)
    with pytest.raises(InputError, match=message) as exc:
        brats.validate_case(raw, CASE)
    assert exc.value.path.endswith(f"{CASE}_{kind}.nii")
    assert "\n" not in str(exc.value)
    brats.validate_case(raw, "BraTS20_Training_001")  # the other cases are untouched


def test_split_by_patient_stratified_by_grade(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    cases = [f"BraTS20_Training_{i:03d}" for i in range(1, 25)]
    grades = ["HGG" if i % 2 else "LGG" for i in range(24)]
    pd.DataFrame({"Grade": grades, "BraTS_2020_subject_ID": cases}).to_csv(root / "name_mapping.csv", index=False)
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    df = brats.write_split(root, cases, fractions, seed=42, out_csv=tmp_path / "split.csv")
    assert list(pd.read_csv(tmp_path / "split.csv").columns) == ["id", "split", "grade", "patient"]
    assert sorted(df["id"]) == cases and df["id"].is_unique
    assert (df["patient"] == df["id"]).all(), "2020: one case per patient"
    counts = df.groupby(["split", "grade"]).size().to_dict()
    assert counts == {
        ("test", "HGG"): 2,
        ("test", "LGG"): 2,
        ("train", "HGG"): 8,
        ("train", "LGG"): 8,
        ("val", "HGG"): 2,
        ("val", "LGG"): 2,
    }
    assert dict(zip(df["id"], df["grade"])) == dict(zip(cases, grades))
    again = brats.write_split(root, cases[::-1], fractions, seed=42, out_csv=tmp_path / "again.csv")
    assert again.equals(df)


# The 2020 split as written before splits were drawn per patient (one case per patient in 2020), for seeds
# 0, 7 and 42: the second letter of each case's split in id order (r train, a val, e test).
SPLIT_2020_BEFORE_RELEASES = {
    0: "rerarrrrraearrrrarererrarrrrr",
    7: "aarrrrrrraeerrrrrerrreaarrrrr",
    42: "rrrrrraearrraarrerearrrrrrrre",
}


def test_2020_split_is_unchanged_by_the_split_per_patient(tmp_path):
    # Irregular ids and an unbalanced grade mix, like a real download.
    cases = [f"BraTS20_Training_{i:03d}" for i in range(1, 370, 13)]
    grades = ["LGG" if i % 3 == 0 else "HGG" for i in range(len(cases))]
    pd.DataFrame({"BraTS_2020_subject_ID": cases, "Grade": grades}).to_csv(tmp_path / "name_mapping.csv", index=False)
    for seed, expected in SPLIT_2020_BEFORE_RELEASES.items():
        df = brats.write_split(tmp_path, cases, {"train": 0.7, "val": 0.15, "test": 0.15}, seed, tmp_path / "s.csv")
        assert list(df["id"]) == cases
        assert "".join(s[1] for s in df["split"]) == expected, seed


def test_missing_name_mapping_row_names_the_csv(raw, tmp_path):
    mapping = pd.read_csv(raw / "name_mapping.csv")
    mapping[mapping["BraTS_2020_subject_ID"] != CASE].to_csv(raw / "name_mapping.csv", index=False)
    with pytest.raises(InputError, match=f"name_mapping.csv: no row for case {CASE}"):
        brats.write_split(raw, sb.case_ids(CFG), {"train": 0.5, "test": 0.5}, 0, tmp_path / "split.csv")
    assert not (tmp_path / "split.csv").exists()


def test_manifest_from_headers_keeps_going_past_a_broken_case(raw, tmp_path):
    path(raw, "t2", "BraTS20_Training_003").unlink()
    path(raw, "flair", "BraTS20_Training_004").write_text("garbage")
    df = brats.write_manifest(raw, sb.case_ids(CFG), tmp_path / "manifest.csv")
    assert list(df.columns) == ["id", "grade", "shape_xyz", "spacing_xyz_mm", "files", "missing"]
    row = df.set_index("id").fillna("")
    assert row.loc[CASE, "shape_xyz"] == "32x32x24" and row.loc[CASE, "spacing_xyz_mm"] == "1x1x1"
    assert row.loc[CASE, "files"].split(";") == [f"{CASE}_{k}.nii" for k in ("flair", "t1", "t1ce", "t2", "seg")]
    assert row.loc["BraTS20_Training_003", "missing"] == "t2"
    assert row.loc["BraTS20_Training_004", "shape_xyz"] == ""


def test_every_problem_of_a_case_is_reported_at_once(raw):
    _nan(raw)
    _shape(raw)
    seg = np.asanyarray(nib.load(path(raw, "seg"), mmap=False).dataobj).copy()
    seg[0, 0, 0] = 3
    rewrite(raw, "seg", seg)
    with pytest.raises(InputError) as exc:
        brats.validate_case(raw, CASE)
    assert_reported(
        exc.value,
        [
            (path(raw, "flair"), "contains NaN"),
            (path(raw, "t1"), "shape [32, 32, 20] differs from flair's [32, 32, 24]"),
            (path(raw, "seg"), "segmentation values {3} outside"),
        ],
    )


def test_an_unreadable_flair_does_not_hide_the_other_files(raw):
    _not_nifti(raw)
    path(raw, "seg").unlink()
    rewrite(raw, "t2", np.ones((32, 32, 20), np.int16))
    with pytest.raises(InputError) as exc:
        brats.validate_case(raw, CASE)
    assert_reported(
        exc.value,
        [
            (path(raw, "seg"), "missing segmentation"),
            (path(raw, "flair"), "not a readable NIfTI"),
            (path(raw, "t2"), "shape [32, 32, 20] differs from t1's [32, 32, 24]"),
        ],
    )


def test_every_missing_or_bad_mapping_row_is_reported_before_anything_is_written(raw, tmp_path):
    cases = sb.case_ids(CFG)
    mapping = pd.read_csv(raw / "name_mapping.csv")
    mapping.loc[mapping["BraTS_2020_subject_ID"] == cases[3], "Grade"] = "GBM"
    mapping[~mapping["BraTS_2020_subject_ID"].isin(cases[:2])].to_csv(raw / "name_mapping.csv", index=False)
    csv = raw / "name_mapping.csv"
    expected = [
        (csv, f"no row for case {cases[0]}"),
        (csv, f"no row for case {cases[1]}"),
        (csv, f"case {cases[3]} has grade 'GBM', expected HGG or LGG"),
    ]
    with pytest.raises(InputError) as exc:
        brats.write_split(raw, cases, {"train": 0.5, "test": 0.5}, 0, tmp_path / "split.csv")
    assert_reported(exc.value, expected)
    shutil.rmtree(raw / cases[2])
    with pytest.raises(InputError) as exc:
        brats.write_manifest(raw, cases, tmp_path / "manifest.csv")
    assert_reported(exc.value, expected + [(raw / cases[2], "case folder not found")])
    assert not (tmp_path / "split.csv").exists() and not (tmp_path / "manifest.csv").exists()


# New, unlabeled cases (the predict stage): the release's validation download, validated without seg.
VAL_CASE = "BraTS20_Validation_001"


@pytest.fixture(scope="module")
def pristine_validation(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine_validation") / "MICCAI_BraTS2020_ValidationData"
    sb.generate_predict({**CFG, "predict": {"n_cases": 2}}, root, seed=3)
    return root


@pytest.fixture
def validation(pristine_validation, tmp_path):
    return shutil.copytree(pristine_validation, tmp_path / "MICCAI_BraTS2020_ValidationData")


def test_unlabeled_case_is_valid_without_seg(validation):
    info = brats.validate_case(validation, VAL_CASE, with_seg=False)
    assert set(info["files"]) == set(brats.MODALITIES) and info["shape_xyz"] == CFG["shape_xyz"]
    assert info["source_files"]["flair"] == f"{VAL_CASE}_flair.nii"
    with pytest.raises(InputError, match="missing segmentation"):
        brats.validate_case(validation, VAL_CASE)  # a training case needs its seg


def test_a_seg_beside_a_new_case_is_ignored(raw):
    """A training folder given to predict: its seg (even a broken one) plays no part."""
    path(raw, "seg").write_text("not a nifti")
    info = brats.validate_case(raw, CASE, with_seg=False)
    assert "seg" not in info["files"]
    assert brats.predict_files(raw, CASE) == {m: str(path(raw, m)) for m in brats.MODALITIES}


def _val_path(root, kind):
    return root / VAL_CASE / f"{VAL_CASE}_{kind}.nii"


@pytest.mark.parametrize(
    "kind,message,breakage",
    [
        ("t1ce", "missing t1ce modality", lambda p: p.unlink()),
        ("t2", "shape [32, 32, 20] differs from flair's [32, 32, 24]",
         lambda p: nib.save(nib.Nifti1Image(np.ones((32, 32, 20), np.int16), nib.load(p).affine), p)),
        ("flair", "not a readable NIfTI", lambda p: p.write_bytes(b"\0" * 10)),
    ],
)  # fmt: skip
def test_unlabeled_case_with_a_bad_file_gives_one_error_naming_it(validation, kind, message, breakage):
    breakage(_val_path(validation, kind))
    with pytest.raises(InputError) as exc:
        brats.validate_case(validation, VAL_CASE, with_seg=False)
    assert len(exc.value.errors) == 1 and "\n" not in str(exc.value)
    assert exc.value.path == str(_val_path(validation, kind)) and message in exc.value.problem
    brats.validate_case(validation, "BraTS20_Validation_002", with_seg=False)  # the other case is untouched


def test_discover_predict_cases_takes_validation_and_training_ids(validation, pristine):
    (validation / "README").mkdir()
    shutil.copytree(pristine / CASE, validation / CASE)
    assert brats.discover_predict_cases(validation) == [CASE, VAL_CASE, "BraTS20_Validation_002"]
    assert brats.predict_files(validation, VAL_CASE, synthetic=True) == {
        m: str(_val_path(validation, m)) for m in brats.MODALITIES
    }


def test_a_folder_without_cases_to_predict_names_the_folder_and_the_patterns(tmp_path):
    (tmp_path / "BraTS-GLI-00001-000").mkdir()
    with pytest.raises(InputError) as exc:
        brats.discover_predict_cases(tmp_path)
    assert exc.value.path == str(tmp_path)
    assert r"BraTS20_Validation_\d+ or BraTS20_Training_\d+" in exc.value.problem
    assert "found e.g. BraTS-GLI-00001-000 (the 2023-gli layout)" in exc.value.problem
    with pytest.raises(InputError, match="not found"):
        brats.discover_predict_cases(tmp_path / "absent")
