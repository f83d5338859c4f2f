"""BraTS releases: each release's public layout read by the ingest, its labels, and splits by patient.

The fake downloads are written here by hand (8x8x6 volumes) from the public layouts spelled out below,
independently of the release table, so a wrong entry there fails these tests.
"""

from __future__ import annotations

import dataclasses
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medflow.errors import InputError
from medflow.ingest import brats, releases

SHAPE = (8, 8, 6)
# Public layouts: case id of (patient, time point), separator, file kind of each of our kinds, suffix.
LAYOUTS = {
    "2020": (
        lambda i, t: f"BraTS20_Training_{i:03d}",
        "_",
        {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2", "seg": "seg"},
        ".nii",
    ),
    "2021": (
        lambda i, t: f"BraTS2021_{i:05d}",
        "_",
        {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2", "seg": "seg"},
        ".nii.gz",
    ),
    "2023-gli": (
        lambda i, t: f"BraTS-GLI-{i:05d}-{t:03d}",
        "-",
        {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"},
        ".nii.gz",
    ),
}
# The release's label of the enhancing tumour (stored as 3 inside the pipeline).
ENHANCING = {"2020": 4, "2021": 4, "2023-gli": 3}


def case_id(name, i, t=0):
    return LAYOUTS[name][0](i, t)


def file_path(root, name, case, kind, suffix=None):
    _, sep, kinds, default = LAYOUTS[name]
    return root / case / f"{case}{sep}{kinds[kind]}{suffix or default}"


def write_case(root, name, case, seg_extra=None):
    """One case: modality k holds the constant 10 * (k + 1) (so a file's kind can be read back), the
    segmentation a small tumour in the release's labels (plus ``seg_extra`` at one voxel)."""
    (root / case).mkdir(parents=True)
    for k, kind in enumerate(brats.MODALITIES):
        nib.save(nib.Nifti1Image(np.full(SHAPE, 10 * (k + 1), np.int16), np.eye(4)), file_path(root, name, case, kind))
    seg = np.zeros(SHAPE, np.uint8)
    seg[2:6, 2:6, 1:5] = 2
    seg[3:5, 3:5, 2:4] = 1
    seg[3, 3, 3] = ENHANCING[name]
    if seg_extra is not None:
        seg[0, 0, 0] = seg_extra
    nib.save(nib.Nifti1Image(seg, np.eye(4)), file_path(root, name, case, "seg"))


def download(root, name, cases):
    root.mkdir(parents=True, exist_ok=True)
    for case in cases:
        write_case(root, name, case)
    (root / "README.txt").write_text("not a case")
    (root / "extras").mkdir()  # a folder that is no case
    return root


CASES = {
    "2020": [case_id("2020", i) for i in (1, 2, 10)],
    "2021": [case_id("2021", i) for i in (0, 2, 5)],
    "2023-gli": [case_id("2023-gli", i, t) for i, t in [(0, 0), (0, 1), (2, 0)]],
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_each_release_discovers_and_validates_its_own_layout(tmp_path, name):
    release = releases.get(name)
    root = download(tmp_path / release.raw_subdir, name, CASES[name][::-1])
    assert brats.discover_cases(root, release=release) == sorted(CASES[name])
    case = CASES[name][1]
    info = brats.validate_case(root, case, release=release)
    assert info["shape_xyz"] == list(SHAPE)
    assert info["files"] == {k: str(file_path(root, name, case, k)) for k in brats.KINDS}
    assert info["source_files"] == {k: file_path(root, name, case, k).name for k in brats.KINDS}
    # The synthetic copy's names are the release's public names.
    assert brats.expected_files(root, case, release=release) == info["files"]


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_the_other_suffix_is_accepted_too(tmp_path, name):
    release = releases.get(name)
    root = download(tmp_path / "raw", name, CASES[name][:1])
    case = CASES[name][0]
    default = file_path(root, name, case, "t2")
    other = file_path(root, name, case, "t2", ".nii" if default.name.endswith(".gz") else ".nii.gz")
    img = nib.load(default, mmap=False)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine), other)
    default.unlink()
    assert brats.case_files(root, case, release=release)["t2"] == str(other)
    assert brats.validate_case(root, case, release=release)["source_files"]["t2"] == other.name


def test_2023_file_kinds_are_our_modalities(tmp_path):
    release = releases.get("2023-gli")
    root = download(tmp_path / "raw", "2023-gli", CASES["2023-gli"])
    case = CASES["2023-gli"][0]
    files = brats.case_files(root, case, release=release)
    names = {k: files[k].rsplit("/", 1)[1] for k in files}
    assert names == {
        "flair": f"{case}-t2f.nii.gz",
        "t1": f"{case}-t1n.nii.gz",
        "t1ce": f"{case}-t1c.nii.gz",
        "t2": f"{case}-t2w.nii.gz",
        "seg": f"{case}-seg.nii.gz",
    }
    for k, kind in enumerate(brats.MODALITIES):
        assert np.asanyarray(nib.load(files[kind]).dataobj).max() == 10 * (k + 1), kind


def test_2023_case_with_2020_style_names_is_missing_its_files(tmp_path):
    root = tmp_path / "raw"
    case = case_id("2023-gli", 7, 1)
    (root / case).mkdir(parents=True)
    for kind in brats.KINDS:
        nib.save(nib.Nifti1Image(np.ones(SHAPE, np.int16), np.eye(4)), root / case / f"{case}_{kind}.nii.gz")
    with pytest.raises(InputError) as exc:
        brats.validate_case(root, case, release=releases.get("2023-gli"))
    missing = {e.path.rsplit("/", 1)[1] for e in exc.value.errors if "missing" in e.problem}
    assert missing == {f"{case}-{k}.nii.gz" for k in ("t2f", "t1n", "t1c", "t2w")}  # the segmentation: the quirk


@pytest.mark.parametrize(
    ("configured", "found", "folder"),
    [
        ("2021", "2023-gli", "BraTS-GLI-00000-000"),
        ("2020", "2021", "BraTS2021_00000"),
        ("2023-gli", "2020", "BraTS20_Training_001"),
    ],
)
def test_a_download_of_another_release_is_named_in_one_error(tmp_path, configured, found, folder):
    release = releases.get(configured)
    root = download(tmp_path / "raw", found, [folder])
    with pytest.raises(InputError) as exc:
        brats.discover_cases(root, release=release)
    assert len(exc.value.errors) == 1 and exc.value.path == str(root)
    assert exc.value.problem == (
        f"no case folders match {release.case_pattern} (the {configured} layout; brats.release); "
        f"found e.g. {folder} (the {found} layout)"
    )


def test_no_match_message_without_any_case_of_a_known_release(tmp_path):
    (tmp_path / "raw" / "patient_a").mkdir(parents=True)
    with pytest.raises(InputError, match=r"match BraTS2021_\\d\{5\} .*; found e.g. patient_a$"):
        brats.discover_cases(tmp_path / "raw", release=releases.get("2021"))
    with pytest.raises(InputError, match="holds no folders"):
        brats.discover_cases(tmp_path / "raw" / "patient_a", release=releases.get("2021"))


@pytest.mark.parametrize(("name", "bad"), [("2023-gli", 4), ("2020", 3), ("2021", 3)])
def test_a_label_of_another_release_stops_the_case_with_one_message(tmp_path, name, bad):
    release = releases.get(name)
    root = tmp_path / "raw"
    case, other = CASES[name][:2]
    write_case(root, name, case, seg_extra=bad)
    write_case(root, name, other)
    with pytest.raises(InputError) as exc:
        brats.validate_case(root, case, release=release)
    seg = file_path(root, name, case, "seg")
    expected = "0, 1, 2, 3" if ENHANCING[name] == 3 else "0, 1, 2, 4"
    assert str(exc.value) == f"{seg}: segmentation values {{{bad}}} outside the BraTS {name} label set {{{expected}}}"
    brats.validate_case(root, other, release=release)  # its own labels are fine


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_labels_round_trip_through_the_stored_ones(name):
    release = releases.get(name)
    raw = np.array([0, 1, 2, ENHANCING[name]], np.uint8)
    stored = release.to_stored(raw)
    np.testing.assert_array_equal(stored, [0, 1, 2, 3])  # necrotic 1, oedema 2, enhancing 3
    assert stored.dtype == np.uint8
    np.testing.assert_array_equal(release.from_stored(stored), raw)
    volume = np.random.default_rng(0).choice(raw, size=SHAPE)
    np.testing.assert_array_equal(release.from_stored(release.to_stored(volume)), volume)


def patients_of_2023(n_patients, rng):
    """2023-GLI case ids of ``n_patients`` patients with 1 to 3 time points each."""
    numbers = rng.choice(2000, n_patients, replace=False)
    return [case_id("2023-gli", int(i), t) for i in numbers for t in range(int(rng.integers(1, 4)))]


def test_no_patient_has_cases_in_two_splits(tmp_path):
    release = releases.get("2023-gli")
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    for seed in range(40):
        rng = np.random.default_rng(seed)
        cases = patients_of_2023(12, rng)
        df = brats.write_split(tmp_path, cases, fractions, seed, tmp_path / "split.csv", release=release)
        assert sorted(df["id"]) == sorted(cases)
        assert (df["patient"] == df["id"].str.replace(r"-\d{3}$", "", regex=True)).all()
        # The patient of a case read from its id here, not from the column written.
        per_patient = df.groupby(df["id"].str[: len("BraTS-GLI-00000")])["split"].nunique()
        assert (per_patient == 1).all(), f"seed {seed}: {per_patient[per_patient > 1].index.tolist()}"
        assert set(df["split"]) == set(fractions)
    written = pd.read_csv(tmp_path / "split.csv", dtype=str, keep_default_na=False)
    assert list(written.columns) == ["id", "split", "grade", "patient"] and (written["grade"] == "").all()


def test_patients_are_split_by_the_fractions(tmp_path):
    release = releases.get("2023-gli")
    cases = [case_id("2023-gli", i, t) for i in range(20) for t in range(2)]  # 20 patients, 40 cases
    df = brats.write_split(
        tmp_path, cases, {"train": 0.7, "val": 0.1, "test": 0.2}, 5, tmp_path / "s.csv", release=release
    )
    assert df.groupby("split")["patient"].nunique().to_dict() == {"train": 14, "val": 2, "test": 4}
    assert df.groupby("split").size().to_dict() == {"train": 28, "val": 4, "test": 8}
    again = brats.write_split(
        tmp_path, cases[::-1], {"train": 0.7, "val": 0.1, "test": 0.2}, 5, tmp_path / "a.csv", release=release
    )
    assert again.equals(df)


def test_a_user_release_with_grades_and_patients_is_stratified_by_patient_grade(tmp_path):
    # A user's own layout: 2020 names, but cases BraTS20_Training_NN<d> are time points of patient NN.
    release = dataclasses.replace(releases.get("2020"), patient_pattern=r"(?P<patient>BraTS20_Training_\d\d)\d")
    cases = [f"BraTS20_Training_{p:02d}{t}" for p in range(10, 30) for t in range(2)]
    grade = {c: "LGG" if int(c[-3:-1]) % 4 == 0 else "HGG" for c in cases}  # 5 LGG and 15 HGG patients
    pd.DataFrame({"BraTS_2020_subject_ID": cases, "Grade": [grade[c] for c in cases]}).to_csv(
        tmp_path / "name_mapping.csv", index=False
    )
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    df = brats.write_split(tmp_path, cases, fractions, 1, tmp_path / "split.csv", release=release)
    assert (df.groupby("patient")["split"].nunique() == 1).all()
    assert dict(zip(df["id"], df["grade"])) == grade
    patients = df.drop_duplicates("patient")
    assert patients.groupby(["grade", "split"]).size().to_dict() == {
        ("HGG", "test"): 3,
        ("HGG", "train"): 9,
        ("HGG", "val"): 3,
        ("LGG", "test"): 1,
        ("LGG", "train"): 3,
        ("LGG", "val"): 1,
    }
    grade[cases[0]] = "LGG" if grade[cases[0]] == "HGG" else "HGG"
    pd.DataFrame({"BraTS_2020_subject_ID": cases, "Grade": [grade[c] for c in cases]}).to_csv(
        tmp_path / "name_mapping.csv", index=False
    )
    with pytest.raises(InputError, match=f"patient {cases[0][:-1]} has cases of grades"):
        brats.write_split(tmp_path, cases, fractions, 1, tmp_path / "bad.csv", release=release)
    assert not (tmp_path / "bad.csv").exists()


@pytest.mark.parametrize("name", ["2021", "2023-gli"])
def test_manifest_without_a_grade_file(tmp_path, name):
    release = releases.get(name)
    root = download(tmp_path / "raw", name, CASES[name])
    df = brats.write_manifest(root, CASES[name], tmp_path / "manifest.csv", release=release)
    written = pd.read_csv(tmp_path / "manifest.csv", dtype=str, keep_default_na=False).set_index("id")
    assert (written["grade"] == "").all() and (written["missing"] == "").all()
    case = CASES[name][0]
    assert written.loc[case, "files"].split(";") == [file_path(root, name, case, k).name for k in brats.KINDS]
    assert written.loc[case, "shape_xyz"] == "8x8x6"
    assert list(df["id"]) == CASES[name]


def test_a_case_id_outside_the_patient_pattern_is_reported(tmp_path):
    release = releases.get("2023-gli")
    with pytest.raises(InputError, match=re.escape("BraTS-GLI-00001: case id does not match")):
        brats.write_split(
            tmp_path, ["BraTS-GLI-00001", case_id("2023-gli", 2)], {"train": 1}, 0, tmp_path / "s.csv", release=release
        )
