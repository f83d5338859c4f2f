"""The synthetic RSNA download: public layout, DICOM tag types, labels, opacities inside the boxes,
metadata signal, determinism."""

import hashlib
import re
import uuid

import numpy as np
import pandas as pd
import pydicom
import pytest

from medflow.synthetic import rsna as sr

CFG = {"n_patients": 60, "size": 48, "missing_age_fraction": 0.0, "missing_spacing_fraction": 0.0}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsna") / "rsna-pneumonia-detection-challenge"
    counts = sr.write_dataset(root, CFG, seed=5)
    assert counts["patients"] == 60 and counts["positive"] == 18
    return root


def _headers(root):
    return {p.stem: pydicom.dcmread(p) for p in sorted((root / "stage_2_train_images").glob("*.dcm"))}


def test_layout_and_csvs_as_in_the_public_download(root):
    assert sorted(p.name for p in root.iterdir()) == [
        "stage_2_detailed_class_info.csv",
        "stage_2_train_images",
        "stage_2_train_labels.csv",
    ]
    labels = pd.read_csv(root / "stage_2_train_labels.csv")
    classes = pd.read_csv(root / "stage_2_detailed_class_info.csv")
    assert list(labels.columns) == ["patientId", "x", "y", "width", "height", "Target"]
    assert list(classes.columns) == ["patientId", "class"]
    # One class row per label row, as in the real files; three real class names.
    assert list(classes["patientId"]) == list(labels["patientId"])
    assert set(classes["class"]) == {"Lung Opacity", "No Lung Opacity / Not Normal", "Normal"}
    assert ((classes["class"] == "Lung Opacity") == (labels["Target"] == 1)).all()
    # Target=0: empty box fields; Target=1: a full box per row, several rows for several boxes.
    neg, pos = labels[labels["Target"] == 0], labels[labels["Target"] == 1]
    assert neg[["x", "y", "width", "height"]].isna().all().all()
    assert pos[["x", "y", "width", "height"]].notna().all().all() and (pos[["width", "height"]] > 0).all().all()
    assert pos["patientId"].duplicated().any() and not neg["patientId"].duplicated().any()
    ids = set(labels["patientId"])
    assert ids == {p.stem for p in (root / "stage_2_train_images").iterdir()}
    for pid in ids:
        assert uuid.UUID(pid).version == 4 and str(uuid.UUID(pid)) == pid


def test_dicom_tags_have_the_real_types(root):
    spacings, bits = set(), set()
    for pid, ds in _headers(root).items():
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage and ds.Modality == "CR"
        assert ds["PatientAge"].VR == "AS" and re.fullmatch(r"\d{3}[DWMY]", ds.PatientAge)
        assert ds["PatientSex"].VR == "CS" and ds.PatientSex in ("M", "F")
        assert ds["ViewPosition"].VR == "CS" and ds.ViewPosition in ("AP", "PA")
        assert ds["PixelSpacing"].VR == "DS" and len(ds.PixelSpacing) == 2 and min(ds.PixelSpacing) > 0
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.SamplesPerPixel == 1
        # As in the real set: the anonymous id in the name and ID fields, no birth date.
        assert str(ds.PatientName) == pid and ds.PatientID == pid and ds.PatientBirthDate == ""
        arr = ds.pixel_array
        assert arr.shape == (ds.Rows, ds.Columns)
        assert (ds.BitsAllocated, ds.BitsStored, arr.dtype.type) in {(8, 8, np.uint8), (16, 12, np.uint16)}
        assert arr.max() < 2**ds.BitsStored
        if ds.BitsStored == 12:  # the 16-bit images carry a window, as CR files do
            assert ds["WindowCenter"].VR == "DS" and float(ds.WindowWidth) > 1
        spacings.add(tuple(map(float, ds.PixelSpacing)))
        bits.add(ds.BitsStored)
    assert len(spacings) > 2 and any(r != c for r, c in spacings), "spacing varies, some pixels are not square"
    assert bits == {8, 12}


def test_age_strings_use_the_dicom_units():
    assert sr.age_string(58.7) == "058Y"
    assert sr.age_string(1.5) == "018M"
    assert sr.age_string(10 / 365.25) == "010D"


def test_opacities_lie_inside_the_boxes(root):
    """Positives are brighter inside their boxes than negatives are at the same relative place."""
    labels = pd.read_csv(root / "stage_2_train_labels.csv")
    heads = _headers(root)

    def unit(ds):
        return ds.pixel_array.astype(float) / (2**ds.BitsStored - 1)

    rel_boxes, inside = [], []
    for r in labels[labels["Target"] == 1].itertuples():
        ds = heads[r.patientId]
        img = unit(ds)
        x, y, w, h = int(r.x), int(r.y), int(r.width), int(r.height)
        inside.append(img[y : y + h, x : x + w].mean())
        rel_boxes.append((x / ds.Columns, y / ds.Rows, w / ds.Columns, h / ds.Rows))
    same_place = []
    for pid in labels.loc[labels["Target"] == 0, "patientId"]:
        img = unit(heads[pid])
        for bx, by, bw, bh in rel_boxes:
            r0, c0 = int(by * img.shape[0]), int(bx * img.shape[1])
            same_place.append(
                img[r0 : r0 + max(1, int(bh * img.shape[0])), c0 : c0 + max(1, int(bw * img.shape[1]))].mean()
            )
    assert np.mean(inside) > np.mean(same_place) + 0.02  # opacity amplitude: 0.12-0.22 of the range at its centre


