"""Synthetic RSNA Pneumonia Detection Challenge download, in the public layout::

    <root>/stage_2_train_images/<patientId>.dcm
    <root>/stage_2_train_labels.csv           patientId,x,y,width,height,Target (a row per box)
    <root>/stage_2_detailed_class_info.csv    patientId,class (a row per label row, as in the real set)

Each DICOM is a chest radiograph drawn on a physical (mm) grid and sampled at its own PixelSpacing
(some images anisotropic), stored MONOCHROME2 as 8-bit or 12-in-16-bit pixels, with PatientAge as a
DICOM AS string, PatientSex, ViewPosition AP/PA. Lung opacities are drawn inside the label boxes of
Target=1 patients; "No Lung Opacity / Not Normal" patients carry other findings (large heart,
effusion, nodule, a line); AP views are more often positive, as in the real data. Like the real set,
PatientName and PatientID hold the anonymous patientId and PatientBirthDate is empty.

Deterministic from ``seed``: every patient draws from its own generator, so the files do not depend
on how many patients come before them.

The unlabeled set to predict on (``write_predict_set``, config ``synthetic.rsna.predict``) is laid out as the
challenge's test images, ``stage_2_test_images/<patientId>.dcm``: ``n_images`` radiographs of new patients
drawn like the training ones, which, unlike the anonymised challenge files, carry identifying values a
hospital's new files would (``IDENTIFYING_TAGS``: a made-up name, birth date, hospital id and institution),
plus three files that cannot be predicted (``BAD_FILES``): one that is no DICOM, one whose pixel data is
cut short, and one CT image.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from medflow import io

IMAGES = "stage_2_train_images"
LABELS = "stage_2_train_labels.csv"
CLASSES = "stage_2_detailed_class_info.csv"
OPACITY, NOT_NORMAL, NORMAL = "Lung Opacity", "No Lung Opacity / Not Normal", "Normal"

DEFAULTS: dict[str, Any] = {
    "n_patients": 500,
    "size": 128,  # nominal rows/columns (the real images are 1024 x 1024)
    "positive_fraction": 0.3,  # real set: 22.5 %
    "normal_fraction": 0.45,  # of the negatives; the rest are "No Lung Opacity / Not Normal"
    "ap_given_positive": 0.75,  # P(AP view | Target=1): the metadata signal of the real data
    "ap_given_negative": 0.4,
    "bits16_fraction": 0.3,  # 12 bits stored in 16, with a header window; the rest 8-bit
    "anisotropic_fraction": 0.2,  # row spacing != column spacing
    "missing_age_fraction": 0.02,  # header quirks the metadata stage must survive
    "missing_spacing_fraction": 0.02,
}
FOV_MM = 400.0  # physical field of view of a chest radiograph
PREDICT_DEFAULTS: dict[str, Any] = {"n_images": 40}
TEST_IMAGES = "stage_2_test_images"
# Tags that identify a patient, filled in the unlabeled set (the privacy test searches every output for them).
IDENTIFYING_TAGS = ("PatientName", "PatientBirthDate", "OtherPatientIDs", "InstitutionName")
BAD_FILES = ("unreadable", "undecodable", "not a radiograph")  # one file each, after the n_images radiographs
_PREDICT_STREAM = 101  # the unlabeled set's generators: apart from the training set's
_SURNAMES = ("Quillfeather", "Vantorbeck", "Oxlaide", "Pemberquist", "Drummelow", "Faircastle", "Yellowhorne")
_GIVEN = ("Odalys", "Bartholin", "Ysolde", "Caspian", "Mireval", "Thessaly", "Lorcan")
INSTITUTION = "St Ysolde Synthetic Infirmary"


def settings(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The training download's settings (config ``synthetic.rsna`` without its ``predict`` block)."""
    cfg = {k: v for k, v in dict(cfg or {}).items() if k != "predict"}
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown synthetic.rsna keys: {sorted(unknown)}")
    return {**DEFAULTS, **cfg}


