"""Loader workers draw per-epoch augmentations from (seed, epoch): a run resumed at epoch k draws the
same augmented batches in epochs k+1... as the run left alone, with 1 or 2 workers (``make_loaders`` and
``loader_kwargs`` on the CPU give them from 4 and 8 threads); on CUDA the same loaders are built."""

import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from medflow.train import FitConfig, fit, make_loaders

torch.set_num_threads(1)
CPU = torch.device("cpu")
EPOCHS = 4


class Augmented(Dataset):
    """Each item drawn with all three generators a dataset may use: torch, NumPy and Python's random."""

    def __init__(self, n=24):
        self.x = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        noise = torch.tensor([torch.rand(()).item(), np.random.rand(), random.random()], dtype=torch.float32)
        return self.x[i] + noise, self.x[i, :1]


class Killed(Exception):
    pass


def run(tmp_path, threads, kill_after=None):
    """fit for EPOCHS epochs; the train inputs of each batch of each epoch, in order."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ds = Augmented()
    train, val = make_loaders(ds, ds, batch_size=5, device=CPU, threads=threads)
    seen: dict[int, list[torch.Tensor]] = {}
    epoch = [0]

    def step(m, batch):
        if len(seen.get(epoch[0], [])) == 0 and epoch[0] == kill_after:
            raise Killed
        seen.setdefault(epoch[0], []).append(batch[0].clone())
        return torch.nn.functional.mse_loss(m(batch[0]), batch[1])

    def evaluate(m, loader):
        epoch[0] += 1  # the next epoch's batches follow
        return {"loss": float(sum(torch.nn.functional.mse_loss(m(x), y) for x, y in loader))}

    # 0-based epoch of the batches seen next: a resumed fit goes on after the resume file's epoch
    resume = tmp_path / "m.pt.resume"
    epoch[0] = torch.load(resume, weights_only=True)["epoch"] if resume.exists() else 0
    cfg = FitConfig(epochs=EPOCHS, monitor="val_loss", mode="min", seed=5)
    fit(
        model,
        opt,
        train,
        val,
        train_step=step,
        evaluate=evaluate,
        cfg=cfg,
        device=CPU,
        checkpoint_path=tmp_path / "m.pt",
    )
    return seen, train


@pytest.mark.parametrize("threads, workers", [(4, 1), (8, 2)])
def test_a_resumed_run_draws_the_augmentations_of_an_uninterrupted_one(tmp_path, threads, workers):
    full, loader = run(tmp_path / "full", threads)
    assert loader.num_workers == workers
    assert sorted(full) == list(range(EPOCHS))
    assert not torch.equal(torch.cat(full[1]), torch.cat(full[2])), "each epoch draws anew"

    killed_after = 2
    with pytest.raises(Killed):
        run(tmp_path / "resumed", threads, kill_after=killed_after)  # dies as epoch 3 starts
    resumed, _ = run(tmp_path / "resumed", threads)
    assert sorted(resumed) == list(range(killed_after, EPOCHS))
    for e in range(killed_after, EPOCHS):
        assert len(resumed[e]) == len(full[e])
        for a, b in zip(resumed[e], full[e]):
            assert torch.equal(a, b), f"epoch {e + 1}: other shuffles or augmentations after the resume"
