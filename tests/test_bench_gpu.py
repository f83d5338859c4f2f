"""`make bench-gpu` keeps working between GPU checks: its SMOKE run (the script the target runs, with
``--smoke``) gives every section's rows, each with an absolute figure and a ratio against a baseline row
of the same run, in the printed table and the JSON; without a GPU the plain run refuses in one line."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "benchmarks/bench_gpu.py"
# section (prefix: the sliding-window section names the case's shape) -> rows
SECTIONS = {
    "U-Net training": 5,
    "sliding window": 2,
    "MRNet training": 3,
    "BraTS grade training": 2,
    "RSNA training": 2,
    "OCT training": 2,
}


def bench(*args: str, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **env}
    return subprocess.run(
        [sys.executable, SCRIPT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_gpu") / "bench_gpu.json"
    proc = bench("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout, json.loads(out.read_text())


def test_make_target_runs_this_script():
    for smoke_flag, expected in (("SMOKE=1", f"python {SCRIPT} --smoke"), ("SMOKE=", f"python {SCRIPT}")):
        proc = subprocess.run(["make", "-n", "bench-gpu", smoke_flag], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert expected in [line.strip() for line in proc.stdout.splitlines()], proc.stdout


def test_smoke_has_every_row_with_a_figure_and_a_ratio(smoke):
    stdout, result = smoke
    assert result["smoke"] is True and result["device"].startswith("CPU")
    rows = result["rows"]
    found = {s: [r for r in rows if r["section"].startswith(s)] for s in SECTIONS}
    assert {s: len(r) for s, r in found.items()} == SECTIONS
    assert len(rows) == sum(SECTIONS.values())
    for r in rows:
        assert math.isfinite(r["value"]) and r["value"] > 0, r
        assert r["peak_mib"] is None or r["peak_mib"] > 0, r
        # the baseline: a row of the same section measured before it (or the row itself, ratio 1)
        (base,) = [b for b in rows[: rows.index(r) + 1] if (b["section"], b["name"]) == (r["section"], r["baseline"])]
        # > 1 means faster than the baseline, for rates and for seconds alike
        expected = base["value"] / r["value"] if r["unit"] == "s/case" else r["value"] / base["value"]
        assert r["ratio"] == pytest.approx(expected, rel=1e-9), r
    for section in SECTIONS:  # each section has a baseline of its own
        assert [r["ratio"] for r in found[section] if r["baseline"] == r["name"]] == [1.0]
    table = stdout[stdout.index("measurement") :].splitlines()
    for r in rows:
        line = next(ln for ln in table if ln.startswith(r["section"]) and f" {r['name']} " in ln)
        assert f"{r['ratio']:.2f}x" in line and f"{r['value']:.3f}" in line, line


def test_refuses_without_a_gpu(tmp_path):
    out = tmp_path / "bench_gpu.json"
    proc = bench("--out", str(out), CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "no CUDA GPU" in proc.stderr
    assert not out.exists()
