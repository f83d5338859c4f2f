"""Sliding-window inference of one real-size BraTS case: medflow's ``sliding_window`` against MONAI's
``sliding_window_inference`` on the same model, volume, window, overlap and Gaussian blending.

One synthetic 240 x 240 x 155 case (benchmarks/brats_case.py) is stacked as ``brats_stack`` does it
(slices without signal trimmed); its image, standardised once per channel and slice, is the input of
every timing below, all measured in this one process with ``--threads`` torch threads:

- MONAI 1.6.1 ``sliding_window_inference`` (``mode="gaussian"``, its default ``sigma_scale`` 0.125, as
  medflow's sigma of 1/8 window), ``sw_batch_size`` = ``--batch`` (the baseline of the ratios);
- MONAI on medflow's batch-norm-folded copy of the model (``fold_batch_norm``, which medflow's
  ``sliding_window`` runs by default), to show how much of the ratio is the folding;
- medflow without skipping (every window run), then with background windows skipped, at ``--batch``
  and at each ``--more-batches`` size;
- medflow as evaluation runs it (``predict_case``: every window standardised as a training patch).

The agreement is the Dice of the label maps (stored labels 1-3 at threshold 0.5, mean over the labels
present) on the brain (voxels with signal in some modality), also on the leading part of the volume where
both grids are the same windows (MONAI steps by int(window x (1 - overlap)) and moves its last window back
to the border; medflow spreads its windows evenly). Then one evaluation job
(``medflow.segmentation.evaluate.evaluate`` on this case as the only test case, config
``brats.segmentation.evaluate``) runs in a fresh process; its peak resident memory (VmHWM) is printed
(target < 4 GB).

The model: the demo's trained U-Net (``--checkpoint``, default results/brats/segmentation/train/model.pt)
when that file exists, else a U-Net of config ``brats.segmentation.train``'s architecture fitted for
``--fit-steps`` steps to patches of this very case (so that its label maps have tumour borders for the
agreement to test; random weights label nearly every voxel alike; the timings do not depend on the
weights). Channels-last weights, as evaluation loads them.

Every timing is repeated ``--repeats`` times, the implementations taking turns, and the fastest of
each is reported (wall seconds, and the process's CPU seconds beside them): on a shared machine the
minimum is the least disturbed run.

Run by hand, never in CI (about 6 minutes on an idle 2-core machine, with the default 3 turns):
    PYTHONPATH=src python benchmarks/bench_sliding_window.py [--threads 2] [--batch 4] [--more-batches 2 8]
    PYTHONPATH=src python benchmarks/bench_sliding_window.py --shape 120 120 80 --repeats 1  # a quick try
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

import medflow  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads, as in the workflow's jobs)
from medflow.preprocess.patches import one_hot, standardise
from medflow.segmentation import regions
from medflow.segmentation.loss import soft_dice_loss
from medflow.segmentation.model import load_model, make_model
from medflow.segmentation.predict import PredictParams, predict_case
from medflow.segmentation.sliding_window import fold_batch_norm, sliding_window, window_starts
from medflow.segmentation.train import UNetParams

ROOT = Path(__file__).resolve().parents[1]
CASE = "BraTS20_Training_001"
THRESHOLD = 0.5

# One evaluation job as the rule runs it (its own process, so VmHWM is that job's peak alone).
CHILD = r"""
import json, sys, time
from medflow.evaluation.headline import Bootstrap
from medflow.segmentation.evaluate import EvalParams, evaluate
from medflow.train import Job
work = sys.argv[1]
cfg = json.load(open(f"{work}/eval.json"))
start = time.perf_counter()
evaluate(
    {"checkpoint": cfg["checkpoint"], "stacks": [cfg["stack"]], "split": f"{work}/split.csv"},
    {k: f"{work}/eval/{k}" for k in ("metrics", "per_case", "predictions", "overlays")},
    EvalParams(**cfg["params"], bootstrap=Bootstrap(bootstrap_samples=200)),
    Job(threads=cfg["threads"], track=False),
)
seconds = time.perf_counter() - start
peak = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")][0] / 1024
print(json.dumps({"seconds": seconds, "peak_mib": peak}))
"""


def stacked_case(work: Path, shape_xyz) -> Path:
    """The stacked HDF5 ``<work>/<CASE>.h5`` of one synthetic case, written by ``stack_case``."""
    from brats_case import REAL_SHAPE_XYZ, real_size_case

    from medflow.preprocess.stack import StackParams, stack_case
    from medflow.preprocess.trim import kept_range, signal_per_slice
    from medflow.synthetic.brats import brats_affine, make_case, write_nifti

    if tuple(shape_xyz) == REAL_SHAPE_XYZ:
        images, seg, _ = real_size_case()
    else:  # smaller, for trying the script out
        images, seg = make_case(np.random.default_rng([42, 1]), "HGG", tuple(shape_xyz), blank_slices=(5, 12))
    affine = brats_affine(seg.shape)
    mods = {}
    for m, data in images.items():  # float32, as the N4 stage writes them
        mods[m] = work / f"{m}.nii.gz"
        write_nifti(data.astype(np.float32), affine, mods[m])
    write_nifti(seg, affine, work / "seg.nii.gz")
    kept = kept_range(np.any([signal_per_slice(v) for v in images.values()], axis=0))
    out = work / f"{CASE}.h5"
    stack_case(CASE, mods, work / "seg.nii.gz", kept, out, StackParams(chunk_zyx=[16, 64, 64]))
    for p in (*mods.values(), work / "seg.nii.gz"):
        p.unlink()
    return out


def fit_to_case(model: torch.nn.Module, image: np.ndarray, label: np.ndarray, window, steps: int) -> None:
    """``steps`` Adam steps of soft Dice on batches of 4 patches of ``image`` (4, Z, Y, X) / ``label``
    (Z, Y, X), standardised as the patch sampler's; half the patches centred on tumour, half anywhere."""
    rng = np.random.default_rng(0)
    tumour = np.argwhere(label > 0)
    high = np.array(image.shape[1:]) - window
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        corners = []
        for i in range(4):
            centre = tumour[rng.integers(len(tumour))] if i % 2 == 0 else rng.integers(0, image.shape[1:])
            corners.append(np.clip(centre - np.array(window) // 2, 0, high))
        boxes = [tuple(slice(c, c + w) for c, w in zip(corner, window)) for corner in corners]
        x = torch.from_numpy(standardise(np.stack([image[(slice(None), *b)] for b in boxes])))
        y = torch.from_numpy(np.stack([one_hot(label[b]) for b in boxes]).astype(np.float32))
        opt.zero_grad(set_to_none=True)
        loss = soft_dice_loss(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    print(
        f"fitted {steps} steps to this case: last soft Dice loss {loss.item():.3f} "
        f"({time.perf_counter() - start:.0f} s)"
    )


def unet(checkpoint: Path, work: Path, stack, window, fit_steps: int) -> tuple[torch.nn.Module, Path, str]:
    """(channels-last model in eval mode, a checkpoint file of it, which model it is)."""
    if checkpoint.exists():
        return load_model(checkpoint), checkpoint, f"trained U-Net {checkpoint}"
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())["brats"]["segmentation"]["train"]
    arch = {k: cfg[k] for k in ("depth", "base_filters", "batch_norm", "upsampling")}
    torch.manual_seed(0)
    model = make_model(UNetParams(**arch))
    fit_to_case(model, stack.image, stack.label, window, fit_steps)
    path = work / "fitted.pt"
    meta = {"model": model.config, "patch_size": list(window), "threshold": THRESHOLD}
    torch.save({"state_dict": model.state_dict(), "epoch": 0, "meta": meta}, path)
    return model, path, f"U-Net {arch} fitted to this case ({checkpoint} not found)"


def dice_on_brain(a: np.ndarray, b: np.ndarray, brain: np.ndarray) -> float:
    """Mean over the stored labels 1-3 present in either map of the Dice of ``a == k`` and ``b == k``
    on the brain voxels; 1.0 when neither map labels any brain voxel."""
    a, b = a[brain], b[brain]
    scores = []
    for k in (1, 2, 3):
        pa, pb = a == k, b == k
        total = int(pa.sum()) + int(pb.sum())
        if total:
            scores.append(2 * int((pa & pb).sum()) / total)
    return float(np.mean(scores)) if scores else 1.0


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result) of ``fn()``."""
    cpu, start = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - start, time.process_time() - cpu, out


def evaluation_job(work: Path, stack: Path, checkpoint: Path, threads: int) -> dict:
    import pandas as pd

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())["brats"]["segmentation"]["evaluate"]
    pd.DataFrame([{"id": CASE, "split": "test", "grade": "HGG"}]).to_csv(work / "split.csv", index=False)
    job = {"checkpoint": str(checkpoint), "stack": str(stack), "threads": threads, "params": cfg}
    (work / "eval.json").write_text(json.dumps(job))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CHILD, str(work)], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the CPU)")
    ap.add_argument("--window", type=int, nargs=3, default=[16, 48, 48], help="(Z, Y, X)")
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=4, help="windows per forward pass, both implementations")
    ap.add_argument("--more-batches", type=int, nargs="*", default=[2, 8], help="further batch sizes of medflow's")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "results/brats/segmentation/train/model.pt")
    ap.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155], help="(X, Y, Z) of the synthetic case")
    ap.add_argument("--fit-steps", type=int, default=100, help="training steps of the U-Net without checkpoint")
    ap.add_argument("--repeats", type=int, default=3, help="turns of every timing; the fastest is reported")
    ap.add_argument("--no-memory", action="store_true", help="skip the evaluation job's peak memory")
    args = ap.parse_args()
    from monai import __version__ as monai_version
    from monai.inferers import sliding_window_inference

    from medflow.preprocess.stack import read_stack

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    window = tuple(args.window)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stack_path = stacked_case(work, args.shape)
        stack = read_stack(stack_path)
        model, ckpt_path, which = unet(args.checkpoint, work, stack, window, args.fit_steps)
        brain = np.any(stack.image != 0, axis=0)
        x = standardise(stack.image)  # once, whole slices: the same input for both implementations
        axes = [window_starts(s, w, args.overlap) for s, w in zip(x.shape[1:], window)]
        grid = [len(a) for a in axes]
        skipped = sum(
            not brain[tuple(slice(s, s + w) for s, w in zip(start, window))].any() for start in itertools.product(*axes)
        )
        print(
            f"case {tuple(stack.image.shape)} (C, Z, Y, X), brain {brain.mean():.0%} of voxels | {which} | "
            f"window {window}, overlap {args.overlap}, {np.prod(grid)} windows | {args.threads} threads, "
            f"MONAI {monai_version}, torch {torch.__version__}"
        )

        folded = fold_batch_norm(model)

        def monai_run(batch, volume=x, net=model):
            with torch.inference_mode():
                out = sliding_window_inference(
                    torch.from_numpy(volume)[None],
                    window,
                    batch,
                    net,
                    overlap=args.overlap,
                    mode="gaussian",
                )
            return out[0].numpy()

        def ours(batch, skip, volume=x):
            return sliding_window(
                model,
                volume,
                window,
                overlap=args.overlap,
                batch_size=batch,
                device=device,
                skip_background=skip,
                brain=brain,
            )

        params = PredictParams(overlap=args.overlap, standardise="window", batch_size=args.batch)
        runs = {  # name -> what it runs; the first is the baseline
            f"MONAI sliding_window_inference, batch {args.batch} (baseline)": lambda: monai_run(args.batch),
            f"MONAI on medflow's batch-norm-folded copy, batch {args.batch}": lambda: monai_run(args.batch, net=folded),
            f"medflow sliding_window, no skipping, batch {args.batch}": lambda: ours(args.batch, False),
            **{
                f"medflow sliding_window, skipping, batch {b}": lambda b=b: ours(b, True)
                for b in (args.batch, *args.more_batches)
            },
            "medflow predict_case as evaluation (windows standardised)": lambda: predict_case(
                model, stack.image, window, params, threshold=THRESHOLD, device=device
            ),
        }
        best: dict[str, tuple[float, float]] = {}
        outputs: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):
            for name, run in runs.items():  # taking turns, so a busy spell of the machine hits all alike
                wall, cpu, out = timed(run)
                outputs[name] = out if out.ndim == 3 else regions.probabilities_to_labels(out, THRESHOLD)
                if out.ndim == 4:
                    outputs[name + " probs"] = out
                best[name] = min(best.get(name, (np.inf, np.inf)), (wall, cpu))
        names = list(runs)
        base = best[names[0]][0]
        ref = outputs[names[0]]
        print(f"{'':60s} {'wall s':>7s} {'CPU s':>7s} {'x MONAI':>8s} {'Dice vs MONAI':>14s}")
        for name in names:
            wall, cpu = best[name]
            agree = (
                "(other input)"
                if name.startswith("medflow predict_case")
                else f"{dice_on_brain(outputs[name], ref, brain):.5f}"
            )
            print(f"{name:60s} {wall:7.1f} {cpu:7.1f} {base / wall:8.2f} {agree:>14s}")
        off, on = outputs[names[2]], outputs[names[3]]
        p_off, p_on = outputs[names[2] + " probs"], outputs[names[3] + " probs"]
        print(
            f"skipping vs not (batch {args.batch}): {skipped} of {np.prod(grid)} windows skipped; labels inside the "
            f"brain identical: {bool(np.array_equal(on[brain], off[brain]))}, probabilities there max |diff| "
            f"{np.abs(p_on - p_off)[:, brain].max():.1e}; outside the brain all background: {not on[~brain].any()} "
            f"(without skipping {int(np.count_nonzero(off[~brain]))} voxels labelled there)"
        )
        # MONAI steps by int(window x (1 - overlap)) and moves its last window back to the border; medflow
        # spreads its windows evenly. Where (size - window) is a multiple of the step the grids coincide.
        step = [max(1, int(w * (1 - args.overlap))) for w in window]
        crop = tuple(slice(0, w + (s - w) // k * k) for s, w, k in zip(x.shape[1:], window, step))
        if crop != tuple(slice(0, s) for s in x.shape[1:]):
            part = np.ascontiguousarray(x[(slice(None), *crop)])
            same = dice_on_brain(
                regions.probabilities_to_labels(ours(16, False, part), THRESHOLD),
                regions.probabilities_to_labels(monai_run(16, part), THRESHOLD),
                brain[crop],
            )
            print(
                f"on the first {[c.stop for c in crop]} voxels (Z, Y, X), where both grids are the same windows, "
                f"Dice of medflow (no skipping) vs MONAI on the brain: {same:.5f} (MONAI's own Gaussian map)"
            )
        if not args.no_memory:
            res = evaluation_job(work, stack_path, ckpt_path, args.threads)
            print(
                f"one evaluation job on this case (config brats.segmentation.evaluate): peak RSS "
                f"{res['peak_mib']:.0f} MiB (target < 4096 MiB), {res['seconds']:.1f} s"
            )


if __name__ == "__main__":
    main()
