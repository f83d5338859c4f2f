"""The BraTS preprocessing rules run by Snakemake itself on the tiny synthetic data: one broken case
fails only its own jobs under --keep-going, every other case reaches its patch file."""

from __future__ import annotations

import json

import h5py
import pandas as pd
import pytest
import yaml

from tests.workflow.smk import planned_jobs, run_snakemake

CASES = [f"BraTS20_Training_{i:03d}" for i in range(1, 7)]  # tests/config/tiny.yaml: 6 cases
BROKEN = "BraTS20_Training_002"
RAW = "results/synthetic/brats/MICCAI_BraTS2020_TrainingData"


def targets():
    return [
        "results/brats/ingest/split.csv",
        "results/brats/ingest/manifest.csv",
        *(f"results/brats/patches/{c}.h5" for c in CASES),
    ]


def test_broken_case_stops_alone_and_the_others_finish(tmp_path):
    run_snakemake(tmp_path, "synthetic_brats")
    t1 = tmp_path / RAW / BROKEN / f"{BROKEN}_t1.nii"
    t1.write_bytes(t1.read_bytes()[:-2000])  # a truncated download

    proc = run_snakemake(tmp_path, "--keep-going", *targets(), check=False)
    assert proc.returncode != 0
    results = tmp_path / "results"
    log = (results / "logs" / "brats_validate" / f"{BROKEN}.log").read_text()
    assert f"ERROR: {RAW}/{BROKEN}/{BROKEN}_t1.nii: truncated or unreadable image data" in log
    assert "Traceback" not in log, "bad input gives one line, not a traceback"
    assert not (results / "brats" / "n4" / BROKEN).exists()
    assert not (results / "brats" / "stack" / f"{BROKEN}.h5").exists()

    split = pd.read_csv(results / "brats" / "ingest" / "split.csv")
    assert list(split.columns) == ["id", "split", "grade", "patient"] and sorted(split["id"]) == CASES
    assert split.groupby("split")["grade"].nunique().to_dict() == {"test": 2, "train": 2, "val": 2}
    manifest = pd.read_csv(results / "brats" / "ingest" / "manifest.csv")
    assert len(manifest) == len(CASES) and set(manifest["shape_xyz"]) == {"32x32x24"}

    for case in (c for c in CASES if c != BROKEN):
        with h5py.File(results / "brats" / "stack" / f"{case}.h5") as f:
            start, stop = f.attrs["kept_z_range"]
            assert f["image"].shape == (4, stop - start, 32, 32) and 0 < start < stop < 24
            assert json.loads(f.attrs["source_files"])[0] == f"{case}_flair.nii"
        with h5py.File(results / "brats" / "patches" / f"{case}.h5") as f:
            assert f.attrs["n_patches"] == 4 and f["image"].shape == (4, 4, 8, 16, 16)
        trim = json.loads((results / "brats" / "trim" / f"{case}.json").read_text())
        assert trim["kept_z_range"] == [int(start), int(stop)]
        assert (results / "benchmarks" / "brats_n4" / f"{case}.tsv").exists()


@pytest.mark.parametrize("per_modality, n4_jobs", [(False, 6), (True, 24)])
def test_n4_job_granularity_is_a_config_choice(tmp_path, per_modality, n4_jobs):
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"brats": {"n4": {"per_modality": per_modality}}}))
    out = run_snakemake(tmp_path / "wd", "-n", *targets(), configfiles=[override]).stdout
    jobs = planned_jobs(out)
    assert jobs["brats_n4"] == n4_jobs
    assert all(jobs[r] == 6 for r in ("brats_validate", "brats_trim", "brats_stack", "brats_patches"))
    assert jobs["synthetic_brats"] == 1 and jobs["brats_ingest"] == 1


def test_per_case_jobs_plan_one_job_per_case(tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"brats": {"jobs": "per_case"}}))
    jobs = planned_jobs(run_snakemake(tmp_path / "wd", "-n", *targets(), configfiles=[override]).stdout)
    assert jobs == {"synthetic_brats": 1, "brats_ingest": 1, "brats_prep": 6}


def test_per_case_jobs_write_the_same_files_as_per_stage_jobs(tiny_run, tmp_path):
    """brats.jobs: per_case runs the same five stages in one job per case: every stack and patch file holds
    the arrays the per-stage rules (the session's tiny run) wrote; a broken case fails only its own job."""
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"brats": {"jobs": "per_case"}}))
    run_snakemake(tmp_path, "synthetic_brats", configfiles=[override])
    t1 = tmp_path / RAW / BROKEN / f"{BROKEN}_t1.nii"
    t1.write_bytes(t1.read_bytes()[:-2000])
    checked = [BROKEN, *CASES[2:4]]  # three cases keep the test short; the per-stage run has all six
    patches = [f"results/brats/patches/{c}.h5" for c in checked]
    proc = run_snakemake(tmp_path, "--keep-going", *patches, configfiles=[override], check=False)
    assert proc.returncode != 0
    log = (tmp_path / "results" / "logs" / "brats_prep" / f"{BROKEN}.log").read_text()
    assert f"ERROR: {RAW}/{BROKEN}/{BROKEN}_t1.nii: truncated or unreadable image data" in log
    assert not (tmp_path / "results" / "brats" / "stack" / f"{BROKEN}.h5").exists()
    for case in (c for c in checked if c != BROKEN):
        for stage, keys in (("stack", ("image", "label")), ("patches", ("image", "label"))):
            with (
                h5py.File(tmp_path / "results" / "brats" / stage / f"{case}.h5") as ours,
                h5py.File(tiny_run / "results" / "brats" / stage / f"{case}.h5") as ref,
            ):
                for key in keys:
                    assert (ours[key][...] == ref[key][...]).all(), f"{stage}/{case}.h5 {key}"
                assert dict(ours.attrs).keys() == dict(ref.attrs).keys()
        for stage in ("validate", "trim"):
            ours = json.loads((tmp_path / "results" / "brats" / stage / f"{case}.json").read_text())
            assert ours == json.loads((tiny_run / "results" / "brats" / stage / f"{case}.json").read_text())
