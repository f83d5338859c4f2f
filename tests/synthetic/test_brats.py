"""Synthetic BraTS: the public layout and formats, the anatomy the pipelines rely on, determinism."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

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
