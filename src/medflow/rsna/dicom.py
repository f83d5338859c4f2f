"""Reading what the RSNA stages need from a DICOM file, and nothing else.

Only the tags named here are ever read into medflow's tables: PatientName, PatientBirthDate and the
DICOM PatientID tag (which at a hospital holds the record number) never leave the file. The id a
table keeps is the file's patientId (its name), the data set's anonymous id.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMYdwmy]?)\s*$")


class UnsupportedPixels(Exception):
    """The pixel data cannot be turned into an image here (transfer syntax without a decoder,
    a photometric interpretation that is not greyscale, a corrupt stream)."""


def parse_age(value: Any, max_years: float = 120.0) -> tuple[float | None, str]:
    """A DICOM age string (AS: ``nnnD``, ``nnnW``, ``nnnM``, ``nnnY``) -> (age in years, status).

    A bare number counts as years (the real RSNA headers store ``"51"``). Status is ``"ok"``,
    ``"missing"`` (absent or empty), ``"invalid"`` (not an age string) or ``"implausible"`` (over
    ``max_years``; the real set has a few ages of 148-155); the age is None unless the status is ok.
    """
    if value is None:
        return None, "missing"
    text = str(value).strip()
    if not text:
        return None, "missing"
    m = _AGE.match(text)
    if not m:
        return None, "invalid"
    years = int(m.group(1)) * AGE_UNITS[(m.group(2) or "Y").upper()]
    if years > max_years:
        return None, "implausible"
    return float(years), "ok"


def pixel_spacing(ds) -> tuple[tuple[float, float] | None, str]:
    """(row spacing, column spacing) in mm and where it came from.

    Status ``"ok"`` (PixelSpacing), ``"imager"`` (no usable PixelSpacing, ImagerPixelSpacing used),
    ``"missing"``, ``"zero"`` or ``"invalid"`` (neither usable: spacing None; callers then assume
    square pixels).
    """
    status = "missing"
    for tag, ok in (("PixelSpacing", "ok"), ("ImagerPixelSpacing", "imager")):
        value = ds.get(tag)
        if value is None or value == "":
            continue
        try:
            vals = [float(v) for v in _values(value)]
        except (TypeError, ValueError):
            status = "invalid"
            continue
        if len(vals) == 1:
            vals = vals * 2
        if len(vals) != 2 or not all(math.isfinite(v) for v in vals):
            status = "invalid"
            continue
        if min(vals) <= 0:
            status = "zero"
            continue
        return (vals[0], vals[1]), ok
    return None, status


def header_window(ds) -> tuple[float, float] | None:
    """(WindowCenter, WindowWidth) from the header (the first pair when several), or None."""
    c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
    if c is None or w is None or c == "" or w == "":
        return None
    try:
        c, w = float(_values(c)[0]), float(_values(w)[0])
    except (TypeError, ValueError, IndexError):
        return None
    if not (math.isfinite(c) and math.isfinite(w)) or w < 1:
        return None
    return c, w


def _values(value) -> list:
    """A DICOM value as a list: multi-valued elements (MultiValue) as they are, single values wrapped."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


# Projection radiographs: computed (CR) and digital (DX) radiography; the RSNA files are CR Secondary Captures.
RADIOGRAPH_MODALITIES = ("CR", "DX")
# SOP classes of cross-sectional or moving images, refused whatever their Modality says.
NOT_RADIOGRAPH_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine Image Storage
    "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image Storage
)


def radiograph_problem(ds) -> str | None:
    """Why ``ds`` is not a single projection radiograph (None when it may be one): a Modality other than
    CR/DX (an empty one is accepted), a cross-sectional SOP class, or several frames. Only these
    technical tags are read."""
    modality = text(ds, "Modality").upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        return f"Modality {modality}, not {'/'.join(RADIOGRAPH_MODALITIES)}"
    sop = str(ds.get("SOPClassUID", "") or "")
    if sop in NOT_RADIOGRAPH_SOP_CLASSES:
        from pydicom.uid import UID

        return f"SOP class {UID(sop).name}"
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1  # an unreadable count: decoding decides
    if frames != 1:
        return f"{frames} frames, not one image"
    return None


def text(ds, tag: str) -> str:
    v = ds.get(tag)
    return "" if v is None else str(v).strip()


def decode_pixels(ds) -> np.ndarray:
    """The stored image after the modality LUT (RescaleSlope/Intercept): float32 (rows, cols).

    Raises UnsupportedPixels for a transfer syntax without an installed decoder, colour or
    multi-frame images and corrupt pixel data; the caller decides what to do with the file.
    """
    from pydicom.pixels import get_decoder

    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None:
        raise UnsupportedPixels("no TransferSyntaxUID in the file meta information")
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise UnsupportedPixels(f"unsupported transfer syntax {ts.name} ({ts})") from None
    if not decoder.is_available:
        raise UnsupportedPixels(
            f"no decoder installed for transfer syntax {ts.name} ({ts}); "
            f"install one of: {'; '.join(decoder.missing_dependencies)}"
        )
    photometric = text(ds, "PhotometricInterpretation")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedPixels(f"photometric interpretation {photometric or 'missing'} is not greyscale")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise UnsupportedPixels("multi-frame image")
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for truncated or corrupt pixel data
        raise UnsupportedPixels(
            f"pixel data could not be decoded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if arr.ndim != 2:
        raise UnsupportedPixels(f"expected a 2-D greyscale image, got shape {arr.shape}")
    img = arr.astype(np.float32)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if slope != 1 or intercept != 0:
        img = img * slope + intercept
    return img
