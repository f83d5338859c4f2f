"""The workflow as users run it: whole DAG, a real tiny run, nothing-to-do, and partial reruns: a rule's
params carry exactly what the stage uses, so a changed value reruns that stage and what follows it,
and nothing else."""

from __future__ import annotations

import json

import pytest
import yaml

from medflow.ingest.mrnet import TASKS
from tests.workflow import workflow_rules
from tests.workflow.smk import ROOT, TINY, planned_jobs, run_snakemake

# Longest prefix first: brats_segmentation_* and brats_grade_* are pipelines of their own; the other
# brats_* rules are the preprocessing they share.
PIPELINE_PREFIXES = {
    "brats_segmentation": ("brats_segmentation_",),
    "brats_grade": ("brats_grade_",),
    "brats": ("brats_", "synthetic_brats"),
    "mrnet": ("mrnet_", "synthetic_mrnet"),
    "rsna": ("rsna_", "synthetic_rsna"),
    "oct": ("oct_", "synthetic_oct"),
}
# The report prints the whole config, so every config change reruns it (and `all`, which collects it).
REPORT = {"report", "all"}
BRATS_FROM_N4 = {
    "brats_n4",
    "brats_trim",
    "brats_stack",
    "brats_patches",
    "brats_segmentation_train",
    "brats_segmentation_evaluate",
    "brats_grade_slices",
    "brats_grade_train",
    "brats_grade_evaluate",
    # New cases are preprocessed with the checkpoint's N4 values, so both BraTS predictions follow.
    "brats_segmentation_predict",
    "brats_segmentation_volumes",
    "brats_grade_predict",
}
EVALUATE = {"brats_segmentation_evaluate", "brats_grade_evaluate", "mrnet_evaluate", "rsna_evaluate", "oct_evaluate"}


def pipeline_of(rule: str) -> str | None:
    for name, prefixes in PIPELINE_PREFIXES.items():
        if rule.startswith(prefixes):
            return name
    return None


def test_dry_run_plans_every_rule_of_every_pipeline(tmp_path):
    jobs = planned_jobs(run_snakemake(tmp_path / "wd", "-n").stdout)
    rules = workflow_rules.declared_rules(configfiles=[ROOT / "config" / "config.yaml", TINY], workdir=tmp_path)
    targets_only = {"predict"}  # `snakemake predict`: the prediction stages alone, which `all` plans too
    assert set(jobs) == set(rules) - targets_only, f"never planned: {set(rules) - targets_only - set(jobs)}"
    assert {pipeline_of(r) for r in jobs} - {None} == set(PIPELINE_PREFIXES)


def test_tiny_run_writes_every_pipeline_output(tiny_run):
    results = tiny_run / "results"
    final = [
        "brats/segmentation/evaluate/metrics.json",
        "brats/grade/evaluate/metrics.json",
        "mrnet/summary/metrics.json",
        "rsna/evaluate/metrics.json",
        "oct/evaluate/metrics.json",
    ]
    for metrics in final:
        data = json.loads((results / metrics).read_text())
        assert data.get("headline"), f"{metrics}: the report reads its headline block"
    assert sorted(p.parent.name for p in (results / "mrnet" / "evaluate").glob("*/metrics.json")) == sorted(TASKS)
    assert (results / "mrnet" / "summary" / "summary.csv").is_file()
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


def _planned_with(tiny_run, tmp_path, override) -> dict[str, int]:
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(override))
    return planned_jobs(run_snakemake(tiny_run, "-n", configfiles=[path]).stdout)


@pytest.mark.parametrize(
    "override",
    [
        {"brats": {"n4": {"threads": 2}}},
        {"compute": {"train_threads": 3}},
        {"rsna": {"threads": 2}},
    ],
    ids=["brats.n4.threads", "compute.train_threads", "rsna.threads"],
)
def test_changed_thread_count_reruns_no_stage(tiny_run, tmp_path, override):
    """Threads change how a job runs, not what it writes: they are `threads:`, never params."""
    jobs = _planned_with(tiny_run, tmp_path, override)
    assert set(jobs) <= REPORT, jobs


def test_changed_n4_correction_value_reruns_n4_and_everything_after_it(tiny_run, tmp_path):
    jobs = _planned_with(tiny_run, tmp_path, {"brats": {"n4": {"shrink_factor": 3}}})  # tiny.yaml: 2
    assert set(jobs) == BRATS_FROM_N4 | REPORT, "N4, trim, stack, patches and both BraTS pipelines; nothing upstream"
    assert jobs["brats_n4"] == 6, "every case"


def test_changed_bootstrap_reruns_evaluation_not_training(tiny_run, tmp_path):
    jobs = _planned_with(tiny_run, tmp_path, {"evaluation": {"bootstrap_samples": 321}})
    # mrnet_evaluate also fits the stackers that mrnet_predict applies (refitted the same: predict reruns).
    assert set(jobs) == EVALUATE | {"mrnet_summary", "mrnet_predict"} | REPORT, jobs
    assert jobs["mrnet_evaluate"] == len(TASKS)


def test_changed_mrnet_training_value_reruns_only_mrnet_training_and_after(tiny_run, tmp_path):
    jobs = _planned_with(tiny_run, tmp_path, {"mrnet": {"train": {"lr": 0.000123}}})
    assert set(jobs) == {"mrnet_train", "mrnet_evaluate", "mrnet_summary", "mrnet_predict"} | REPORT, jobs
    assert jobs["mrnet_train"] == 9, "task x plane, all-train models (tiny.yaml: in-sample stacking)"