def test_metadata_carries_signal_like_the_real_data():
    patients = sr.draw_patients({"n_patients": 2000}, seed=1)
    t = np.array([p.target for p in patients])
    ap = np.array([p.view == "AP" for p in patients])
    assert abs(t.mean() - 0.3) < 0.01
    assert ap[t == 1].mean() > ap[t == 0].mean() + 0.2
    cls = {p.cls for p in patients if not p.target}
    assert cls == {"Normal", "No Lung Opacity / Not Normal"}


def test_header_quirks_are_written_when_asked(tmp_path):
    sr.write_dataset(
        tmp_path, {"n_patients": 30, "size": 32, "missing_age_fraction": 0.5, "missing_spacing_fraction": 0.5}, seed=2
    )
    heads = _headers(tmp_path)
    assert 0 < sum("PatientAge" not in ds for ds in heads.values()) < 30
    assert 0 < sum("PixelSpacing" not in ds for ds in heads.values()) < 30


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_deterministic_from_seed(tmp_path):
    cfg = {"n_patients": 12, "size": 32}
    sr.write_dataset(tmp_path / "a", cfg, seed=9)
    sr.write_dataset(tmp_path / "b", cfg, seed=9)
    sr.write_dataset(tmp_path / "c", cfg, seed=10)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_unknown_setting_is_rejected():
    with pytest.raises(ValueError, match="n_patient"):
        sr.settings({"n_patient": 3})


PREDICT_CFG = {**CFG, "predict": {"n_images": 6}}


@pytest.fixture(scope="module")
def test_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rsna_predict") / sr.TEST_IMAGES
    counts = sr.write_predict_set(folder, PREDICT_CFG, seed=5)
    assert counts["images"] == 6 and counts["bad_files"] == len(sr.BAD_FILES) == 3
    return folder


def test_unlabeled_set_is_laid_out_as_the_challenge_test_images(test_images, root):
    files = sorted(test_images.iterdir())
    assert [p.parent.name for p in files] == [sr.TEST_IMAGES] * 9 and all(p.suffix == ".dcm" for p in files)
    assert not {p.stem for p in files} & {p.stem for p in (root / "stage_2_train_images").iterdir()}, "new patients"
    assert not list(test_images.parent.glob(".*")), "no temporary folder left behind"
    for p in files:
        assert uuid.UUID(p.stem).version == 4


def test_unlabeled_images_carry_identifying_values_and_three_bad_files(test_images):
    kinds = []
    names = set()
    for p in sorted(test_images.iterdir()):
        try:
            ds = pydicom.dcmread(p)
        except pydicom.errors.InvalidDicomError:
            kinds.append("unreadable")
            continue
        assert ds.PatientID == p.stem, "as in the challenge: PatientID is the file's patientId"
        values = {tag: str(ds.get(tag, "")) for tag in sr.IDENTIFYING_TAGS}
        assert all(values.values()) and re.fullmatch(r"(19\d\d)(0[1-9]|1[0-2])([012]\d)", values["PatientBirthDate"])
        assert values["InstitutionName"] == sr.INSTITUTION and values["OtherPatientIDs"].startswith("MRN-")
        names.add(values["PatientName"])
        if ds.Modality == "CT":
            assert ds.SOPClassUID == pydicom.uid.CTImageStorage
            kinds.append("not a radiograph")
            continue
        try:
            arr = ds.pixel_array
        except ValueError:
            kinds.append("undecodable")
            continue
        assert ds.Modality == "CR" and arr.shape == (ds.Rows, ds.Columns) and arr.std() > 0
        kinds.append("radiograph")
    assert sorted(kinds) == sorted(["radiograph"] * 6 + list(sr.BAD_FILES))
    assert len(names) == 8, "a name of its own per DICOM"


def test_unlabeled_set_is_deterministic_and_leaves_the_training_set_alone(tmp_path, test_images):
    sr.write_predict_set(tmp_path / "a" / sr.TEST_IMAGES, PREDICT_CFG, seed=5)
    assert _digest(tmp_path / "a" / sr.TEST_IMAGES) == _digest(test_images)
    sr.write_predict_set(tmp_path / "b" / sr.TEST_IMAGES, PREDICT_CFG, seed=6)
    assert _digest(tmp_path / "b" / sr.TEST_IMAGES) != _digest(test_images)
    # the predict block is not a training-set setting: the download is the one written without it
    sr.write_dataset(tmp_path / "c", {**CFG, "n_patients": 12}, seed=9)
    sr.write_dataset(tmp_path / "d", {**PREDICT_CFG, "n_patients": 12}, seed=9)
    assert _digest(tmp_path / "c") == _digest(tmp_path / "d")
    with pytest.raises(ValueError, match="n_image"):
        sr.predict_settings({"predict": {"n_image": 3}})
