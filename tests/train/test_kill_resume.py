"""A training process killed by a signal (SIGTERM from scancel/Ctrl-C, SIGKILL from a dead node) and
started again resumes from its last finished epoch and ends with the same outputs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = r"""
import json, sys, time, logging
import torch
from torch.utils.data import DataLoader, TensorDataset
from medflow.train import FitConfig, fit

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
out = sys.argv[1]
torch.manual_seed(0)
x = torch.randn(64, 4); y = (x[:, 0] > 0).float()
data = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)

def step(m, b):
    time.sleep(0.15)  # slow enough to be killed mid-run
    return torch.nn.functional.binary_cross_entropy_with_logits(m(b[0]).squeeze(1), b[1])

def evaluate(m, loader):
    return {"loss": float(sum(step(m, b) for b in loader) / len(loader))}

res = fit(model, opt, data, data, train_step=step, evaluate=evaluate,
          cfg=FitConfig(epochs=6, monitor="val_loss", mode="min", seed=1),
          device=torch.device("cpu"), checkpoint_path=out + "/model.pt")
json.dump([r["epoch"] for r in res.history], open(out + "/epochs.json", "w"))
"""


def _start(tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_training_resumes_from_last_epoch(tmp_path, sig):
    resume = tmp_path / "model.pt.resume"
    proc = _start(tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline:
        if resume.exists() and torch.load(resume, weights_only=True)["epoch"] >= 2:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("no resume file after two epochs")
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode != 0 and not (tmp_path / "epochs.json").exists()
    done_before = torch.load(resume, weights_only=True)["epoch"]
    assert 2 <= done_before < 6

    proc = _start(tmp_path)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert f"resuming from {resume} after epoch {done_before}" in err
    assert json.loads((tmp_path / "epochs.json").read_text()) == [1, 2, 3, 4, 5, 6]
    assert torch.load(tmp_path / "model.pt", weights_only=True)["epoch"] >= 1
    assert not resume.exists()
