"""Peak memory of one stacking job and one patch-sampling job on a real-size (240 x 240 x 155) case.

Each job runs in a fresh Python process exactly as its workflow script calls the library
(``stack_case``, ``sample_case``); the peak resident set size (``VmHWM``) of that process is
printed, next to a process that only imports the same modules. Target: under 2 GB per job.

Run by hand, never in CI:
    PYTHONPATH=src python benchmarks/bench_memory.py [--patch 16 160 160] [--n 8] [--threshold 0.95]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys
from medflow.preprocess.stack import StackParams, stack_case
from medflow.preprocess.patches import PatchParams, sample_case
job, work = sys.argv[1], sys.argv[2]
cfg = json.load(open(f"{work}/job.json"))
if job == "stack":
    stack_case(cfg["case"], cfg["modalities"], cfg["seg"], cfg["kept"], f"{work}/stack.h5", StackParams(**cfg["stack"]))
elif job == "patches":
    n = sample_case(f"{work}/stack.h5", f"{work}/patches.h5", PatchParams(**cfg["patches"]), seed=42)
    assert n == cfg["patches"]["n_patches"], n
# VmHWM: this process's own peak (ru_maxrss would include the parent's size at fork time).
print([int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024)
"""


def peak_mb(job: str, work: Path) -> float:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CHILD, job, str(work)], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patch", type=int, nargs=3, default=[16, 160, 160], help="(Z, Y, X)")
    ap.add_argument("--n", type=int, default=8, help="patches per case")
    ap.add_argument("--threshold", type=float, default=0.95)
    args = ap.parse_args()

    import json

    import nibabel as nib
    from brats_case import real_size_case

    from medflow.preprocess.trim import kept_range, signal_per_slice
    from medflow.synthetic.brats import brats_affine, write_nifti

    images, seg, _ = real_size_case()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        affine = brats_affine(seg.shape)
        # What brats_stack reads: float32 N4 outputs (.nii.gz) and the raw segmentation.
        mods = {}
        for m, data in images.items():
            mods[m] = str(work / f"case_{m}.nii.gz")
            write_nifti(data.astype(np.float32), affine, mods[m])
        write_nifti(seg, affine, work / "case_seg.nii")
        kept = kept_range(np.any([signal_per_slice(v) for v in images.values()], axis=0))
        del images
        (work / "job.json").write_text(
            json.dumps(
                {
                    "case": "BraTS20_Training_001",
                    "modalities": mods,
                    "seg": str(work / "case_seg.nii"),
                    "kept": list(kept),
                    "stack": {"chunk_zyx": [16, 64, 64], "compression": "gzip", "compression_level": 4},
                    "patches": {
                        "patch_size": args.patch,
                        "n_patches": args.n,
                        "background_threshold": args.threshold,
                        "compression": "lzf",
                    },
                }
            )
        )
        imports = peak_mb("imports", work)
        stack = peak_mb("stack", work)
        patches = peak_mb("patches", work)
        size = (work / "stack.h5").stat().st_size / 2**20
        shape = nib.load(mods["t1"]).shape
    print(f"volume {shape} (X, Y, Z), kept slices {list(kept)}; stack file {size:.0f} MiB (gzip)")
    print(
        f"peak RSS: imports only {imports:.0f} MiB | brats_stack job {stack:.0f} MiB | "
        f"brats_patches job ({args.n} patches of {tuple(args.patch)}) {patches:.0f} MiB (target < 2048 MiB each)"
    )


if __name__ == "__main__":
    main()
