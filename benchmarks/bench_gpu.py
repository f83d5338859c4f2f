"""`make bench-gpu`: every GPU path of the workflow in one run, printed as one table, written as JSON.

Sizes from config/brats2020.yaml, mrnet.yaml, rsna.yaml, oct.yaml (random weights: ImageNet files are
not on a lent machine, and the cost is the same). Sections: 3D U-Net training (patches/s) fp32 vs bf16,
channels-last vs not, in memory vs streamed from a patch HDF5 through ``PatchDataset`` + ``make_loaders``;
sliding-window inference of one real-size stacked case, medflow's ``sliding_window`` vs MONAI's
``sliding_window_inference`` (same model, window, overlap, Gaussian blending, batch, bf16; better of two
runs); MRNet training (slices/s), one exam per step (the tutorial's loop) vs packed, in memory vs the real
``exam_loader`` from .npy files with augmentation; BraTS grade, RSNA and OCT training (images/s), fp32 vs bf16.

Each training figure is one epoch of ``medflow.train.fit`` itself (not a copy of its loop) with the
pipeline's model, optimiser and ``train_step`` (the U-Net's from ``make_steps``; the others restated from
their ``train()``, where they are closures); a clock around ``train_step`` starts after the warm-up steps
and stops when ``fit`` calls ``evaluate``. Every figure is a ratio against a baseline row of the same run.
Peak memory per row: ``torch.cuda.max_memory_allocated`` (CPU: the process's peak RSS, or "n/a").

    python benchmarks/bench_gpu.py            # needs a CUDA GPU: without one, one line and exit code 2
    python benchmarks/bench_gpu.py --smoke    # the same code on the CPU at tiny sizes, under a minute
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time
from itertools import count
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from bench_mrnet import make_exams
from bench_unet3d import write_patches
from torch.nn import functional as F
from torch.utils.data import DataLoader

import medflow  # noqa: F401  (sets OMP_WAIT_POLICY before the work starts, as in the workflow's jobs)
from medflow import io
from medflow.grade.model import build_resnet18
from medflow.grade.train import class_weights
from medflow.ingest.brats import MODALITIES
from medflow.ingest.mrnet import npy_path
from medflow.mrnet.augment import AugmentConfig, ExamAugmentation
from medflow.mrnet.data import PackedBatchSampler, collate_packed, exam_loader
from medflow.mrnet.model import MRNet
from medflow.oct.model import build_vgg16
from medflow.preprocess.stack import to_zyx
from medflow.preprocess.trim import kept_range, signal_per_slice
from medflow.rsna.model import TwoInputNet, normalise
from medflow.rsna.preprocess import age_bin_names
from medflow.rsna.train import Augment, TrainConfig, augment
from medflow.segmentation.data import PatchDataset
from medflow.segmentation.model import make_model
from medflow.segmentation.predict import sliding_window
from medflow.segmentation.train import UNetParams, make_steps
from medflow.train import FitConfig, autocast, fit, make_loaders, to_device

ROOT = Path(__file__).resolve().parents[1]


def settings(smoke: bool) -> dict:
    """Sizes of every section: the real-data configs, or tiny ones for the CPU smoke run."""
    cfg = {
        n: yaml.safe_load((ROOT / "config" / f"{n}.yaml").read_text()) for n in ("brats2020", "mrnet", "rsna", "oct")
    }
    brats, mrnet = cfg["brats2020"]["brats"], cfg["mrnet"]["mrnet"]["train"]
    rsna, oct_ = cfg["rsna"]["rsna"], cfg["oct"]["oct"]["train"]
    s = {
        "warmup": 3,
        "steps": 20,
        "unet": UNetParams(**brats["segmentation"]["train"]),
        "patch": tuple(brats["patches"]["patch_size"]),
        "sw": brats["segmentation"]["evaluate"],
        "mrnet": {**mrnet, "size": mrnet["model"]["image_size"], "slices": (17, 61), "exams": 80},
        "grade": {**brats["grade"]["train"], "size": brats["grade"]["slices"]["size"]},
        "rsna": {**rsna["train"], "size": rsna["preprocess"]["size"], "age_bins": rsna["preprocess"]["age_bins"]},
        "oct": {**oct_, "size": oct_["image_size"]},
    }
    if smoke:
        s.update(warmup=1, steps=1, patch=(8, 32, 32))
        s["unet"] = UNetParams(**{**brats["segmentation"]["train"], "depth": 2, "base_filters": 4})
        s["mrnet"].update(size=64, slices=(3, 5), exams=8, batch_slices=16)
        s["grade"].update(size=32, batch_size=4)
        s["rsna"].update(size=32, batch_size=4)
        s["oct"].update(size=32, batch_size=2, head="classifier", hidden=16)  # checkpoints of 60 MB, not 540 MB
    return s


class Table:
    """Rows {section, name, value, unit, baseline, ratio, peak_mib}: ``ratio`` is the speed relative to the
    ``baseline`` row of the same section (> 1: faster, whatever the unit); a row without one is a baseline."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, section, name, value, peak, unit, baseline=None, lower_is_better=False):
        base = value if baseline is None else self.value(section, baseline)
        ratio = base / value if lower_is_better else value / base
        row = {"section": section, "name": name, "value": value, "unit": unit, "baseline": baseline or name}
        self.rows.append({**row, "ratio": ratio, "peak_mib": peak})
        print(f"  {section}: {name}: {value:.3f} {unit} ({ratio:.2f}x)", flush=True)

    def value(self, section, name) -> float:
        return next(r["value"] for r in self.rows if (r["section"], r["name"]) == (section, name))

    def print(self) -> None:
        ws, wn = (max(len(r[k]) for r in self.rows) for k in ("section", "name"))
        print(f"{'section':{ws}s} {'measurement':{wn}s} {'value':>10s} {'unit':10s} {'ratio':>6s} peak MiB  vs")
        for r in self.rows:
            peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            vs = "(baseline)" if r["baseline"] == r["name"] else r["baseline"]
            line = f"{r['section']:{ws}s} {r['name']:{wn}s} {r['value']:10.3f} {r['unit']:10s} {r['ratio']:5.2f}x"
            print(f"{line} {peak:>8s}  {vs}")


