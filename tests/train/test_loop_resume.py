"""Resume with early stopping: a run killed mid-training and restarted ends exactly as the same run
left alone would (same last epoch, history, best epoch/score, best weights, ``stopped_early``).

The validation loss improves, then plateaus below ``min_delta``, so early stopping triggers after
``PATIENCE`` bad epochs; the kill lands inside that streak (some bad epochs before it, some after),
so the resumed run must carry the bad-epoch count across the restart."""

import pytest
import torch
from torch.utils.data import DataLoader

from medflow.train import FitConfig, fit, load_checkpoint, loop
from tests.train.test_loop import evaluate, make_data, make_model, train_step

torch.set_num_threads(1)

PATIENCE = 3
EPOCHS = 20  # never reached: every run here stops early
BATCHES = 4  # per epoch: 64 samples / 16

SCHEDULERS = {
    None: None,
    "StepLR": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
    # patience 0 and a 20% threshold: the LR halves on most epochs, so its state matters after a resume
    "ReduceLROnPlateau": lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=0.5, patience=0, threshold=0.2
    ),
}


class Killed(Exception):
    """Stands in for the signal that ends a job."""


def fit_toy(out, sched=None, step=train_step, curves=False):
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    train = DataLoader(make_data(), batch_size=16, shuffle=True)
    val = DataLoader(make_data(32, seed=1), batch_size=16)
    cfg = FitConfig(epochs=EPOCHS, monitor="val_loss", mode="min", patience=PATIENCE, min_delta=0.01, seed=3)
    return fit(
        model,
        opt,
        train,
        val,
        train_step=step,
        evaluate=evaluate,
        cfg=cfg,
        device=torch.device("cpu"),
        checkpoint_path=out / "model.pt",
        scheduler=SCHEDULERS[sched](opt) if sched else None,
        fingerprint={"lr": 0.05, "sched": sched},
        curves_path=out / "curves.png" if curves else None,
    )


def dies_after(epochs: int, steps: list):
    """A train_step that counts its calls in ``steps`` and raises inside epoch ``epochs + 1``."""

    def step(model, batch):
        if len(steps) == epochs * BATCHES + 1:
            raise Killed
        steps.append(1)
        return train_step(model, batch)

    return step


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """sched -> (FitResult, best checkpoint) of the run left alone."""
    runs = {}
    for sched in SCHEDULERS:
        out = tmp_path_factory.mktemp("full")
        runs[sched] = fit_toy(out, sched), load_checkpoint(out / "model.pt")
    return runs


def assert_same_end(resumed, ckpt, full, full_ckpt):
    assert resumed.stopped_early == full.stopped_early
    assert [r["epoch"] for r in resumed.history] == [r["epoch"] for r in full.history]
    assert resumed.history == full.history  # train losses, val metrics and LRs, bit for bit on the CPU
    assert (resumed.best_epoch, resumed.best_score) == (full.best_epoch, full.best_score)
    assert (ckpt["epoch"], ckpt["score"]) == (full_ckpt["epoch"], full_ckpt["score"])
    assert ckpt["state_dict"].keys() == full_ckpt["state_dict"].keys()
    for k, v in full_ckpt["state_dict"].items():
        assert torch.equal(ckpt["state_dict"][k], v), k


def test_reference_run_plateaus_then_stops(uninterrupted):
    """The premise of the tests below: improvement, then a plateau that stops the run early."""
    for sched, (full, ckpt) in uninterrupted.items():
        stop = len(full.history)
        assert full.stopped_early and stop < EPOCHS, sched
        assert full.best_epoch == stop - PATIENCE and full.best_epoch >= 3, sched
        assert ckpt["epoch"] == full.best_epoch and ckpt["score"] == full.best_score
    lrs = {s: [r["lr"] for r in full.history] for s, (full, _) in uninterrupted.items()}
    assert len(set(lrs[None])) == 1 and len(set(lrs["StepLR"])) > 1 and len(set(lrs["ReduceLROnPlateau"])) > 1