def predict_settings(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The unlabeled set's settings (config ``synthetic.rsna.predict``)."""
    block = dict(dict(cfg or {}).get("predict") or {})
    unknown = set(block) - set(PREDICT_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown synthetic.rsna.predict keys: {sorted(unknown)}")
    return {**PREDICT_DEFAULTS, **block}


def _rng(seed: int, stream: int, *parts: int) -> np.random.Generator:
    """The generator of one draw; stream 0 (the training set) keeps the seeds it has always had."""
    return np.random.default_rng([seed, *parts] if stream == 0 else [seed, stream, *parts])


@dataclass
class Patient:
    patient_id: str
    target: int
    cls: str
    age_years: float
    sex: str
    view: str
    finding: str  # "opacity", "heart", "effusion", "nodule", "line" or "none"


def patient_ids(n: int, seed: int, stream: int = 0) -> list[str]:
    """UUID4-style patientIds as in the real set, deterministic from ``seed`` (and ``stream``)."""
    rng = _rng(seed, stream, 7)
    return [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)]


def draw_patients(cfg: Mapping[str, Any], seed: int, stream: int = 0) -> list[Patient]:
    c = settings(cfg)
    n = int(c["n_patients"])
    master = _rng(seed, stream, 11)
    n_pos = int(round(n * c["positive_fraction"]))
    target = np.zeros(n, dtype=int)
    target[master.permutation(n)[:n_pos]] = 1
    out = []
    for i, (pid, t) in enumerate(zip(patient_ids(n, seed, stream), target)):
        rng = _rng(seed, stream, 13, i)
        if t:
            cls, finding = OPACITY, "opacity"
        elif rng.random() < c["normal_fraction"]:
            cls, finding = NORMAL, "none"
        else:
            cls, finding = NOT_NORMAL, str(rng.choice(["heart", "effusion", "nodule", "line", "none"]))
        # Mostly adults, a few children (their ages are written in months/weeks/days).
        if rng.random() < 0.04:
            age = float(rng.uniform(0.02, 16))
        else:
            age = float(np.clip(rng.normal(44 + 12 * t, 15), 18, 92))
        sex = "M" if rng.random() < 0.56 else "F"
        view = "AP" if rng.random() < (c["ap_given_positive"] if t else c["ap_given_negative"]) else "PA"
        out.append(Patient(pid, int(t), cls, age, sex, view, finding))
    return out


def age_string(age_years: float) -> str:
    """DICOM AS (age string): nnnD, nnnW, nnnM or nnnY, the unit the age is best told in."""
    days = age_years * 365.25
    if days < 28:
        return f"{max(int(days), 0):03d}D"
    if age_years < 2:
        return f"{int(age_years * 12):03d}M"
    return f"{int(age_years):03d}Y"


def _draw(p: Patient, rows: int, cols: int, sr: float, sc: float, rng: np.random.Generator):
    """The radiograph in [0, 1] on a (rows, cols) grid with row/column spacing sr/sc mm, and the
    opacity boxes as (x, y, width, height) in pixels. Anatomy lives in physical units, so an
    anisotropic grid shows it stretched, as a real detector with non-square pixels would."""
    y = (np.arange(rows) - rows / 2 + 0.5) * sr / (FOV_MM / 2)
    x = (np.arange(cols) - cols / 2 + 0.5) * sc / (FOV_MM / 2)
    Y, X = np.meshgrid(y, x, indexing="ij")  # normalised physical coordinates, about [-1, 1]
    k = rng.uniform(0.88, 1.05)
    ox, oy = rng.normal(0, 0.03, 2)
    X, Y = (X - ox) / k, (Y - oy) / k

    def ellipse(cx, cy, ax, ay, soft=0.04):
        d = np.sqrt(((X - cx) / ax) ** 2 + ((Y - cy) / ay) ** 2)
        return 1 / (1 + np.exp((d - 1) / soft))

    img = 0.04 + 0.46 * ellipse(0, 0.05, 0.86, 1.05)  # air, then soft tissue
    lungs = np.maximum(ellipse(-0.38, -0.08, 0.27, 0.56), ellipse(0.38, -0.08, 0.27, 0.56))
    img = img - 0.3 * lungs
    ribs = 0.5 + 0.5 * np.sin(16 * Y + 3.5 * X**2 + rng.uniform(0, 2 * np.pi))
    img = img + 0.07 * lungs * ribs**3
    heart_scale = 1.15 if p.view == "AP" else 1.0  # AP films magnify the heart
    if p.finding == "heart":
        heart_scale *= rng.uniform(1.3, 1.5)
    img = img + 0.28 * ellipse(0.1, 0.3, 0.24 * heart_scale, 0.2 * heart_scale) * (1 - 0.6 * lungs)
    img = img + 0.22 * ellipse(0, 0, 0.07, 1.0, soft=0.1)  # spine and mediastinum
    img = img + 0.2 * (1 - lungs) * ellipse(0, 0.75, 0.8, 0.22)  # diaphragm
    if p.view == "AP":  # scapulae over the lung edges
        img = img + 0.1 * np.maximum(ellipse(-0.62, -0.35, 0.12, 0.3), ellipse(0.62, -0.35, 0.12, 0.3))

    boxes: list[tuple[int, int, int, int]] = []
    if p.finding == "opacity":
        n_boxes = int(rng.choice([1, 2, 3, 4], p=[0.42, 0.53, 0.04, 0.01]))
        sides = [-1, 1] if n_boxes >= 2 else [rng.choice([-1, 1])]
        sides = sides + list(rng.choice([-1, 1], n_boxes - len(sides)))
        texture = ndimage.gaussian_filter(rng.standard_normal((rows, cols)), 2.0)
        texture = 0.6 + 0.4 * texture / (np.abs(texture).max() + 1e-6)
        for side in sides:
            bw, bh = rng.uniform(0.2, 0.32), rng.uniform(0.3, 0.5)
            cx = side * 0.38 + rng.uniform(-0.05, 0.05)
            cy = rng.uniform(-0.2, 0.25)
            # box in pixels (back from normalised physical coordinates)
            c0 = int(np.clip(((cx - bw / 2) * k + ox) * (FOV_MM / 2) / sc + cols / 2, 0, cols - 2))
            c1 = int(np.clip(((cx + bw / 2) * k + ox) * (FOV_MM / 2) / sc + cols / 2, c0 + 2, cols))
            r0 = int(np.clip(((cy - bh / 2) * k + oy) * (FOV_MM / 2) / sr + rows / 2, 0, rows - 2))
            r1 = int(np.clip(((cy + bh / 2) * k + oy) * (FOV_MM / 2) / sr + rows / 2, r0 + 2, rows))
            inside = np.zeros((rows, cols))
            inside[r0:r1, c0:c1] = 1
            blob = np.exp(-(((X - cx) / (bw / 2.2)) ** 2 + ((Y - cy) / (bh / 2.2)) ** 2))
            img = img + rng.uniform(0.12, 0.22) * blob * texture * inside
            boxes.append((c0, r0, c1 - c0, r1 - r0))
    elif p.finding == "effusion":
        side = rng.choice([-1, 1])
        base = ellipse(side * 0.4, 0.45, 0.3, 0.15, soft=0.08)
        img = img + 0.22 * base * lungs
    elif p.finding == "nodule":
        img = img + 0.25 * ellipse(rng.choice([-1, 1]) * 0.35, rng.uniform(-0.4, 0.2), 0.04, 0.04, soft=0.1)
    elif p.finding == "line":  # a tube or catheter: a thin bright line from the neck down
        xl = rng.uniform(-0.15, 0.15)
        img = img + 0.35 * np.exp(-(((X - xl - 0.1 * (Y + 1) ** 2) / 0.012) ** 2)) * (Y < 0.3)

    img = ndimage.gaussian_filter(img, 0.8)
    gain, offset = rng.uniform(0.85, 1.1), rng.uniform(-0.04, 0.04)
    noise = rng.normal(0, 0.035 if p.view == "AP" else 0.025, img.shape)
    return np.clip(img * gain + offset + noise, 0, 1), boxes


def write_dicom(path: str | os.PathLike, pixels: np.ndarray, tags: Mapping[str, Any], seed_parts) -> None:
    """One uncompressed Secondary Capture DICOM (the real set's SOP class) with ``pixels``
    (rows, cols) uint8 or uint16 and the given top-level ``tags``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    uid = lambda what: generate_uid(entropy_srcs=[*map(str, seed_parts), what])  # noqa: E731
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.BodyPartExamined = "CHEST"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    for key, value in tags.items():
        setattr(ds, key, value)
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = tags.get("PhotometricInterpretation", "MONOCHROME2")
    ds.BitsAllocated = bits
    ds.BitsStored = tags.get("BitsStored", bits)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)


def patient_image(p: Patient, index: int, cfg: Mapping[str, Any], seed: int, stream: int = 0):
    """(pixels, DICOM tags, boxes) of one patient; deterministic from (seed, stream, index)."""
    c = settings(cfg)
    rng = _rng(seed, stream, 17, index)
    # A handful of detector settings, as in the real set (a few distinct PixelSpacing values).
    s0 = FOV_MM / c["size"] * float(rng.choice([0.9, 0.95, 1.0, 1.05, 1.1]))
    sr = sc = round(s0, 3)
    if rng.random() < c["anisotropic_fraction"]:
        sc = round(s0 * float(rng.choice([0.8, 0.85, 1.15, 1.2])), 3)
    rows = int(round(FOV_MM * rng.uniform(0.95, 1.05) / sr))
    cols = int(round(FOV_MM * rng.uniform(0.95, 1.05) / sc))
    img, boxes = _draw(p, rows, cols, sr, sc, rng)

    tags: dict[str, Any] = {
        # As in the real set: the anonymous id in the name and ID fields, no birth date.
        "PatientName": p.patient_id,
        "PatientID": p.patient_id,
        "PatientBirthDate": "",
        "PatientSex": p.sex,
        "PatientAge": age_string(p.age_years),
        "ViewPosition": p.view,
        "StudyDescription": f"view: {p.view}",
        "SeriesDescription": f"view: {p.view}",
        "PixelSpacing": [sr, sc],
    }
    if rng.random() < c["missing_age_fraction"]:
        del tags["PatientAge"]
    if rng.random() < c["missing_spacing_fraction"]:
        del tags["PixelSpacing"]
    if rng.random() < c["bits16_fraction"]:
        lo, span = rng.uniform(200, 600), rng.uniform(2800, 3400)
        pixels = np.clip(np.round(lo + img * span), 0, 4095).astype(np.uint16)
        tags.update(
            BitsStored=12,
            WindowCenter=round(lo + span / 2, 1),
            WindowWidth=round(span, 1),
            RescaleIntercept=0,
            RescaleSlope=1,
        )
    else:
        pixels = np.round(img * 255).astype(np.uint8)
    return pixels, tags, boxes


def write_dataset(root: str | os.PathLike, cfg: Mapping[str, Any] | None, seed: int) -> dict[str, int]:
    """Write the synthetic download under ``root``; returns counts for the log.

    Images go to a temporary folder that is renamed into place at the end, and the CSVs are written
    atomically, so a killed job never leaves a half-written data set under the final names.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    images = root / IMAGES
    tmp = root / f".{IMAGES}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    patients = draw_patients(cfg, seed)
    label_rows, class_rows = [], []
    for i, p in enumerate(patients):
        pixels, tags, boxes = patient_image(p, i, cfg, seed)
        write_dicom(tmp / f"{p.patient_id}.dcm", pixels, tags, (seed, i))
        if p.target:
            for x, y, w, h in boxes:
                label_rows.append((p.patient_id, float(x), float(y), float(w), float(h), 1))
                class_rows.append((p.patient_id, p.cls))
        else:
            label_rows.append((p.patient_id, None, None, None, None, 0))
            class_rows.append((p.patient_id, p.cls))
    shutil.rmtree(images, ignore_errors=True)
    os.replace(tmp, images)
    labels = pd.DataFrame(label_rows, columns=["patientId", "x", "y", "width", "height", "Target"])
    classes = pd.DataFrame(class_rows, columns=["patientId", "class"])
    with io.atomic_path(root / LABELS) as t:
        labels.to_csv(t, index=False)
    with io.atomic_path(root / CLASSES) as t:
        classes.to_csv(t, index=False)
    return {
        "patients": len(patients),
        "positive": int(sum(p.target for p in patients)),
        "boxes": int(labels["Target"].sum()),
    }


def identifying_values(index: int, seed: int) -> dict[str, str]:
    """The made-up identifying tags of unlabeled image ``index``: ``IDENTIFYING_TAGS`` -> value."""
    rng = _rng(seed, _PREDICT_STREAM, 19, index)
    year, month, day = int(rng.integers(1930, 2000)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    return {
        "PatientName": f"{_SURNAMES[index % len(_SURNAMES)]}^{_GIVEN[(index // len(_SURNAMES)) % len(_GIVEN)]}",
        "PatientBirthDate": f"{year:04d}{month:02d}{day:02d}",
        "OtherPatientIDs": f"MRN-{int(rng.integers(10**6, 10**7))}-YSOLDE",
        "InstitutionName": INSTITUTION,
    }


def _cut_pixels(path: Path) -> None:
    """Keep the header, cut the pixel data to a quarter: a file whose image cannot be decoded."""
    import pydicom

    ds = pydicom.dcmread(path)
    data = bytes(ds.PixelData)
    ds.PixelData = data[: (len(data) // 4) & ~1]
    ds.save_as(path, enforce_file_format=True)


def _make_ct(path: Path) -> None:
    """Turn a radiograph into a CT slice (Modality and SOP class): a file that is not a radiograph."""
    import pydicom
    from pydicom.uid import CTImageStorage

    ds = pydicom.dcmread(path)
    ds.Modality = "CT"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.save_as(path, enforce_file_format=True)


def write_predict_set(out_dir: str | os.PathLike, cfg: Mapping[str, Any] | None, seed: int) -> dict[str, int]:
    """Write the unlabeled set (module doc) into the folder ``out_dir`` (``.../stage_2_test_images``), through
    a temporary folder renamed into place; returns counts for the log. ``cfg``: config ``synthetic.rsna``
    (its image settings and its ``predict`` block)."""
    c, n = settings(cfg), int(predict_settings(cfg)["n_images"])
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    patients = draw_patients({**c, "n_patients": n + len(BAD_FILES)}, seed, stream=_PREDICT_STREAM)
    for i, p in enumerate(patients):
        path = tmp / f"{p.patient_id}.dcm"
        bad = BAD_FILES[i - n] if i >= n else None
        if bad == "unreadable":  # the name of a DICOM, the bytes of something else
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng([seed, 23]).bytes(512))
            continue
        pixels, tags, _ = patient_image(p, i, c, seed, stream=_PREDICT_STREAM)
        write_dicom(path, pixels, {**tags, **identifying_values(i, seed)}, (seed, _PREDICT_STREAM, i))
        if bad == "undecodable":
            _cut_pixels(path)
        elif bad == "not a radiograph":
            _make_ct(path)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return {"images": n, "bad_files": len(BAD_FILES), "positive": int(sum(p.target for p in patients[:n]))}