@contextlib.contextmanager
def peak_memory(device):
    """Yields a dict whose ``mib`` is, after the block, its CUDA allocator peak or the process's peak RSS
    (None where Linux refuses to reset it: writing 5 to clear_refs resets VmHWM)."""
    out: dict = {"mib": None}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            device = None
    yield out
    if device is not None and device.type == "cuda":
        out["mib"] = torch.cuda.max_memory_allocated() / 2**20
    elif device is not None:
        out["mib"] = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM")) / 1024


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Clock:
    """Wraps a ``train_step`` for ``fit``: starts after ``warmup`` steps, stops when ``fit`` calls ``evaluate``."""

    def __init__(self, train_step, device, warmup: int):
        self.inner, self.device, self.warmup = train_step, device, warmup
        self.calls, self.items, self.start, self.seconds = 0, 0, None, None
        self.steps = {"train_step": self.train_step, "evaluate": self.evaluate}  # fit's keyword arguments

    def train_step(self, model, batch):
        if self.calls == self.warmup:
            sync(self.device)  # the warm-up steps' work is done: count from here
            self.start = time.perf_counter()
        if self.calls >= self.warmup:  # slices of packed MRNet batches, images or patches otherwise
            self.items += (batch["slices"] if isinstance(batch, dict) else batch[0]).shape[0]
        self.calls += 1
        return self.inner(model, batch)

    def evaluate(self, model, loader):
        sync(self.device)
        if self.start is None:
            raise RuntimeError(f"{self.calls} steps are no more than the {self.warmup} warm-up steps")
        self.seconds = time.perf_counter() - self.start
        return {"clock": 0.0}


_row = count()


def fit_rate(model, optimizer, batches, train_step, *, device, bf16, warmup, tmp) -> tuple[float, float | None]:
    """(items/s, peak MiB) of one ``fit`` epoch over ``batches`` (a list or a DataLoader)."""
    clock, work = Clock(train_step, device, warmup), Path(tmp) / f"fit{next(_row)}"
    cfg, steps = FitConfig(epochs=1, monitor="val_clock", bf16=bf16), clock.steps
    with peak_memory(device) as peak:
        fit(model, optimizer, batches, [], **steps, cfg=cfg, device=device, checkpoint_path=work / "best.pt")
    shutil.rmtree(work, ignore_errors=True)  # OCT's VGG16 checkpoints are 540 MB
    return clock.items / clock.seconds, peak["mib"]


