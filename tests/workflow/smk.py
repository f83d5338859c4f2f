"""Helpers that run Snakemake itself, as users do, in scratch directories."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "config" / "tiny.yaml"


def snakemake_cmd(workdir: Path, *args: str, configfiles=(), cores: int = 2) -> list[str]:
    exe = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))
    cfg = [str(ROOT / "config" / "config.yaml"), str(TINY), *map(str, configfiles)]
    # Targets and flags go first: --resources and --configfile take every value after them.
    return [
        exe,
        *args,
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "--cores",
        str(cores),
        "--resources",
        "gpu=1",
        "--configfile",
        *cfg,
    ]


def run_snakemake(
    workdir: Path, *args: str, configfiles=(), check=True, timeout=1200, **kw
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("MLFLOW_TRACKING_URI", None)  # each scratch run tracks into its own results/mlflow
    proc = subprocess.run(
        snakemake_cmd(workdir, *args, configfiles=configfiles),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        **kw,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


def planned_jobs(output: str) -> dict[str, int]:
    """rule -> count from the 'Job stats' table of a (dry) run; {} when nothing is to be done."""
    counts: dict[str, int] = {}
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("Job stats"):
            for row in lines[i + 3 :]:
                m = re.fullmatch(r"\s*(\S+)\s+(\d+)\s*", row)
                if not m or m.group(1) == "total":
                    break
                counts[m.group(1)] = int(m.group(2))
            break
    return counts
