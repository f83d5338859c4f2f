"""The RSNA metadata table: one row per patient from every DICOM header, merged with both CSVs.

Columns (``COLUMNS``): patientId (the anonymous file id), age_years (parsed from the DICOM age
string) and age_status, sex, view_position, pixel_spacing_row/col (mm) and spacing_status, rows,
columns, photometric_interpretation, bits_stored, transfer_syntax, intensity_min/max/mean (stored
values after the modality LUT), window_center/width (header, may be empty), usable and exclusion,
then target, n_boxes, class from the manifest (the CSVs, one row per patient).

Headers that lack an age, a usable PixelSpacing, or pixels this installation can decode do not stop
the job: each gets a decision (fallback or exclusion) that is logged per file and counted in the
decisions file. Only when more than ``max_excluded_fraction`` of the files are excluded does the job
fail, because then something systematic is wrong (a missing JPEG decoder, say).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from medflow import io
from medflow.errors import InputError
from medflow.rsna import dicom as dcm

log = logging.getLogger(__name__)

COLUMNS = [
    "patientId",
    "age_years",
    "age_status",
    "sex",
    "view_position",
    "pixel_spacing_row",
    "pixel_spacing_col",
    "spacing_status",
    "rows",
    "columns",
    "photometric_interpretation",
    "bits_stored",
    "transfer_syntax",
    "intensity_min",
    "intensity_max",
    "intensity_mean",
    "window_center",
    "window_width",
    "usable",
    "exclusion",
]
# What each non-ok status leads to (the text goes to the log and the decisions file).
DECISIONS = {
    "age": {
        "missing": "age unknown (own age bin)",
        "invalid": "age unknown (own age bin)",
        "implausible": "age unknown (own age bin)",
    },
    "spacing": {
        "imager": "ImagerPixelSpacing used",
        "missing": "square pixels assumed",
        "zero": "square pixels assumed",
        "invalid": "square pixels assumed",
    },
    "sex": {"unknown": "sex unknown (no sex feature set)"},
    "view": {"unknown": "view unknown (no view feature set)"},
}


MAX_AGE_YEARS = 120.0  # the default of config rsna.metadata.max_age_years


def read_dicom(path: str | os.PathLike):
    """The whole DICOM file (header and pixel data) as a pydicom Dataset; InputError if it cannot be read."""
    import pydicom

    try:
        return pydicom.dcmread(path)
    except Exception as e:
        raise InputError(
            path, f"unreadable DICOM ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None


def record_of(ds, patient_id: str, max_age_years: float = MAX_AGE_YEARS) -> tuple[dict[str, Any], np.ndarray | None]:
    """One metadata row from an open DICOM dataset (see the module doc for the columns) and its decoded
    pixels, float32 (rows, cols) after the modality LUT, or None when they cannot be used (the row says why).
    The metadata stage keeps the row; prediction on new files uses both (``medflow.rsna.preprocess``)."""
    age, age_status = dcm.parse_age(ds.get("PatientAge"), max_age_years)
    spacing, spacing_status = dcm.pixel_spacing(ds)
    sex = dcm.text(ds, "PatientSex").upper()
    view = dcm.text(ds, "ViewPosition").upper()
    window = dcm.header_window(ds)
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    rec: dict[str, Any] = {
        "patientId": patient_id,
        "age_years": age,
        "age_status": age_status,
        "sex": sex if sex in ("M", "F", "O") else "",
        "view_position": view,
        "pixel_spacing_row": spacing[0] if spacing else np.nan,
        "pixel_spacing_col": spacing[1] if spacing else np.nan,
        "spacing_status": spacing_status,
        "rows": int(ds.get("Rows", 0) or 0),
        "columns": int(ds.get("Columns", 0) or 0),
        "photometric_interpretation": dcm.text(ds, "PhotometricInterpretation"),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "transfer_syntax": str(ts or ""),
        "intensity_min": np.nan,
        "intensity_max": np.nan,
        "intensity_mean": np.nan,
        "window_center": window[0] if window else np.nan,
        "window_width": window[1] if window else np.nan,
        "usable": True,
        "exclusion": "",
    }
    try:
        img = dcm.decode_pixels(ds)
    except dcm.UnsupportedPixels as e:
        rec.update(usable=False, exclusion=str(e))
        return rec, None
    rec.update(
        intensity_min=float(img.min()), intensity_max=float(img.max()), intensity_mean=float(img.mean(dtype=np.float64))
    )
    return rec, img


def read_record(path: str | os.PathLike, patient_id: str, max_age_years: float = MAX_AGE_YEARS) -> dict[str, Any]:
    """One metadata row from one DICOM file (see the module doc for the columns)."""
    return record_of(read_dicom(path), patient_id, max_age_years)[0]


def _record(args):
    return read_record(*args)


def decisions_of(rec: dict[str, Any]) -> list[str]:
    """The logged decisions a record needed (empty for a clean header)."""
    out = []
    if rec["age_status"] != "ok":
        out.append(f"age {rec['age_status']} -> {DECISIONS['age'][rec['age_status']]}")
    if rec["spacing_status"] != "ok":
        out.append(f"PixelSpacing {rec['spacing_status']} -> {DECISIONS['spacing'][rec['spacing_status']]}")
    if rec["sex"] not in ("M", "F"):
        out.append(f"sex {rec['sex'] or 'missing'} -> {DECISIONS['sex']['unknown']}")
    if rec["view_position"] not in ("AP", "PA"):
        out.append(f"view {rec['view_position'] or 'missing'} -> {DECISIONS['view']['unknown']}")
    if not rec["usable"]:
        out.append(f"excluded: {rec['exclusion']}")
    return out


def build_table(
    manifest: pd.DataFrame,
    *,
    max_age_years: float = MAX_AGE_YEARS,
    threads: int = 1,
    max_excluded_fraction: float = 0.05,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read every header in ``manifest`` (``patientId, dicom, target, n_boxes, class``) and return
    (table, decisions summary). Files are read in a process pool when ``threads`` > 1, in order."""
    jobs = [(p, pid, max_age_years) for p, pid in zip(manifest["dicom"], manifest["patientId"])]
    if threads > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(threads) as pool:
            records = list(pool.imap(_record, jobs, chunksize=max(1, min(64, len(jobs) // (4 * threads)))))
    else:
        records = [_record(j) for j in jobs]

    counts: Counter = Counter()
    for rec in records:
        for d in decisions_of(rec):
            log.info("%s: %s", rec["patientId"], d)
            counts["excluded: unsupported pixel data" if d.startswith("excluded") else d] += 1
    table = pd.DataFrame.from_records(records, columns=COLUMNS)
    table = table.merge(
        manifest[["patientId", "target", "n_boxes", "class"]], on="patientId", how="left", validate="one_to_one"
    )
    n = len(table)
    n_excluded = int((~table["usable"]).sum())
    summary = {
        "n_patients": n,
        "n_usable": n - n_excluded,
        "n_excluded": n_excluded,
        "decisions": dict(sorted(counts.items())),
        "exclusions": dict(Counter(table.loc[~table["usable"], "exclusion"])),
    }
    log.info(
        "metadata of %d patients: %d usable, %d excluded; decisions: %s",
        n,
        n - n_excluded,
        n_excluded,
        summary["decisions"] or "none",
    )
    if n and n_excluded / n > max_excluded_fraction:
        first = table.loc[~table["usable"]].iloc[0]
        raise InputError(
            manifest.loc[manifest["patientId"] == first["patientId"], "dicom"].iloc[0],
            f"{n_excluded} of {n} images cannot be used (over max_excluded_fraction {max_excluded_fraction}); "
            f"first reason: {first['exclusion']}",
        )
    return table, summary


def write_table(
    manifest_csv: str | os.PathLike, table_out: str | os.PathLike, decisions_out: str | os.PathLike, **kwargs
) -> pd.DataFrame:
    manifest = pd.read_csv(manifest_csv, dtype={"patientId": str})
    table, summary = build_table(manifest, **kwargs)
    with io.atomic_path(table_out) as tmp:
        table.to_csv(tmp, index=False)
    io.write_json(decisions_out, summary)
    return table


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """The metadata table with its types (patientId and the text columns as str, usable as bool)."""
    text = {
        c: str
        for c in (
            "patientId",
            "age_status",
            "sex",
            "view_position",
            "spacing_status",
            "photometric_interpretation",
            "transfer_syntax",
            "exclusion",
            "class",
        )
    }
    df = pd.read_csv(path, dtype=text, keep_default_na=False, na_values={c: [""] for c in COLUMNS if c not in text})
    df["usable"] = df["usable"].astype(str).str.lower().isin(["true", "1"])
    return df
