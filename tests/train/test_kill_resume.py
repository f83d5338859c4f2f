"""A training process killed by a signal (SIGTERM from scancel/Ctrl-C, SIGKILL from a dead node) and
started again resumes from its last finished epoch and ends as the same process left alone would:
same last (early-stopped) epoch, history, best epoch and best checkpoint.

The validation accuracy improves, then plateaus, so early stopping triggers after PATIENCE bad
epochs; the kill lands inside that streak, so the restarted process must carry the count over."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

PATIENCE = 4
EPOCHS = 30  # never reached: the run stops early
BATCHES = 4  # per epoch

SCRIPT = (
    f"EPOCHS, PATIENCE = {EPOCHS}, {PATIENCE}\n"
    + r"""
import json, os, sys, time, logging
import torch
from torch.utils.data import DataLoader, TensorDataset
from medflow.train import FitConfig, fit

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
out = sys.argv[1]
slow_after = int(os.environ.get("SLOW_AFTER_STEPS", "-1"))  # train steps at full speed, then slow
torch.set_num_threads(1)
torch.manual_seed(0)
x = torch.randn(96, 4); y = (x[:, 0] > 0).float()
data = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16, shuffle=True)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
steps = [0]

def step(m, b):
    steps[0] += 1
    if 0 <= slow_after < steps[0]:
        time.sleep(0.5)  # slow enough to be killed inside this epoch
    return torch.nn.functional.binary_cross_entropy_with_logits(m(b[0]).squeeze(1), b[1])

def evaluate(m, val):  # accuracy on 32 held-out points: rises, then plateaus
    return {"acc": float(((m(val[0]).squeeze(1) > 0).float() == val[1]).float().mean())}

res = fit(model, opt, data, (x[64:], y[64:]), train_step=step, evaluate=evaluate,
          cfg=FitConfig(epochs=EPOCHS, monitor="val_acc", mode="max", patience=PATIENCE, seed=1),
          device=torch.device("cpu"), checkpoint_path=out + "/model.pt")
json.dump({"history": res.history, "best_epoch": res.best_epoch, "best_score": res.best_score,
           "stopped_early": res.stopped_early, "steps": steps[0]}, open(out + "/result.json", "w"))
"""
)


def _start(out: Path, slow_after_steps: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    env.pop("SLOW_AFTER_STEPS", None)
    if slow_after_steps is not None:
        env["SLOW_AFTER_STEPS"] = str(slow_after_steps)
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(out)], env=env, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, out: Path) -> dict:
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    return {
        **json.loads((out / "result.json").read_text()),
        "log": err,
        "ckpt": torch.load(out / "model.pt", weights_only=True),
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    full = _finish(_start(out), out)
    stop = len(full["history"])
    # the premise: an improving, then plateauing score that stops the run early
    assert full["stopped_early"] and stop < EPOCHS and full["best_epoch"] == stop - PATIENCE >= 3
    return full


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_training_resumes_and_stops_where_an_uninterrupted_run_stops(tmp_path, sig, uninterrupted):
    full = uninterrupted
    stop = len(full["history"])
    kill_after = full["best_epoch"] + 1  # one bad epoch before the kill, PATIENCE - 1 after it
    resume = tmp_path / "model.pt.resume"
    proc = _start(tmp_path, slow_after_steps=kill_after * BATCHES)  # fast up to the kill, then 2 s an epoch
    deadline = time.time() + 120
    while time.time() < deadline:
        if resume.exists() and torch.load(resume, weights_only=True)["epoch"] >= kill_after:
            break
        time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail(f"no resume file after {kill_after} epochs")
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode != 0 and not (tmp_path / "result.json").exists()
    done_before = torch.load(resume, weights_only=True)["epoch"]
    assert kill_after <= done_before < stop, "the kill must land inside the bad-epoch streak"

    resumed = _finish(_start(tmp_path), tmp_path)
    assert f"resuming from {resume} after epoch {done_before}" in resumed["log"]
    assert resumed["steps"] == (stop - done_before) * BATCHES, "only the epochs after the kill are trained"
    for key in ("history", "best_epoch", "best_score", "stopped_early"):
        assert resumed[key] == full[key], key
    ckpt, full_ckpt = resumed["ckpt"], full["ckpt"]
    assert (
        (ckpt["epoch"], ckpt["score"])
        == (full_ckpt["epoch"], full_ckpt["score"])
        == (full["best_epoch"], full["best_score"])
    )
    for k, v in full_ckpt["state_dict"].items():
        assert torch.equal(ckpt["state_dict"][k], v), k
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "result.json"]