def bench_unet(t: Table, s: dict, device, tmp: Path, threads: int, smoke: bool) -> None:
    p, sec = s["unet"], "U-Net training"
    bs, n = p.batch_size, p.batch_size * (s["warmup"] + s["steps"])
    write_patches(tmp / "patches.h5", n, s["patch"])
    ds = PatchDataset([tmp / "patches.h5"])
    memory = [to_device(b, device) for b in DataLoader(ds, batch_size=bs)]
    train_step, _ = make_steps(p)

    def run(channels_last, bf16, batches):
        torch.manual_seed(0)
        model = make_model(p, channels_last=channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=p.learning_rate)  # as medflow.segmentation.train
        return fit_rate(model, opt, batches, train_step, device=device, bf16=bf16, warmup=s["warmup"], tmp=tmp)

    base, rule = "in memory, fp32, contiguous", "in memory, bf16, channels-last"
    t.add(sec, base, *run(False, False, memory), "patches/s")
    t.add(sec, "in memory, fp32, channels-last", *run(True, False, memory), "patches/s", base)
    t.add(sec, "in memory, bf16, contiguous", *run(False, True, memory), "patches/s", base)
    t.add(sec, rule, *run(True, True, memory), "patches/s", base)
    loader = make_loaders(ds, ds, batch_size=bs, device=device, threads=threads, drop_lone=False)[0]
    name = f"patch HDF5, DataLoader ({loader.num_workers} workers), bf16, channels-last"
    t.add(sec, name, *run(True, True, loader), "patches/s", rule)
    del loader  # its persistent workers
    ds.close()


def stacked_case(smoke: bool) -> np.ndarray:
    """A synthetic case stacked and trimmed as brats_stack does: float32 (4, Z, Y, X)."""
    if smoke:
        from medflow.synthetic.brats import make_case

        images, _ = make_case(np.random.default_rng(0), "HGG", (48, 48, 24), blank_slices=(1, 2))
    else:
        from brats_case import real_size_case

        images, _, _ = real_size_case()
    start, stop = kept_range(np.any([signal_per_slice(v) for v in images.values()], axis=0))
    return np.stack([to_zyx(images[m])[start:stop] for m in MODALITIES]).astype(np.float32)


def bench_sliding_window(t: Table, s: dict, device, tmp: Path, threads: int, smoke: bool) -> None:
    from monai.inferers import sliding_window_inference

    image, sw, window = stacked_case(smoke), s["sw"], s["patch"]
    torch.manual_seed(0)
    model = make_model(s["unet"]).to(device).eval()  # channels-last, as evaluation loads it
    kw = {"overlap": sw["overlap"], "batch_size": sw["batch_size"]}

    def medflow_sw():
        return sliding_window(model, image, window, blend=sw["blend"], device=device, bf16=True, **kw)

    def monai_sw():  # numpy in, numpy out, as medflow's
        x = torch.from_numpy(image)[None].to(device)
        with torch.inference_mode(), autocast(device, True):
            out = sliding_window_inference(
                x, window, kw["batch_size"], model, overlap=kw["overlap"], mode=sw["blend"], sigma_scale=0.125
            )
        return out[0].float().cpu().numpy()

    sec, base = f"sliding window {'x'.join(map(str, image.shape))}", "MONAI sliding_window_inference"
    for name, fn in ((base, monai_sw), ("medflow sliding_window", medflow_sw)):
        with peak_memory(device) as peak:
            seconds = []
            for _ in range(2):  # the first also tunes cuDNN for the window shape
                start = time.perf_counter()
                fn()
                sync(device)
                seconds.append(time.perf_counter() - start)
        t.add(sec, name, min(seconds), peak["mib"], "s/case", None if fn is monai_sw else base, True)


