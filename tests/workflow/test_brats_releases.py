"""BraTS 2021 and 2023-GLI downloads, run by Snakemake itself on tiny synthetic sets in each release's exact
layout: preprocessing, a short training and evaluation; patients never split; grade needs a grade file."""

from __future__ import annotations

import json

import h5py
import pandas as pd
import pytest
import yaml

from medflow.ingest import releases
from tests.workflow.smk import run_snakemake

METRICS = "results/brats/segmentation/evaluate/metrics.json"


def _config(tmp_path, release: str, **extra) -> list:
    cfg = {
        "brats": {"release": release},
        "synthetic": {"brats": {"release": release, "n_cases": 8}},
        "pipelines": {"brats_grade": False, "mrnet": False, "rsna": False, "oct": False},
        **extra,
    }
    path = tmp_path / f"{release}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return [path]


@pytest.mark.parametrize("name", ["2021", "2023-gli"])
def test_release_runs_from_its_raw_layout_to_evaluation(tmp_path, name):
    release = releases.get(name)
    workdir = tmp_path / "wd"
    run_snakemake(workdir, METRICS, configfiles=_config(tmp_path, name))

    raw = workdir / "results" / "synthetic" / "brats" / release.raw_subdir
    cases = sorted(p.name for p in raw.iterdir() if p.is_dir())
    assert cases and all(release.case_re.fullmatch(c) for c in cases), cases
    for case in cases:  # the release's own file names, and no grade file
        assert sorted(p.name for p in (raw / case).iterdir()) == sorted(
            release.file_name(case, k) for k in ("flair", "t1", "t1ce", "t2", "seg")
        )
    assert not (raw / "name_mapping.csv").exists()

    split = pd.read_csv(workdir / "results" / "brats" / "ingest" / "split.csv", dtype=str)
    assert sorted(split["id"]) == cases
    patients = split.groupby(split["id"].map(release.patient_of))["split"].nunique()
    assert (patients == 1).all(), "a patient's cases fell in two splits"
    if name == "2023-gli":
        assert len(patients) < len(cases), "the synthetic 2023-GLI set has patients with two time points"

    stored = set()
    for case in cases:  # stacked labels are the pipeline's own, whatever the release wrote
        with h5py.File(workdir / "results" / "brats" / "stack" / f"{case}.h5") as f:
            stored |= set(f["label"][...].ravel().tolist())
            assert f.attrs["release"] == name
    assert stored == {0, 1, 2, 3}, "enhancing tumour is stored as 3 in every release"
    metrics = json.loads((workdir / METRICS).read_text())
    assert set(metrics["headline"]) == {"dice_wt", "dice_tc", "dice_et", "hd95_wt"}
    assert metrics["headline"]["dice_wt"]["n"] == int((split["split"] == "test").sum())


def test_grade_pipeline_on_a_release_without_grades_stops_at_start_up(tmp_path):
    configs = _config(tmp_path, "2021", pipelines={"brats_grade": True, "mrnet": False, "rsna": False, "oct": False})
    proc = run_snakemake(tmp_path / "wd", "-n", configfiles=configs, check=False)
    assert proc.returncode != 0
    assert "pipelines.brats_grade needs LGG/HGG grades, and BraTS 2021 has no grade file" in proc.stdout + proc.stderr


def test_synthetic_and_download_release_must_agree(tmp_path):
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump({"brats": {"release": "2021"}}))  # the demo still writes 2020
    proc = run_snakemake(tmp_path / "wd", "-n", configfiles=[path], check=False)
    assert proc.returncode != 0
    assert "synthetic.brats.release '2020' differs from brats.release '2021'" in proc.stdout + proc.stderr
