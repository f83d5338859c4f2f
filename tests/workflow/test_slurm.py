"""profiles/slurm against a real SLURM: a one-node cluster on localhost (tests/workflow/slurm_cluster.py)
runs part of the workflow through `--workflow-profile profiles/slurm`, as shipped.

Skipped, with the reason, where SLURM cannot be installed (not root, no apt-get, apt fails). Installing
takes under a minute the first time; the run itself about two. Deselect with `-m "not slurm"`.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.workflow import slurm_cluster

pytestmark = pytest.mark.slurm  # and `workflow`, as all of tests/workflow (conftest.py)

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "profiles" / "slurm"
CONFIGS = [REPO / "config" / "config.yaml", REPO / "tests" / "config" / "tiny.yaml"]
# A small corner of the workflow with CPU jobs and one GPU job: rule -> an output it writes.
TARGETS = {
    "mlflow_store": "results/mlflow/store.json",
    "mrnet_train": "results/mrnet/train/acl/axial/fold_all/model.pt",
}
GPU_RULE = "mrnet_train"


def _train_threads():
    """compute.train_threads of the merged test config: the GPU job's CPUs."""
    threads = None
    for path in CONFIGS:
        threads = (yaml.safe_load(path.read_text()) or {}).get("compute", {}).get("train_threads", threads)
    return threads


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("a throwaway SLURM cluster needs root (slurmd runs jobs as root here)")
    try:
        slurm_cluster.ensure_installed()
    except slurm_cluster.Unavailable as e:
        pytest.skip(f"SLURM cannot be installed here: {e}")
    c = slurm_cluster.Cluster(root=tmp_path_factory.mktemp("slurm"), cpus=2, gpus=1, partitions=("cpu", "gpu"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _job_records(cluster):
    """Every job the cluster knows (finished ones stay for MinJobAge) as {key: value} dicts."""
    out = cluster.run("scontrol", "--oneliner", "show", "job")
    records = []
    for line in out.splitlines():
        if line.strip() and "JobId=" in line:
            records.append(dict(re.findall(r"(\w[\w/:]*)=(\S*)", line)))
    return records


def _rule_of(record):
    # The plugin submits with --comment rule_<name> or rule_<name>_wildcards_<values>.
    m = re.match(r"rule_(.+?)(?:_wildcards_.*)?$", record.get("Comment", ""))
    return m.group(1) if m else None


def test_profile_runs_workflow_on_slurm_and_requests_the_gpu(cluster, tmp_path):
    wd = tmp_path / "wd"
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        *TARGETS.values(),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(wd),
        "--workflow-profile",
        str(PROFILE),
        # Test-only: poll every few seconds (the profile waits 20 s), fail at once instead of retrying.
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--retries",
        "0",
        "--configfile",
        *map(str, CONFIGS),
    ]
    try:
        done = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=400)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"snakemake on SLURM ran past {e.timeout} s\n{(e.stderr or '')[-4000:]}\n{cluster.log_tail()}")
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:] + "\n" + cluster.log_tail()
    for path in TARGETS.values():
        assert (wd / path).is_file(), f"{path} missing after the SLURM run"

    records = _job_records(cluster)
    by_rule = {}
    for rec in records:
        by_rule.setdefault(_rule_of(rec), []).append(rec)
    assert GPU_RULE in by_rule and len(by_rule) > 1, f"rules submitted to SLURM: {sorted(by_rule)}\n{log[-3000:]}"
    # The profile's default-resources at attempt 1 reached sbatch (--mem 8000, -t 120) for the jobs
    # of rules that declare none of their own.
    assert any(r.get("MinMemoryNode") == "8000M" and r.get("TimeLimit") == "02:00:00" for r in records), records

    for rule, recs in by_rule.items():
        for rec in recs:
            assert rec["JobState"] == "COMPLETED", f"{rule}: {rec['JobState']}"
            gpu_request = rec.get("TresPerJob", "") + rec.get("TresPerNode", "")
            if rule == GPU_RULE:
                assert re.search(r"gpu[:=]1\b", gpu_request), f"{rule} was submitted without a GPU: {rec}"
                assert rec["Partition"] == "gpu", rec
                assert rec["NumCPUs"] == str(_train_threads()), rec
            else:
                assert "gpu" not in gpu_request, f"CPU rule {rule} asked for a GPU: {rec}"
                assert rec["Partition"] == "cpu", rec
    assert cluster.active_jobs() == [], "jobs still queued after snakemake returned"
