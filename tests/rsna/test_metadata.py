"""The metadata table: one row per patient from every header, merged with both CSVs; bad headers get
a logged, counted decision instead of stopping the job."""

import logging
import shutil

import pandas as pd
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

from medflow.errors import InputError
from medflow.ingest import rsna as ingest
from medflow.rsna import metadata


@pytest.fixture(scope="module")
def quirky(rsna_raw, tmp_path_factory):
    """The tiny download with one header of each kind of trouble; returns (manifest, {kind: patientId})."""
    root = tmp_path_factory.mktemp("quirky") / "raw"
    shutil.copytree(rsna_raw, root)
    files = sorted((root / ingest.IMAGES).glob("*.dcm"))
    kinds = ["no_age", "old_age", "zero_spacing", "no_spacing", "mpeg2", "rle", "no_sex"]
    which = {}
    for kind, path in zip(kinds, files):
        ds = pydicom.dcmread(path)
        which[kind] = path.stem
        if kind == "no_age":
            del ds.PatientAge
        elif kind == "old_age":
            ds.PatientAge = "152Y"
        elif kind == "zero_spacing":
            ds.PixelSpacing = [0, 0]
        elif kind == "no_spacing":
            del ds.PixelSpacing
        elif kind == "mpeg2":  # a transfer syntax no installed decoder handles
            ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
            ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"0" * 64])
            ds["PixelData"].VR = "OB"
        elif kind == "rle":  # compressed, but decodable: must be used
            ds.compress(RLELossless)
        elif kind == "no_sex":
            del ds.PatientSex
        ds.save_as(path, enforce_file_format=True)
    manifest = ingest.discover(root)
    return manifest, which


def test_one_row_per_patient_with_header_fields_and_labels(quirky, caplog):
    manifest, which = quirky
    with caplog.at_level(logging.INFO):
        table, summary = metadata.build_table(manifest, max_excluded_fraction=0.5)
    assert list(table.columns) == metadata.COLUMNS + ["target", "n_boxes", "class"]
    assert table["patientId"].tolist() == manifest["patientId"].tolist()
    t = table.set_index("patientId")

    assert t.at[which["no_age"], "age_status"] == "missing" and pd.isna(t.at[which["no_age"], "age_years"])
    assert t.at[which["old_age"], "age_status"] == "implausible" and pd.isna(t.at[which["old_age"], "age_years"])
    assert t.at[which["zero_spacing"], "spacing_status"] == "zero"
    assert t.at[which["no_spacing"], "spacing_status"] == "missing" and pd.isna(
        t.at[which["no_spacing"], "pixel_spacing_row"]
    )
    assert t.at[which["no_sex"], "sex"] == ""
    assert not t.at[which["mpeg2"], "usable"] and "MPEG2" in t.at[which["mpeg2"], "exclusion"]
    assert t.at[which["rle"], "usable"] and t.at[which["rle"], "transfer_syntax"] == RLELossless
    assert t["usable"].sum() == len(t) - 1

    clean = t.drop(index=list(which.values()))
    assert (clean["age_status"] == "ok").all() and clean["age_years"].between(0, 120).all()
    assert set(clean["view_position"]) <= {"AP", "PA"} and set(clean["sex"]) <= {"M", "F"}
    assert set(t["photometric_interpretation"]) == {"MONOCHROME2"} and set(t["bits_stored"]) <= {8, 12}
    ok = t[t["usable"]]
    assert (ok["intensity_min"] <= ok["intensity_mean"]).all() and (ok["intensity_mean"] <= ok["intensity_max"]).all()
    assert (ok["intensity_max"] < 2.0 ** ok["bits_stored"]).all()
    # Merged with the CSVs: several boxes collapse into one row with their count.
    m = manifest.set_index("patientId")
    assert (
        (t["target"] == m["target"]).all() and (t["n_boxes"] == m["n_boxes"]).all() and (t["class"] == m["class"]).all()
    )
    assert t["n_boxes"].max() >= 2

    d = summary["decisions"]
    assert summary["n_patients"] == len(t) and summary["n_excluded"] == 1
    assert d["age missing -> age unknown (own age bin)"] == 1 and d["age implausible -> age unknown (own age bin)"] == 1
    assert (
        d["PixelSpacing zero -> square pixels assumed"] == 1 and d["PixelSpacing missing -> square pixels assumed"] == 1
    )
    assert d["excluded: unsupported pixel data"] == 1
    assert f"{which['mpeg2']}: excluded: unsupported transfer syntax" in caplog.text


def test_table_roundtrip_and_parallel_reading_agree(quirky, tmp_path):
    manifest, _ = quirky
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    written = metadata.write_table(
        tmp_path / "manifest.csv", tmp_path / "t.csv", tmp_path / "d.json", threads=2, max_excluded_fraction=0.5
    )
    serial, _ = metadata.build_table(manifest, threads=1, max_excluded_fraction=0.5)
    back = metadata.read_table(tmp_path / "t.csv")
    pd.testing.assert_frame_equal(written, serial)
    assert back["usable"].dtype == bool and back["sex"].tolist() == serial["sex"].tolist()
    pd.testing.assert_series_equal(back["age_years"], serial["age_years"].astype(float))


def test_too_many_exclusions_stop_the_job_naming_a_file(quirky):
    manifest, which = quirky
    with pytest.raises(InputError, match=rf"{which['mpeg2']}\.dcm: 1 of \d+ images cannot be used"):
        metadata.build_table(manifest, max_excluded_fraction=0.01)