def bench_mrnet(t: Table, s: dict, device, tmp: Path, threads: int, smoke: bool) -> None:
    m, sec = s["mrnet"], "MRNet training"
    exams = make_exams(m["exams"], *m["slices"], m["size"])
    ids = [f"{i:04d}" for i in range(len(exams))]
    npy_path(tmp / "mrnet", "train", "axial", "").parent.mkdir(parents=True)
    for e, (x, _) in zip(ids, exams):  # the raw MRNet layout, read by the real exam_loader
        np.save(npy_path(tmp / "mrnet", "train", "axial", e), x.numpy())
    counts = [len(x) for x, _ in exams]
    table = pd.DataFrame({"id": ids, "split": "train", "label": [int(y) for _, y in exams], "slices": counts})
    pw = torch.tensor(3.0, device=device)

    def train_step(model, batch):  # medflow.mrnet.train's
        logits = model(batch["slices"], batch["counts"]).float()
        return F.binary_cross_entropy_with_logits(logits, batch["label"], pos_weight=pw)

    def run(batches):
        torch.manual_seed(0)
        model = MRNet("none")
        opt = torch.optim.Adam(model.parameters(), lr=float(m["lr"]), weight_decay=float(m["weight_decay"]), fused=True)
        return fit_rate(model, opt, batches, train_step, device=device, bf16=True, warmup=s["warmup"], tmp=tmp)

    base, packed = "one exam per step, in memory", f"packed <= {m['batch_slices']} slices/step, in memory"
    t.add(sec, base, *run([to_device(collate_packed([e]), device) for e in exams]), "slices/s")
    sampler = PackedBatchSampler(counts, m["batch_slices"])
    t.add(
        sec, packed, *run([to_device(collate_packed([exams[i] for i in b]), device) for b in sampler]), "slices/s", base
    )
    aug = ExamAugmentation.from_params(AugmentConfig(**m["augment"]))
    loader = exam_loader(
        tmp / "mrnet", "axial", table, size=m["size"], batch_slices=m["batch_slices"], shuffle=True,
        device=device, threads=threads, augment=aug,
    )  # fmt: skip
    name = f"packed, .npy files, DataLoader ({loader.num_workers} workers) + augmentation"
    t.add(sec, name, *run(loader), "slices/s", packed)
    del loader


