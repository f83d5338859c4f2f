"""How long Snakemake takes to plan a BraTS download of 1,251 cases: `brats.jobs: per_stage` (five jobs per
case) against `per_case` (one job per case), both in this run, on the release's real layout.

The cases are placeholder files in the release's exact folder and file names (a dry run reads no image);
the workflow plans preprocessing, training and evaluation of the segmentation pipeline. Target: per_case
plans in under 5 s. Prints each mode's jobs and wall seconds (median of --repeats) and the ratio.

    PYTHONPATH=src python benchmarks/bench_dry_run.py [--release 2021] [--cases 1251] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from medflow.ingest.releases import KINDS, get

REPO = Path(__file__).resolve().parents[1]


def write_layout(root: Path, release: str, n: int) -> Path:
    rel = get(release)
    raw = root / rel.raw_subdir
    for i in range(n):
        case = rel.case_format.format(i=i, t=i % 2)
        (raw / case).mkdir(parents=True, exist_ok=True)
        for kind in KINDS:
            (raw / case / rel.file_name(case, kind)).write_bytes(b"")
    return raw


def plan(workdir: Path, config: dict) -> tuple[float, int]:
    cfg = workdir / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "-s", str(REPO / "Snakefile")]
    cmd += ["--directory", str(workdir), "--configfile", str(cfg)]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    seconds = time.perf_counter() - t
    total = next(int(line.split()[1]) for line in out.splitlines() if line.startswith("total "))
    return seconds, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release", default="2021", choices=["2020", "2021", "2023-gli"])
    ap.add_argument("--cases", type=int, default=1251)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw = write_layout(Path(tmp), args.release, args.cases)
        off = {"input": ""}
        base = {
            "synthetic": {"enabled": False},
            "pipelines": {
                "brats_segmentation": True,
                "brats_grade": False,
                "mrnet": False,
                "rsna": False,
                "oct": False,
            },
            "predict": {"brats": off, "mrnet": off, "rsna": off, "oct": off},
        }
        rows = {}
        for jobs in ("per_stage", "per_case"):
            config = {**base, "brats": {"release": args.release, "raw_dir": str(raw), "jobs": jobs}}
            wd = Path(tmp) / jobs
            wd.mkdir()
            runs = [plan(wd, config) for _ in range(args.repeats)]
            rows[jobs] = (statistics.median(s for s, _ in runs), runs[0][1])
            print(f"{jobs:>9}: {rows[jobs][1]:5d} jobs planned in {rows[jobs][0]:.1f} s (median of {args.repeats})")
    ratio = rows["per_stage"][0] / rows["per_case"][0]
    verdict = "meets" if rows["per_case"][0] < 5 else "misses"
    print(f"BraTS {args.release}, {args.cases} cases: per_case plans {ratio:.1f}x faster; {verdict} the < 5 s target")


if __name__ == "__main__":
    main()
