"""MRNet training throughput: packed batches of exams vs the tutorial's one exam per step.

Both loops run the same model, optimiser and loss on the same in-memory exams (random uint8 slices,
slice counts drawn per exam), in the same process, alternating A, B, A, B... so load from other
processes hits both alike; the best round of each is reported, with the ratio. One step = forward,
weighted BCE, backward, Adam step. Data loading is left out: it is the same for both.

    python benchmarks/bench_mrnet.py                       # demo size: 64 px, 6-10 slices per exam
    python benchmarks/bench_mrnet.py --size 256 --slices 20 40 --exams 12 --batch-slices 256
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.nn import functional as F

import medflow  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads, as in the workflow's jobs)
from medflow.mrnet.data import PackedBatchSampler, collate_packed  # noqa: E402
from medflow.mrnet.model import MRNet  # noqa: E402


def make_exams(n: int, lo: int, hi: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [
        (torch.randint(0, 256, (c, size, size), dtype=torch.uint8, generator=g), float(i % 4 == 0))
        for i, c in enumerate(counts)
    ]


def one_exam_steps(model, opt, exams, device):
    for x, y in exams:
        x, y = x.to(device), torch.tensor([y], device=device)
        opt.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(
            model(x, [len(x)]), y, pos_weight=torch.tensor(3.0, device=device)
        ).backward()
        opt.step()


def packed_steps(model, opt, batches, device):
    for b in batches:
        opt.zero_grad(set_to_none=True)
        logits = model(b["slices"].to(device), b["counts"])
        F.binary_cross_entropy_with_logits(
            logits, b["label"].to(device), pos_weight=torch.tensor(3.0, device=device)
        ).backward()
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64, help="in-plane size (demo 64; real data 256)")
    ap.add_argument("--slices", type=int, nargs=2, default=[6, 10], metavar=("MIN", "MAX"))
    ap.add_argument("--exams", type=int, default=48)
    ap.add_argument("--batch-slices", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.manual_seed(0)
    model = MRNet().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, fused=True)  # as in medflow.mrnet.train
    exams = make_exams(a.exams, a.slices[0], a.slices[1], a.size)
    n_slices = sum(len(x) for x, _ in exams)
    batches = [
        collate_packed([exams[i] for i in idx])
        for idx in PackedBatchSampler([len(x) for x, _ in exams], a.batch_slices)
    ]

    def timed(fn, *args):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn(model, opt, *args, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n_slices / (time.perf_counter() - t)

    timed(one_exam_steps, exams[:4])  # warm-up: allocator, kernels
    timed(packed_steps, batches[:2])
    rates = {"one exam per step": [], f"packed (<= {a.batch_slices} slices/step)": []}
    for _ in range(a.rounds):
        rates["one exam per step"].append(timed(one_exam_steps, exams))
        rates[f"packed (<= {a.batch_slices} slices/step)"].append(timed(packed_steps, batches))

    print(
        f"MRNet training throughput on {device} ({a.threads} threads, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}): {a.exams} exams, {n_slices} slices "
        f"({a.slices[0]}-{a.slices[1]} per exam), {a.size}x{a.size} px, {len(batches)} packed steps, "
        f"best of {a.rounds} rounds"
    )
    for name, r in rates.items():
        print(f"  {name:32s} {max(r):8.1f} slices/s   (median {statistics.median(r):.1f})")
    base, packed = (max(r) for r in rates.values())
    print(f"  packed / one exam: {packed / base:.2f}x")


if __name__ == "__main__":
    main()
