"""Prediction on new, unlabeled data, run by Snakemake on the tiny config: every pipeline's predict stage
writes its outputs, lineage and maps; a broken new case stops alone; a changed input reruns only its stage."""

from __future__ import annotations

import json
import shutil

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import yaml

from medflow.ingest.mrnet import TASKS
from tests.workflow.smk import planned_jobs, run_snakemake

VALIDATION = "results/synthetic/brats/predict/MICCAI_BraTS2020_ValidationData"
# The stage(s) that predict each data set, and the folder holding its lineage.json and summary.json.
PREDICT = {
    "brats_segmentation": "results/brats/segmentation/volumes",
    "brats_grade": "results/brats/grade/predict",
    "mrnet": "results/mrnet/predict",
    "rsna": "results/rsna/predict",
    "oct": "results/oct/predict",
}
REPORT = {"report", "all"}
# Items of each tiny unlabeled set (tests/config/tiny.yaml; RSNA and OCT sets add their bad files).
EXPECTED = {"brats_segmentation": 2, "brats_grade": 2, "mrnet": 3, "rsna": 4 + 3, "oct": 6 + 2}


def test_every_pipeline_predicts_its_unlabeled_set_with_lineage_and_maps(tiny_run):
    results = tiny_run / "results"
    cases = sorted(p.name for p in (tiny_run / VALIDATION).iterdir())
    assert len(cases) == 2  # tests/config/tiny.yaml: synthetic.brats.predict.n_cases
    for case in cases:
        raw = nib.load(tiny_run / VALIDATION / case / f"{case}_flair.nii")
        out = nib.load(results / "brats" / "segmentation" / "predict" / "submission" / f"{case}.nii.gz")
        labels = np.asarray(out.dataobj)
        assert out.shape == raw.shape and np.allclose(out.affine, raw.affine), "the BraTS submission grid"
        assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 4}
    volumes = pd.read_csv(results / "brats" / "segmentation" / "volumes" / "volumes.csv")
    assert sorted(volumes["case"]) == cases
    grade = pd.read_csv(results / "brats" / "grade" / "predict" / "predictions.csv")
    assert set(grade["case"]) <= set(cases) and grade["p_hgg"].between(0, 1).all()
    mrnet = pd.read_csv(results / "mrnet" / "predict" / "predictions.csv")
    assert len(mrnet) == 3 and all(any(c.startswith(t) or t in c for c in mrnet.columns) for t in TASKS)
    challenge = pd.read_csv(results / "mrnet" / "predict" / "predictions_challenge.csv", header=None)
    assert challenge.shape == (3, 3)
    rsna = pd.read_csv(results / "rsna" / "predict" / "predictions.csv")
    assert list(rsna.columns) == ["patientId", "probability", "label"] and len(rsna) == 4
    assert len(pd.read_csv(results / "rsna" / "predict" / "excluded.csv")) >= 2  # undecodable, not a radiograph
    assert len(pd.read_csv(results / "oct" / "predict" / "predictions.csv")) == 6

    client = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow' / 'mlflow.db'}")
    for pipeline, folder in PREDICT.items():
        lineage = json.loads((tiny_run / folder / "lineage.json").read_text())
        assert lineage["models"] and all(m["sha256"] for m in lineage["models"]), pipeline
        trained = [m for m in lineage["models"] if m["checkpoint"].endswith(".pt")]  # MRNet's stackers are JSON
        assert trained and all(m["training_run_id"] for m in trained), pipeline
        summary = json.loads((tiny_run / folder / "summary.json").read_text())
        # The tiny U-Net may find no tumour in a new case: the grade stage then excludes it, saying why.
        assert summary["n_predicted"] > 0 or pipeline == "brats_grade", pipeline
        assert summary["n_predicted"] + summary["n_excluded"] == EXPECTED[pipeline], pipeline
        exp = client.get_experiment_by_name(pipeline)
        runs = client.search_runs([exp.experiment_id], "tags.stage = 'predict'")
        assert len(runs) == 1, pipeline
        for m in lineage["models"]:
            assert runs[0].data.tags[f"checkpoint_sha256.{m['name']}"] == m["sha256"]
    for pipeline in ("brats/grade", "rsna", "oct"):
        assert list((results / pipeline / "evaluate" / "cams").glob("*.png")), f"{pipeline}: evaluation maps"
        if pipeline != "brats/grade" or len(grade):  # no map of a case the grade stage excluded
            assert list((results / pipeline / "predict" / "cams").glob("*.png")), f"{pipeline}: prediction maps"
    assert list((results / "mrnet" / "evaluate").glob("*/cams/*.png")) and list(
        (results / "mrnet" / "predict" / "cams").glob("*.png")
    )
    assert "Predictions on new data" in (results / "report" / "summary.md").read_text()


def test_a_changed_oct_input_reruns_only_oct_prediction(tiny_run, tmp_path):
    scans = tmp_path / "scans"
    shutil.copytree(tiny_run / "results" / "synthetic" / "oct" / "predict" / "new_scans", scans)
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"predict": {"oct": {"input": str(scans)}}}))
    jobs = planned_jobs(run_snakemake(tiny_run, "-n", configfiles=[override]).stdout)
    assert set(jobs) == {"oct_predict"} | REPORT, jobs


def test_a_broken_new_case_stops_alone_and_the_other_cases_finish(tiny_run, tmp_path):
    """Under --keep-going one unreadable modality fails its own case's job with one line naming the file."""
    work = tmp_path / "run"
    shutil.copytree(tiny_run, work, symlinks=True)
    broken, good = sorted(p.name for p in (work / VALIDATION).iterdir())
    t1 = work / VALIDATION / broken / f"{broken}_t1.nii"
    t1.write_bytes(t1.read_bytes()[:-2000])  # a truncated download
    submission = work / "results" / "brats" / "segmentation" / "predict" / "submission"
    before = (submission / f"{good}.nii.gz").stat().st_mtime_ns
    proc = run_snakemake(
        work, "--keep-going", "--forcerun", "brats_segmentation_predict", "brats_segmentation_volumes", check=False
    )
    assert proc.returncode != 0
    log = (work / "results" / "logs" / "brats_segmentation_predict" / f"{broken}.log").read_text()
    errors = [line for line in log.splitlines() if "ERROR" in line]
    assert len(errors) == 1, log
    assert errors[0].startswith(f"ERROR: {VALIDATION}/{broken}/{broken}_t1.nii: truncated or unreadable image data")
    assert not (submission / f"{broken}.nii.gz").exists()
    assert (submission / f"{good}.nii.gz").stat().st_mtime_ns > before, "the other case was predicted again"
