"""N4 on a shrunken image vs full-resolution N4 with the tutorial's settings, on a 240 x 240 x 155 volume.

Both runs in one process, same image, same threads: the ratio holds on a noisy shared machine.
Baseline (the tutorial / SimpleITK example): Otsu mask (200 bins), full resolution, 4 fitting levels of
50 iterations, convergence 0.001, 200 histogram bins. Fast: the same, with the field estimated on the
image shrunk by ``--shrink`` and reconstructed at full resolution (``medflow.preprocess.n4``).
Prints wall and CPU seconds, the speed-up and the correlation of the two log bias fields inside the
brain mask (target: >= 8x and >= 0.95), and each field's correlation with the true synthetic field.

Run by hand, never in CI (the baseline takes minutes):
    PYTHONPATH=src python benchmarks/bench_n4.py [--modality t1] [--shrink 4] [--threads 1]
    PYTHONPATH=src python benchmarks/bench_n4.py --image /data/BraTS20_Training_001_t1.nii  # a real volume
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from medflow.ingest.brats import MODALITIES
from medflow.preprocess.n4 import N4Params, estimate_log_field

TUTORIAL = N4Params(shrink_factor=1, iterations=[50, 50, 50, 50], convergence_threshold=0.001, histogram_bins=200)


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def corr(a, b, mask):
    return float(np.corrcoef(a[mask], b[mask])[0, 1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modality", default="t1", choices=MODALITIES)
    ap.add_argument("--image", help="a real NIfTI modality instead of the synthetic case")
    ap.add_argument("--shrink", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    truth = None
    if args.image:
        import nibabel as nib

        img = nib.load(args.image)
        data, spacing = np.asarray(img.dataobj, dtype=np.float32), img.header.get_zooms()[:3]
    else:
        from brats_case import real_size_case

        images, _, bias = real_size_case()
        data, spacing, truth = images[args.modality].astype(np.float32), (1.0, 1.0, 1.0), np.log(bias[args.modality])
    brain = data > 0
    fast_params = N4Params(**{**TUTORIAL.__dict__, "shrink_factor": args.shrink})
    print(f"volume {data.shape} (X, Y, Z), brain mask {brain.sum()} voxels, threads {args.threads}")

    fast, fast_wall, fast_cpu = timed(lambda: estimate_log_field(data, spacing, fast_params, args.threads))
    print(f"shrink {args.shrink}: {fast_wall:7.1f} s wall {fast_cpu:7.1f} s CPU")
    full, full_wall, full_cpu = timed(lambda: estimate_log_field(data, spacing, TUTORIAL, args.threads))
    print(f"tutorial (full resolution): {full_wall:7.1f} s wall {full_cpu:7.1f} s CPU")

    r = corr(fast, full, brain)
    print(f"N4 speed-up: {full_wall / fast_wall:.1f}x wall, {full_cpu / fast_cpu:.1f}x CPU (target >= 8x)")
    print(
        f"log bias field correlation in the brain mask, shrink {args.shrink} vs full resolution: "
        f"{r:.4f} (target >= 0.95)"
    )
    if truth is not None:
        print(
            f"correlation with the true synthetic log field: shrink {args.shrink} {corr(fast, truth, brain):.4f}, "
            f"full resolution {corr(full, truth, brain):.4f}"
        )


if __name__ == "__main__":
    main()