@pytest.mark.parametrize(
    "sched, bad_before_kill",
    [(None, 1), (None, PATIENCE - 1), ("StepLR", 1), ("ReduceLROnPlateau", 1)],
)
def test_resume_inside_the_bad_epoch_streak_ends_as_uninterrupted(tmp_path, uninterrupted, sched, bad_before_kill):
    full, full_ckpt = uninterrupted[sched]
    killed_after = full.best_epoch + bad_before_kill  # 0 < bad epochs before the kill < PATIENCE
    steps = []
    with pytest.raises(Killed):
        fit_toy(tmp_path, sched, step=dies_after(killed_after, steps))
    assert torch.load(tmp_path / "model.pt.resume", weights_only=True)["epoch"] == killed_after

    steps.clear()
    resumed = fit_toy(tmp_path, sched, step=dies_after(EPOCHS, steps))
    assert len(steps) == (len(full.history) - killed_after) * BATCHES, "only the epochs after the kill train"
    assert_same_end(resumed, load_checkpoint(tmp_path / "model.pt"), full, full_ckpt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"], "resume state is cleaned up"


def test_job_killed_right_after_deciding_to_stop_trains_no_more(tmp_path, uninterrupted, monkeypatch):
    """The resume file of the stopping epoch is written, then the job dies before cleaning up: the
    restart must see that the run had already stopped, not train another epoch."""
    full, full_ckpt = uninterrupted[None]
    real_save = loop._save_resume

    def save_then_die(path, model, optimizer, scheduler, state, fp):
        real_save(path, model, optimizer, scheduler, state, fp)
        if state["epoch"] == len(full.history):
            raise Killed

    monkeypatch.setattr(loop, "_save_resume", save_then_die)
    with pytest.raises(Killed):
        fit_toy(tmp_path)
    monkeypatch.undo()

    steps = []
    resumed = fit_toy(tmp_path, step=dies_after(EPOCHS, steps))
    assert steps == []
    assert_same_end(resumed, load_checkpoint(tmp_path / "model.pt"), full, full_ckpt)


def test_job_killed_after_writing_the_checkpoint_keeps_the_best_weights(tmp_path, uninterrupted, monkeypatch):
    """Killed while plotting/logging, after the checkpoint was written but before the resume file
    was removed; Snakemake then deletes the failed job's checkpoint. The restart must write the best
    epoch's checkpoint again, not the last epoch's weights."""
    full, full_ckpt = uninterrupted[None]

    def dies(*args):
        raise Killed

    monkeypatch.setattr(loop, "plot_history", dies)
    with pytest.raises(Killed):
        fit_toy(tmp_path, curves=True)
    monkeypatch.undo()
    (tmp_path / "model.pt").unlink(missing_ok=True)  # Snakemake deletes a failed job's outputs

    steps = []
    resumed = fit_toy(tmp_path, step=dies_after(EPOCHS, steps), curves=True)
    assert steps == []
    assert_same_end(resumed, load_checkpoint(tmp_path / "model.pt"), full, full_ckpt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "model.pt"]


def test_resume_state_is_loaded_to_the_cpu_first(tmp_path, uninterrupted, monkeypatch):
    """Loaded onto the GPU, Adam's step counters would stay there (torch keeps ``step`` where it was
    loaded unless the optimizer is fused/capturable) and sync with the host every step. Loaded to the
    CPU, load_state_dict puts the moments beside the parameters and leaves ``step`` on the host."""
    full, full_ckpt = uninterrupted[None]
    with pytest.raises(Killed):
        fit_toy(tmp_path, step=dies_after(full.best_epoch + 1, []))
    where = []
    real_load = torch.load

    def load(*args, **kwargs):
        where.append(kwargs.get("map_location"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    resumed = fit_toy(tmp_path, step=dies_after(EPOCHS, []))
    monkeypatch.undo()
    assert where and where[0] == "cpu"
    assert_same_end(resumed, load_checkpoint(tmp_path / "model.pt"), full, full_ckpt)
