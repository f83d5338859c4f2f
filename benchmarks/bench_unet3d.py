"""Training throughput of the 3D U-Net (patches/s), on the CPU and, when one is visible, on a GPU.

Measured in one run, so the ratios hold on a noisy shared machine:

- ``in-memory, contiguous``: training steps of the plain model on tensors already in memory (baseline);
- ``in-memory, channels-last``: the same with channels-last 3D weights, as ``brats_segmentation_train`` trains;
- ``streamed``: channels-last steps fed by ``PatchDataset`` + ``DataLoader`` (workers from
  ``--threads``) from a patch HDF5 file in the preprocessing stage's format (lzf, one patch per
  chunk): what the rule does, reading from disk included;
- on CUDA also ``streamed, bf16``: under bf16 autocast, as ``fit`` runs there;
- with ``--inference``: seconds of sliding-window inference over one real-size volume (4, 155, 240, 240).

Run by hand, never in CI:
    python benchmarks/bench_unet3d.py                        # the demo model (config/config.yaml)
    python benchmarks/bench_unet3d.py --preset tutorial      # depth 4, 32 filters, 16x160x160 patches
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader

import medflow  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads, as in the workflow's jobs)
from medflow.segmentation.data import PatchDataset
from medflow.segmentation.loss import soft_dice_loss
from medflow.segmentation.model import make_model
from medflow.segmentation.predict import sliding_window
from medflow.segmentation.train import UNetParams
from medflow.train import autocast, loader_kwargs, select_device, to_device

PRESETS = {
    # config/config.yaml's demo model on the demo's patches (brats.patches.patch_size)
    "demo": {"depth": 3, "base_filters": 4, "patch": (16, 48, 48), "batch_size": 4},
    # the tutorial's model on its 160 x 160 x 16 patches, (Z, Y, X) here
    "tutorial": {"depth": 4, "base_filters": 32, "patch": (16, 160, 160), "batch_size": 2},
}


def write_patches(path: Path, n: int, patch, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        kw = {"compression": "lzf", "shuffle": True}
        img = f.create_dataset("image", (n, 4, *patch), np.float32, chunks=(1, 4, *patch), **kw)
        lab = f.create_dataset("label", (n, 3, *patch), np.uint8, chunks=(1, 3, *patch), **kw)
        for i in range(n):
            img[i] = rng.standard_normal((4, *patch), dtype=np.float32)
            z = rng.integers(0, 4, size=patch)
            lab[i] = np.stack([z == k for k in (1, 2, 3)])


def train_rate(model, batches, device, bf16: bool, warmup: int = 1) -> float:
    """Patches per second over ``batches`` (an iterable of (image, label)), after ``warmup`` steps."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.to(device).train()
    n, start = 0, None
    for i, batch in enumerate(batches):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            n, start = 0, time.perf_counter()
        image, label = to_device(batch, device)
        opt.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            loss = soft_dice_loss(model(image), label)
        loss.backward()
        opt.step()
        n += len(image)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per measurement")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on the CPU; loader workers = threads - 1")
    ap.add_argument("--device", choices=["auto", "cpu"], default="auto")
    ap.add_argument(
        "--inference", action="store_true", help="also time sliding-window inference over a real-size volume"
    )
    ap.add_argument("--overlap", type=float, default=0.5, help="window overlap of the inference timing")
    args = ap.parse_args()
    p = PRESETS[args.preset]
    device = select_device(args.threads, prefer=args.device)
    bs, patch = p["batch_size"], p["patch"]
    params = UNetParams(depth=p["depth"], base_filters=p["base_filters"])
    print(
        f"device {device} | preset {args.preset}: depth {p['depth']}, base filters {p['base_filters']}, "
        f"patch {patch} (Z, Y, X), batch {bs}, {args.steps} timed steps, threads {args.threads}, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    )

    def model(channels_last=True):
        torch.manual_seed(0)
        return make_model(params, channels_last=channels_last)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "patches.h5"
        write_patches(path, bs * (args.steps + 1), patch)
        ds = PatchDataset([path])
        memory = [tuple(t.to(device) for t in b) for b in DataLoader(ds, batch_size=bs)]
        rows = [
            ("in-memory, contiguous (baseline)", train_rate(model(False), memory, device, bf16=False)),
            ("in-memory, channels-last", train_rate(model(), memory, device, bf16=False)),
        ]
        loader = DataLoader(ds, batch_size=bs, shuffle=True, **loader_kwargs(device, args.threads))
        rows.append(("streamed from HDF5, channels-last", train_rate(model(), loader, device, bf16=False)))
        if device.type == "cuda":
            rows.append(("streamed from HDF5, bf16", train_rate(model(), loader, device, bf16=True)))
        ds.close()
    base = rows[0][1]
    print(f"{'training':36s} {'patches/s':>10s} {'ratio':>7s}")
    for name, rate in rows:
        print(f"{name:36s} {rate:10.2f} {rate / base:7.2f}")

    if args.inference:
        m = model().to(device).eval()
        volume = np.random.default_rng(1).standard_normal((4, 155, 240, 240), dtype=np.float32)
        start = time.perf_counter()
        sliding_window(m, volume, patch, overlap=args.overlap, batch_size=bs, device=device, bf16=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        print(
            f"sliding-window inference, one 4x155x240x240 volume, overlap {args.overlap}: "
            f"{time.perf_counter() - start:.1f} s"
        )


if __name__ == "__main__":
    main()
