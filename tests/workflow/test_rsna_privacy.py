"""Nothing that identifies a patient leaves the DICOM files: DICOMs that carry a name, a birth date and
a hospital record number go through every RSNA stage (Snakemake itself, real-data mode), then every
file the run wrote (tables, HDF5, checkpoints, plots, logs, the MLflow sqlite store and artifacts,
Snakemake's own metadata) and its console output are searched for those strings."""

from __future__ import annotations

import shutil

import pydicom
import yaml

from tests.workflow.smk import run_snakemake

NAME = "Zyxwvutson^Qponmlkine"
BIRTH = "19470312"
HOSPITAL_ID = "MRN-88301-STMARY"
# The forms the values could take on the way out: whole, in parts, reformatted.
NEEDLES = [NAME, "Zyxwvutson", "Qponmlkine", BIRTH, "1947-03-12", "12.03.1947", HOSPITAL_ID, "88301"]


def _encodings(s: str) -> list[bytes]:
    return [s.encode("utf-8"), s.encode("utf-16-le"), s.lower().encode("utf-8"), s.upper().encode("utf-8")]


def _identify(raw):
    for i, path in enumerate(sorted((raw / "stage_2_train_images").glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        ds.PatientName = NAME
        ds.PatientBirthDate = BIRTH
        ds.PatientID = HOSPITAL_ID
        ds.OtherPatientIDs = f"{HOSPITAL_ID}-{i}"
        ds.save_as(path, enforce_file_format=True)


def test_no_patient_identifier_reaches_any_output(rsna_raw, tmp_path):
    raw = tmp_path / "rsna-pneumonia-detection-challenge"
    shutil.copytree(rsna_raw, raw)
    _identify(raw)
    one = next((raw / "stage_2_train_images").glob("*.dcm")).read_bytes()
    assert all(n.encode() in one for n in (NAME, BIRTH, HOSPITAL_ID)), "the test's input must carry the identifiers"

    override = tmp_path / "real.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "synthetic": {"enabled": False},
                "pipelines": {
                    "brats_segmentation": False,
                    "brats_grade": False,
                    "mrnet": False,
                    "rsna": True,
                    "oct": False,
                },
                "rsna": {"raw_dir": str(raw), "train": {"epochs": 1}},
            }
        )
    )
    workdir = tmp_path / "wd"
    targets = ["results/rsna/evaluate/metrics.json", "results/rsna/eda/samples.png"]
    proc = run_snakemake(workdir, *targets, configfiles=[override])

    results = workdir / "results"
    assert (results / "rsna" / "evaluate" / "metrics.json").is_file() and (results / "mlflow" / "mlflow.db").is_file()
    assert list((results / "mlflow" / "artifacts").rglob("*")), "the search must include MLflow artifacts"
    searched = [p for p in workdir.rglob("*") if p.is_file()]
    assert len(searched) > 20
    leaks = []
    for path in searched:
        data = path.read_bytes()
        leaks += [f"{path.relative_to(workdir)}: {n!r}" for n in NEEDLES if any(e in data for e in _encodings(n))]
    console = (proc.stdout + proc.stderr).encode()
    leaks += [f"console: {n!r}" for n in NEEDLES if n.encode() in console]
    assert not leaks, leaks
