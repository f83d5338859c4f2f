"""Synthetic BraTS: the public layout and formats of each release, the anatomy the pipelines rely on,
time points of one patient, determinism."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medflow.ingest import releases
from medflow.synthetic import brats as sb

CFG = {
    "n_cases": 4,
    "hgg_fraction": 0.5,
    "shape_xyz": [40, 44, 32],
    "blank_slices": [2, 4],
    "bias_strength": 0.3,
    "noise": 0.03,
}
KINDS = ("flair", "t1", "t1ce", "t2", "seg")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats") / "MICCAI_BraTS2020_TrainingData"
    sb.generate(CFG, root, seed=7)
    return root


def load(raw, case, kind):
    img = nib.load(raw / case / f"{case}_{kind}.nii")
    return img, np.asanyarray(img.dataobj)


def test_case_ids_and_grades():
    assert sb.case_ids({"n_cases": 3}) == ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_003"]
    grades = sb.grades({"n_cases": 10, "hgg_fraction": 0.7}, seed=1)
    assert list(grades) == sb.case_ids({"n_cases": 10})
    assert sorted(grades.values()).count("HGG") == 7
    assert grades == sb.grades({"n_cases": 10, "hgg_fraction": 0.7}, seed=1)


def test_public_layout_formats_and_name_mapping(raw):
    cases = sb.case_ids(CFG)
    assert sorted(p.name for p in raw.iterdir()) == sorted([*cases, "name_mapping.csv"])
    for case in cases:
        assert sorted(p.name for p in (raw / case).iterdir()) == sorted(f"{case}_{k}.nii" for k in KINDS)
        for kind in KINDS:
            img, data = load(raw, case, kind)
            assert isinstance(img, nib.Nifti1Image)
            assert data.shape == tuple(CFG["shape_xyz"])
            assert data.dtype == (np.uint8 if kind == "seg" else np.int16)
            assert img.header.get_zooms() == (1.0, 1.0, 1.0)
            np.testing.assert_array_equal(img.affine, sb.brats_affine(CFG["shape_xyz"]))
    mapping = pd.read_csv(raw / "name_mapping.csv")
    assert list(mapping.columns) == [
        "Grade",
        "BraTS_2017_subject_ID",
        "BraTS_2018_subject_ID",
        "TCGA_TCIA_subject_ID",
        "BraTS_2019_subject_ID",
        "BraTS_2020_subject_ID",
    ]
    assert list(mapping["BraTS_2020_subject_ID"]) == cases
    assert sorted(mapping["Grade"]) == ["HGG", "HGG", "LGG", "LGG"]


def test_blank_slices_at_both_ends_and_labels_inside_the_brain(raw):
    lo, _ = CFG["blank_slices"]
    for case in sb.case_ids(CFG):
        _, seg = load(raw, case, "seg")
        assert set(np.unique(seg)) <= {0, 1, 2, 4}
        signal = np.zeros(seg.shape, bool)
        for kind in KINDS[:4]:
            signal |= load(raw, case, kind)[1] != 0
        per_slice = signal.any(axis=(0, 1))
        assert not per_slice[:lo].any() and not per_slice[-lo:].any(), "empty slices at both ends"
        assert per_slice[seg.shape[2] // 2], "brain in the middle slice"
        assert signal[seg > 0].all(), "tumour lies inside the brain"


def region_means(raw, case):
    _, seg = load(raw, case, "seg")
    brain = load(raw, case, "t1")[1] > 0
    normal = brain & (seg == 0)
    out = {}
    for kind in KINDS[:4]:
        data = load(raw, case, kind)[1].astype(float)
        ref = np.median(data[normal])
        out[kind] = {label: data[seg == label].mean() / ref for label in (1, 2, 4) if (seg == label).any()}
    return out, seg


def test_tumour_regions_show_in_the_right_modalities(raw):
    for case, grade in sb.grades(CFG, seed=7).items():
        means, seg = region_means(raw, case)
        assert means["flair"][2] > 1.5 and means["t2"][2] > 1.3, "oedema bright in FLAIR and T2"
        assert means["t1"][2] < 1.0, "oedema dark in T1"
        if grade == "HGG":
            assert means["t1ce"][4] > 1.8, "enhancing tumour bright in T1ce"
            assert means["t1ce"][4] > 1.8 * means["t1"][4], "and much less so in T1"
            assert means["t1ce"][1] < 0.5 * means["t1ce"][4], "necrotic core dark inside the bright ring"


def test_grades_differ_in_enhancement_and_size(raw):
    grades = sb.grades(CFG, seed=7)
    et = {c: int((load(raw, c, "seg")[1] == 4).sum()) for c in grades}
    hgg = [et[c] for c, g in grades.items() if g == "HGG"]
    lgg = [et[c] for c, g in grades.items() if g == "LGG"]
    assert min(hgg) > 100 and max(lgg) < 0.2 * min(hgg), "enhancing tumour mainly in HGG"


def test_bias_fields_are_smooth_and_differ_between_modalities():
    bias: dict = {}
    images, _ = sb.make_case(np.random.default_rng(0), "HGG", (48, 48, 40), bias_strength=0.3, bias_out=bias)
    brain = images["t1"] > 0
    logs = {m: np.log(b) for m, b in bias.items()}
    for lf in logs.values():
        assert np.abs(lf[brain]).max() == pytest.approx(0.3, rel=1e-3), "strength = max |log field| in the brain"
        assert max(np.abs(np.diff(lf, axis=a)).max() for a in range(3)) < 0.06, "smooth: small voxel-to-voxel change"
    assert abs(np.corrcoef(logs["t1"].ravel(), logs["t2"].ravel())[0, 1]) < 0.95, "independent per modality"


def digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_deterministic_from_seed(tmp_path, raw):
    cfg = {**CFG, "n_cases": 2}
    sb.generate(cfg, tmp_path / "a", seed=7)
    sb.generate(cfg, tmp_path / "b", seed=7)
    sb.generate(cfg, tmp_path / "c", seed=8)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    # A case does not depend on how many cases are generated.
    case = "BraTS20_Training_001"
    if sb.grades(cfg, 7)[case] == sb.grades(CFG, 7)[case]:
        assert (tmp_path / "a" / case / f"{case}_t1.nii").read_bytes() == (raw / case / f"{case}_t1.nii").read_bytes()


# --- releases ---------------------------------------------------------------------------------------------
SMALL = {**CFG, "n_cases": 4, "shape_xyz": [32, 32, 24], "blank_slices": [1, 3]}
GZIP_MAGIC = b"\x1f\x8b"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """{release name: (cfg, root)}: each release written from the same config and seed."""
    out = {}
    for name, release in releases.RELEASES.items():
        cfg = {**SMALL, "release": name}
        root = tmp_path_factory.mktemp(name.replace("-", "")) / release.raw_subdir
        assert sb.generate(cfg, root, seed=5) == sb.case_ids(cfg)
        out[name] = cfg, root
    return out


def test_case_ids_follow_each_release():
    assert sb.case_ids({"n_cases": 2}) == sb.case_ids({"n_cases": 2, "release": "2020"})
    assert sb.case_ids({"n_cases": 2, "release": 2020}) == ["BraTS20_Training_001", "BraTS20_Training_002"]
    assert sb.case_ids({"n_cases": 3, "release": "2021"}) == ["BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003"]
    assert sb.case_ids({"n_cases": 5, "release": "2023-gli"}) == [
        "BraTS-GLI-00001-000",
        "BraTS-GLI-00002-000",
        "BraTS-GLI-00003-000",
        "BraTS-GLI-00003-001",
        "BraTS-GLI-00004-000",
    ]
    for name, release in releases.RELEASES.items():
        ids = sb.case_ids({"n_cases": 999, "release": name})  # 2020's three digits hold 999 cases
        assert len(ids) == len(set(ids)) == 999 and ids == sorted(ids), "discovery order (sorted) = generation order"
        assert all(release.case_re.fullmatch(c) for c in ids)
        assert ids[:40] == sb.case_ids({"n_cases": 40, "release": name}), "more cases only add cases"
    with pytest.raises(ValueError, match="unknown BraTS release '2019'"):
        sb.case_ids({"release": "2019"})


def test_2023_every_third_patient_has_two_time_points():
    gli = releases.get("2023-gli")
    ids = sb.case_ids({"n_cases": 1251, "release": "2023-gli"})
    by_patient: dict[str, list[str]] = {}
    for case in ids:
        by_patient.setdefault(gli.patient_of(case), []).append(case)
    patients = list(by_patient)
    assert len(patients) == 939, "1251 cases = 312 groups of 3 patients (4 cases each) + 3 patients (3 cases)"
    for j, p in enumerate(patients[:-1]):
        assert by_patient[p] == ([f"{p}-000", f"{p}-001"] if j % 3 == 2 else [f"{p}-000"])
    assert by_patient[patients[-1]] == [f"{patients[-1]}-000"], "its second time point would be case 1252"
    # A second time point cut off by n_cases leaves its patient with one.
    assert sb.case_ids({"n_cases": 3, "release": "2023-gli"})[-1] == "BraTS-GLI-00003-000"
    # Releases with one case per patient have no time points.
    for name in ("2020", "2021"):
        release = releases.get(name)
        assert [release.patient_of(c) for c in sb.case_ids({"n_cases": 9, "release": name})] == sb.case_ids(
            {"n_cases": 9, "release": name}
        )


def test_case_ids_are_planning_fast():
    import time

    t = time.perf_counter()
    for name in releases.RELEASES:
        sb.case_ids({"n_cases": 1251, "release": name})
        sb.expected_outputs({"n_cases": 1251, "release": name}, "results/synthetic/brats/raw")
    assert time.perf_counter() - t < 0.5, "the Snakefile calls these while planning"


def test_time_points_of_one_patient_share_the_grade_and_are_separate_scans(written):
    gli = releases.get("2023-gli")
    cfg, root = written["2023-gli"]
    grades = sb.grades(cfg, seed=5)
    assert (
        list(grades)
        == sb.case_ids(cfg)
        == [
            "BraTS-GLI-00001-000",
            "BraTS-GLI-00002-000",
            "BraTS-GLI-00003-000",
            "BraTS-GLI-00003-001",
        ]
    )
    first, second = "BraTS-GLI-00003-000", "BraTS-GLI-00003-001"
    assert gli.patient_of(first) == gli.patient_of(second) == "BraTS-GLI-00003"
    assert grades[first] == grades[second]
    # Grades are drawn per patient: round(0.5 * 3 patients) = 2 HGG patients.
    assert sorted(grades[f"BraTS-GLI-0000{i}-000"] for i in (1, 2, 3)) == ["HGG", "HGG", "LGG"]
    t2 = [np.asanyarray(nib.load(root / c / gli.file_name(c, "t2")).dataobj) for c in (first, second)]
    assert not np.array_equal(*t2), "a follow-up is a new scan"


@pytest.mark.parametrize("name", list(releases.RELEASES))
def test_each_release_layout_names_and_labels(written, name):
    release = releases.get(name)
    cfg, root = written[name]
    cases = sb.case_ids(cfg)
    assert root.name == release.raw_subdir
    expected = sb.expected_outputs(cfg, root)
    assert sorted(str(p) for p in root.rglob("*")) == sorted({*expected, *(str(root / c) for c in cases)}), (
        "exactly the rule's outputs: case folders, five files each, the grade file where the release has one"
    )
    assert len(expected) == len(KINDS) * len(cases) + release.has_grades
    seg_values = set()
    for case in cases:
        names = sorted(p.name for p in (root / case).iterdir())
        assert names == sorted(f"{case}{release.separator}{release.files[k]}{release.suffix}" for k in KINDS)
        for kind in KINDS:
            path = root / case / release.file_name(case, kind)
            assert (path.read_bytes()[:2] == GZIP_MAGIC) == path.name.endswith(".gz")
            img = nib.load(path)
            data = np.asanyarray(img.dataobj)
            assert data.shape == tuple(cfg["shape_xyz"]) and data.dtype == (np.uint8 if kind == "seg" else np.int16)
            np.testing.assert_array_equal(img.affine, sb.brats_affine(cfg["shape_xyz"]))
        seg = np.asanyarray(nib.load(root / case / release.file_name(case, "seg")).dataobj)
        seg_values |= set(np.unique(seg).tolist())
    assert seg_values == set(release.label_values), "every label of the release, nothing else (HGG cases hold all)"


def test_2023_segmentations_use_3_for_enhancing_tumour(written):
    gli, old = releases.get("2023-gli"), releases.get("2020")
    cfg, root = written["2023-gli"]
    for case in sb.case_ids(cfg):
        seg = np.asanyarray(nib.load(root / case / gli.file_name(case, "seg")).dataobj)
        assert 4 not in seg
        np.testing.assert_array_equal(gli.to_stored(seg), seg)  # 2023-GLI labels are the stored ones
    # The same draw gives the same tumour in either release, only its enhancing label differs.
    images_old, seg_old = sb.make_case(np.random.default_rng(3), "HGG", (32, 32, 24))
    images_gli, seg_gli = sb.make_case(np.random.default_rng(3), "HGG", (32, 32, 24), release=gli)
    assert (seg_old == 4).any() and (seg_gli == 3).sum() == (seg_old == 4).sum()
    np.testing.assert_array_equal(gli.to_stored(seg_gli), old.to_stored(seg_old))
    for mod in images_old:
        np.testing.assert_array_equal(images_gli[mod], images_old[mod])


def test_2021_is_2020_data_in_2021_names(written):
    """One case per patient in both, so grades and volumes match case by case; only names and gzip differ."""
    (cfg20, root20), (cfg21, root21) = written["2020"], written["2021"]
    r20, r21 = releases.get("2020"), releases.get("2021")
    assert list(sb.grades(cfg20, 5).values()) == list(sb.grades(cfg21, 5).values())
    for c20, c21 in zip(sb.case_ids(cfg20), sb.case_ids(cfg21)):
        for kind in KINDS:
            a = np.asanyarray(nib.load(root20 / c20 / r20.file_name(c20, kind)).dataobj)
            b = np.asanyarray(nib.load(root21 / c21 / r21.file_name(c21, kind)).dataobj)
            np.testing.assert_array_equal(a, b)


def test_2020_is_the_default_and_unchanged(written, tmp_path):
    """Naming the release changes nothing: the default run (checked above) is byte for byte the same."""
    cfg, root = written["2020"]
    sb.generate({k: v for k, v in cfg.items() if k != "release"}, tmp_path / "default", seed=5)
    assert digest(tmp_path / "default") == digest(root)
    assert sb.expected_outputs({"n_cases": 2}, "raw") == [
        *(f"raw/BraTS20_Training_001/BraTS20_Training_001_{k}.nii" for k in KINDS),
        *(f"raw/BraTS20_Training_002/BraTS20_Training_002_{k}.nii" for k in KINDS),
        "raw/name_mapping.csv",
    ]


@pytest.mark.parametrize("name", ["2021", "2023-gli"])
def test_other_releases_deterministic_from_seed(written, tmp_path, name):
    cfg, root = written[name]
    sb.generate(cfg, tmp_path / "a", seed=5)
    sb.generate(cfg, tmp_path / "b", seed=6)
    assert digest(tmp_path / "a") == digest(root)
    assert digest(tmp_path / "b") != digest(root)


# The unlabeled set the predict stage reads: each release's validation download, no seg.
@pytest.mark.parametrize(
    "name,ids",
    [
        ("2020", ["BraTS20_Validation_001", "BraTS20_Validation_002", "BraTS20_Validation_003"]),
        ("2021", ["BraTS2021_00005", "BraTS2021_00006", "BraTS2021_00007"]),  # after the 4 training cases
        ("2023-gli", ["BraTS-GLI-00005-000", "BraTS-GLI-00006-000", "BraTS-GLI-00007-000"]),
    ],
)
def test_predict_set_ids_follow_each_release_and_never_name_a_training_case(name, ids):
    cfg = {**CFG, "release": name, "predict": {"n_cases": 3}}
    assert sb.predict_case_ids(cfg) == ids
    assert not set(ids) & set(sb.case_ids(cfg))
    release = releases.get(name)
    assert all(release.predict_re.fullmatch(c) for c in ids)
    assert sb.predict_case_ids({**cfg, "predict": {"n_cases": 1}}) == ids[:1]


@pytest.mark.parametrize("name", ["2020", "2023-gli"])
def test_predict_set_is_the_validation_layout_without_seg(tmp_path, name, raw):
    release = releases.get(name)
    cfg = {**CFG, "release": name, "predict": {"n_cases": 2}}
    out = tmp_path / release.validation_subdir
    cases = sb.generate_predict(cfg, out, seed=7)
    assert cases == sb.predict_case_ids(cfg) and sorted(p.name for p in out.iterdir()) == cases
    written = sorted(str(p) for p in out.rglob("*") if p.is_file())
    assert written == sorted(sb.predict_expected_outputs(cfg, out))
    for case in cases:
        names = sorted(p.name for p in (out / case).iterdir())
        assert names == sorted(release.file_name(case, m) for m in sb.MODALITIES), "four modalities, no seg"
        for mod in sb.MODALITIES:
            img = nib.load(out / case / release.file_name(case, mod))
            data = np.asanyarray(img.dataobj)
            assert data.shape == tuple(CFG["shape_xyz"]) and data.dtype == np.int16 and data.any()
            np.testing.assert_array_equal(img.affine, sb.brats_affine(CFG["shape_xyz"]))
    if name == "2020":
        assert cases[0] == "BraTS20_Validation_001"
        assert str(out / cases[0] / f"{cases[0]}_flair.nii") in written
        # Same image model as the training cases, other draws: not a copy of training case 1.
        new = np.asanyarray(nib.load(out / cases[0] / f"{cases[0]}_flair.nii").dataobj)
        old = np.asanyarray(nib.load(raw / "BraTS20_Training_001" / "BraTS20_Training_001_flair.nii").dataobj)
        assert not np.array_equal(new, old)
        assert abs(float(new[new > 0].mean()) / float(old[old > 0].mean()) - 1) < 0.2


def test_predict_set_is_deterministic_from_seed(tmp_path):
    cfg = {**CFG, "predict": {"n_cases": 1}}
    for run in ("a", "b"):
        sb.generate_predict(cfg, tmp_path / run, seed=7)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
