"""Nothing that identifies a patient leaves the DICOM files: DICOMs that carry a name, a birth date and
a hospital record number go through every RSNA stage (Snakemake itself, real-data mode), prediction on a
folder of new DICOMs included (the synthetic unlabeled set: a name, birth date, other patient ids and an
institution in each header, and a hospital record number in PatientID), then every file the run wrote
(tables, HDF5, checkpoints, predictions, exclusions, CAMs, lineage, plots, logs, the MLflow sqlite store
and artifacts, Snakemake's own metadata) and its console output are searched for those strings."""

from __future__ import annotations

import shutil

import pydicom
import yaml

from tests.workflow.conftest import RSNA_TINY
from tests.workflow.smk import run_snakemake

NAME = "Zyxwvutson^Qponmlkine"
BIRTH = "19470312"
HOSPITAL_ID = "MRN-88301729-STMARY"
# The forms the values could take on the way out: whole, in parts, reformatted. Digit-only parts have 8 digits:
# a shorter one turns up by chance in a torch checkpoint's 40-digit random serialization id (5 digits: ~1 in 3000).
NEEDLES = [NAME, "Zyxwvutson", "Qponmlkine", BIRTH, "1947-03-12", "12.03.1947", HOSPITAL_ID, "88301729", "STMARY"]


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


def _new_images(folder) -> list[str]:
    """The synthetic unlabeled set in ``folder``, a hospital record number put in each PatientID; returns the
    identifying values its headers carry (whole, name parts, the birth date reformatted)."""
    from medflow.synthetic.rsna import IDENTIFYING_TAGS, write_predict_set

    write_predict_set(folder, {**RSNA_TINY, "predict": {"n_images": 4}}, seed=2)
    needles = set()
    for path in sorted(folder.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            continue  # the set's one file that is no DICOM
        ds.PatientID = HOSPITAL_ID
        ds.save_as(path, enforce_file_format=True)
        values = {tag: str(ds.get(tag, "")) for tag in IDENTIFYING_TAGS}
        birth = values["PatientBirthDate"]
        needles.update(values.values(), values["PatientName"].split("^"), [f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"])
    needles.discard("")
    assert len(needles) > 20, "the new files must carry identifying values"
    return sorted(needles)


def test_no_patient_identifier_reaches_any_output(rsna_raw, tmp_path):
    raw = tmp_path / "rsna-pneumonia-detection-challenge"
    shutil.copytree(rsna_raw, raw)
    _identify(raw)
    one = next((raw / "stage_2_train_images").glob("*.dcm")).read_bytes()
    assert all(n.encode() in one for n in (NAME, BIRTH, HOSPITAL_ID)), "the test's input must carry the identifiers"
    new = tmp_path / "new" / "stage_2_test_images"
    needles = NEEDLES + _new_images(new)

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
                "predict": {
                    "cams": 2,
                    "brats": {"input": ""},
                    "mrnet": {"input": ""},
                    "rsna": {"input": str(new), "checkpoint": ""},
                    "oct": {"input": ""},
                },
            }
        )
    )
    workdir = tmp_path / "wd"
    targets = [
        "results/rsna/evaluate/metrics.json",
        "results/rsna/eda/samples.png",
        "results/rsna/predict/summary.json",
    ]
    proc = run_snakemake(workdir, *targets, configfiles=[override])

    results = workdir / "results"
    assert (results / "rsna" / "evaluate" / "metrics.json").is_file() and (results / "mlflow" / "mlflow.db").is_file()
    predicted = results / "rsna" / "predict"
    assert len((predicted / "predictions.csv").read_text().splitlines()) == 1 + 4
    assert len((predicted / "excluded.csv").read_text().splitlines()) == 1 + 3
    assert len(list((predicted / "cams").glob("*.png"))) == 2 and (predicted / "lineage.json").is_file()
    assert list((results / "mlflow" / "artifacts").rglob("*")), "the search must include MLflow artifacts"
    searched = [p for p in workdir.rglob("*") if p.is_file()]
    assert len(searched) > 20
    leaks = []
    for path in searched:
        data = path.read_bytes()
        leaks += [f"{path.relative_to(workdir)}: {n!r}" for n in needles if any(e in data for e in _encodings(n))]
    console = (proc.stdout + proc.stderr).encode()
    leaks += [f"console: {n!r}" for n in needles if n.encode() in console]
    assert not leaks, leaks