def bench_2d(t: Table, s: dict, device, tmp: Path, threads: int, smoke: bool) -> None:
    """BraTS grade, RSNA and OCT: their model builders, optimisers and losses on in-memory batches.
    Each builder gives (model, optimiser of a model, batch, train_step)."""
    g, r, o = s["grade"], s["rsna"], s["oct"]
    gen = torch.Generator().manual_seed(0)

    def grade():
        b, n = g["batch_size"], g["size"]
        y = torch.randint(0, 2, (b,), generator=gen)
        weight = class_weights(y.numpy(), g["class_weights"])
        weight = weight.to(device) if weight is not None else None
        model = build_resnet18(len(MODALITIES), 2, weights="none", conv1_init=g["conv1_init"])
        lr, wd = float(g["lr"]), float(g["weight_decay"])
        batch = (torch.randn(b, len(MODALITIES), n, n, generator=gen), y, torch.arange(b))
        step = lambda m, bt: F.cross_entropy(m(bt[0]), bt[1], weight=weight)  # noqa: E731
        return model, lambda m: torch.optim.Adam(m.parameters(), lr=lr, weight_decay=wd), batch, step

    def rsna():
        keys = {f.name for f in dataclasses.fields(TrainConfig)}
        kw = {k: v for k, v in r.items() if k in keys}
        cfg = TrainConfig(**{**kw, "weights": "none", "augment": Augment(**r["augment"])})
        n_meta = len(age_bin_names(r["age_bins"])) + 4  # + sex_M, sex_F, view_AP, view_PA
        b, n, a = r["batch_size"], r["size"], cfg.augment
        model = TwoInputNet(n_meta, cfg.model_config(), use_meta=True)
        image = torch.randint(0, 256, (b, n, n), dtype=torch.uint8, generator=gen)
        meta, y = (torch.rand(b, n_meta + 1, generator=gen) < 0.3).float().split([n_meta, 1], dim=1)
        batch = (image, meta, y[:, 0])

        def step(m, bt):  # medflow.rsna.train's: augmentation on the device, inside the step
            x = augment(normalise(bt[0]), float(a.translate), float(a.rotate_deg), float(a.scale), bool(a.hflip))
            return F.binary_cross_entropy_with_logits(m(x, bt[1]).float(), bt[2])

        return model, lambda m: torch.optim.AdamW(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay), batch, step

    def oct():
        model = build_vgg16(4, weights="none", head=o["head"], hidden=o["hidden"], dropout=o["dropout"],
                            head_batchnorm=o["head_batchnorm"])  # fmt: skip
        b, n = o["batch_size"], o["size"]
        batch = (torch.randn(b, 3, n, n, generator=gen), torch.randint(0, 4, (b,), generator=gen))
        opt = lambda m: torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=float(o["lr"]))  # noqa: E731
        return model, opt, batch, lambda m, bt: F.nll_loss(m(bt[0]), bt[1])

    for sec, build, size in (("BraTS grade", grade, g["size"]), ("RSNA", rsna, r["size"]), ("OCT", oct, o["size"])):
        torch.manual_seed(0)
        model, make_opt, batch, step = build()  # built once: VGG16's 100 M fc6 weights take seconds to draw
        batches = [to_device(batch, device)] * (s["warmup"] + s["steps"])  # the same tensors every step
        base = f"{size} px, batch {len(batch[0])}, fp32"
        for bf16 in (False, True):
            m = copy.deepcopy(model)  # both rows start from the same weights
            rate, peak = fit_rate(m, make_opt(m), batches, step, device=device, bf16=bf16, warmup=s["warmup"], tmp=tmp)
            name, ref = (base.replace("fp32", "bf16"), base) if bf16 else (base, None)
            t.add(f"{sec} training", name, rate, peak, "images/s", ref)
        del model, m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes (the test's and `make bench-gpu SMOKE=1`)")
    ap.add_argument("--out", type=Path, help="JSON (default results/benchmarks/bench_gpu.json, _smoke with --smoke)")
    ap.add_argument("--threads", type=int, help="loader workers + 1 on CUDA (default min(8, cores)); CPU: torch's")
    a = ap.parse_args()
    if not a.smoke and not torch.cuda.is_available():
        print(
            f"bench-gpu: no CUDA GPU visible to torch {torch.__version__} (CUDA build {torch.version.cuda}); "
            "`make bench-gpu SMOKE=1` runs the same code on the CPU at tiny sizes",
            file=sys.stderr,
        )
        sys.exit(2)
    start = time.perf_counter()
    device = torch.device("cpu" if a.smoke else "cuda")
    threads = a.threads or (2 if a.smoke else min(8, os.cpu_count() or 1))
    if a.smoke:
        torch.set_num_threads(threads)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (smoke sizes)"
    s = settings(a.smoke)
    print(f"bench-gpu on {name}, torch {torch.__version__}, {s['warmup']} warm-up + {s['steps']} timed steps per row")
    t = Table()
    with tempfile.TemporaryDirectory() as tmp:
        tmp, took = Path(tmp), {}
        for bench in (bench_unet, bench_sliding_window, bench_mrnet, bench_2d):
            t0 = time.perf_counter()
            bench(t, s, device, tmp, threads, a.smoke)
            took[bench.__name__] = round(time.perf_counter() - t0, 1)
            print(f"  ({bench.__name__}: {took[bench.__name__]:.0f} s)", flush=True)
    seconds = time.perf_counter() - start
    t.print()
    out = a.out or ROOT / "results" / "benchmarks" / ("bench_gpu_smoke.json" if a.smoke else "bench_gpu.json")
    # The loop's autocast is a no-op on the CPU: the smoke run's bf16 rows run in fp32.
    bf16 = "cpu: fp32" if a.smoke else f"native: {torch.cuda.is_bf16_supported(including_emulation=False)}"
    meta = {"device": name, "smoke": a.smoke, "torch": torch.__version__, "bf16": bf16, "threads": threads}
    meta["seconds"] = seconds
    io.write_json(
        out, {**meta, "warmup_steps": s["warmup"], "timed_steps": s["steps"], "section_seconds": took, "rows": t.rows}
    )
    print(f"{len(t.rows)} rows in {seconds:.0f} s -> {out}" + ("" if seconds <= 480 else " (over the 8-minute budget)"))
    if not all(math.isfinite(r["ratio"]) and r["value"] > 0 for r in t.rows):
        sys.exit("bench-gpu: a row has no finite figure")


if __name__ == "__main__":
    main()
