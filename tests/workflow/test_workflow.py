"""The workflow as users run it: whole DAG, a real tiny run, nothing-to-do, partial reruns."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.workflow.smk import planned_jobs, run_snakemake

pytestmark = pytest.mark.workflow

PIPELINE_PREFIXES = {
    "brats": ("brats_", "train_unet3d", "evaluate_unet3d", "grade_", "synthetic_brats"),
    "mrnet": ("mrnet_", "synthetic_mrnet"),
    "rsna": ("rsna_", "synthetic_rsna"),
    "oct": ("oct_", "synthetic_oct"),
}


def pipeline_of(rule: str) -> str | None:
    for name, prefixes in PIPELINE_PREFIXES.items():
        if rule.startswith(prefixes):
            return name
    return None


def test_dry_run_plans_every_pipeline(tmp_path):
    out = run_snakemake(tmp_path, "-n").stdout
    jobs = planned_jobs(out)
    assert {"mlflow_store", "report", "all"} <= set(jobs)
    assert {pipeline_of(r) for r in jobs} >= {"brats", "mrnet", "rsna", "oct"}


def test_tiny_run_writes_every_pipeline_output(tiny_run):
    results = tiny_run / "results"
    for metrics in ["brats/segmentation/metrics.json", "brats/grade/metrics.json", "rsna/metrics.json", "oct/metrics.json"]:
        data = json.loads((results / metrics).read_text())
        assert data, metrics
    assert list((results / "mrnet").glob("*/metrics.json")), "one metrics file per MRNet task"
    html = (results / "report" / "report.html").read_text()
    assert "Headline metrics" in html and "data:image/png;base64" in html
    assert "git commit" in (results / "report" / "summary.md").read_text()
    # Every job wrote a log; no traceback hides in a successful run's logs.
    logs = list((results / "logs").rglob("*.log"))
    assert logs and not [p for p in logs if "Traceback" in p.read_text()]


def test_second_run_has_nothing_to_do(tiny_run):
    out = run_snakemake(tiny_run, "-n").stdout
    assert planned_jobs(out) == {}, out[-3000:]
    assert "Nothing to be done" in out


def _override(tmp_path, data) -> str:
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _planned_with(tiny_run, tmp_path, override) -> dict[str, int]:
    out = run_snakemake(tiny_run, "-n", configfiles=[_override(tmp_path, override)]).stdout
    return planned_jobs(out)


def test_changed_mrnet_training_value_plans_only_mrnet_jobs(tiny_run, tmp_path):
    jobs = _planned_with(tiny_run, tmp_path, {"mrnet": {"train": {"lr": 0.000123}}})
    assert any(r.startswith("mrnet_train") for r in jobs), jobs
    assert {pipeline_of(r) for r in jobs} - {None} == {"mrnet"}, jobs
    assert set(r for r in jobs if pipeline_of(r) is None) <= {"report", "all"}


def test_changed_n4_value_plans_n4_and_downstream_brats_only(tiny_run, tmp_path):
    jobs = _planned_with(tiny_run, tmp_path, {"brats": {"n4": {"iterations": [7, 7]}}})
    assert "brats_n4" in jobs and "brats_stack" in jobs and "train_unet3d" in jobs, jobs
    assert any(r.startswith("grade_") for r in jobs), "the grade pipeline reads the stacked cases"
    assert {pipeline_of(r) for r in jobs} - {None} == {"brats"}, jobs
    assert "synthetic_brats" not in jobs and "brats_ingest" not in jobs, "nothing upstream of N4 reruns"
