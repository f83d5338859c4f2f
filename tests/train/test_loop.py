"""The shared training loop: best checkpoint, early stopping, resume after a kill, determinism, MLflow."""

import json
import logging
import math
import random
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from medflow import tracking
from medflow.train import FitConfig, Tracking, fit, load_checkpoint, loop, seed_everything

torch.set_num_threads(1)
NAN = float("nan")


def make_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).float()
    return TensorDataset(x, y)


def make_model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))


def train_step(model, batch):
    x, y = batch
    return torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)


def evaluate(model, loader):
    losses, correct, n = [], 0, 0
    for x, y in loader:
        logit = model(x).squeeze(1)
        losses.append(float(torch.nn.functional.binary_cross_entropy_with_logits(logit, y)))
        correct += int(((logit > 0).float() == y).sum())
        n += len(y)
    return {"loss": sum(losses) / len(losses), "acc": correct / n}


def run_fit(tmp_path, epochs=4, step=train_step, patience=0, evaluate_fn=evaluate, tracking_spec=None, name="model.pt"):
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    train = DataLoader(make_data(), batch_size=16, shuffle=True)
    val = DataLoader(make_data(32, seed=1), batch_size=16)
    cfg = FitConfig(epochs=epochs, monitor="val_acc", mode="max", patience=patience, seed=3)
    result = fit(
        model,
        opt,
        train,
        val,
        train_step=step,
        evaluate=evaluate_fn,
        cfg=cfg,
        device=torch.device("cpu"),
        checkpoint_path=tmp_path / name,
        fingerprint={"lr": 0.05},
        tracking=tracking_spec,
        curves_path=tmp_path / "curves.png",
    )
    return model, result


def test_best_checkpoint_is_written_and_loads_weights_only(tmp_path):
    _, result = run_fit(tmp_path)
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt["epoch"] == result.best_epoch
    assert ckpt["score"] == pytest.approx(max(r["val_acc"] for r in result.history))
    assert ckpt["monitor"] == "val_acc"
    assert not (tmp_path / "model.pt.resume").exists(), "the resume file is removed when training ends"
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert result.best_score > 0.7  # a learnable toy problem


def test_early_stopping_stops_after_patience(tmp_path):
    calls = []

    def flat_metric(model, loader):
        calls.append(1)
        return {"loss": 1.0, "acc": 0.5}  # never improves after the first epoch

    _, result = run_fit(tmp_path, epochs=20, patience=2, evaluate_fn=flat_metric)
    assert result.stopped_early
    assert len(result.history) == 3 and result.best_epoch == 1


def test_killed_run_resumes_from_last_epoch_with_the_same_result(tmp_path):
    _, full = run_fit(tmp_path / "a")
    steps = {"n": 0}

    def dies_in_epoch_3(model, batch):
        steps["n"] += 1
        if steps["n"] > 2 * 4 + 1:  # 4 batches per epoch: die inside epoch 3
            raise KeyboardInterrupt("killed")
        return train_step(model, batch)

    with pytest.raises(KeyboardInterrupt):
        run_fit(tmp_path / "b", step=dies_in_epoch_3)
    resume = torch.load(tmp_path / "b" / "model.pt.resume", weights_only=True)
    assert resume["epoch"] == 2

    (tmp_path / "b" / "model.pt").unlink(missing_ok=True)  # Snakemake deletes a failed job's outputs
    seen = []

    def counting(model, batch):
        seen.append(1)
        return train_step(model, batch)

    model_b, resumed = run_fit(tmp_path / "b", step=counting)
    assert len(seen) == 2 * 4, "only epochs 3 and 4 are trained again"
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(full.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    best_a, best_b = load_checkpoint(tmp_path / "a" / "model.pt"), load_checkpoint(tmp_path / "b" / "model.pt")
    assert best_a["epoch"] == best_b["epoch"] and best_a["score"] == best_b["score"]
    for k in best_a["state_dict"]:
        assert torch.allclose(best_a["state_dict"][k], best_b["state_dict"][k])


def dies_after_steps(steps):
    """A train_step that raises KeyboardInterrupt (a kill) once it has run ``steps`` batches."""
    n = [0]

    def step(model, batch):
        n[0] += 1
        if n[0] > steps:
            raise KeyboardInterrupt
        return train_step(model, batch)

    return step


def test_resume_file_from_other_settings_is_ignored(tmp_path):
    run_fit(tmp_path, epochs=2)
    torch.save({"fingerprint": "other", "epoch": 1}, tmp_path / "model.pt.resume")
    _, result = run_fit(tmp_path, epochs=2)
    assert [r["epoch"] for r in result.history] == [1, 2]


def test_same_seed_same_weights_on_cpu(tmp_path):
    m1, r1 = run_fit(tmp_path / "1")
    m2, r2 = run_fit(tmp_path / "2")
    assert r1.history == r2.history
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


# --- Scripted validation scores: evaluate() returns values[i] on its i-th call, i.e. at epoch i + 1
# (a killed epoch never reaches evaluate, so one sequence also spans a kill and its restart).


def scripted(values, key="m", snapshots=None):
    it = iter(values)

    def evaluate_fn(model, loader):
        if snapshots is not None:  # the weights each epoch's score belongs to
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return {key: next(it)}

    return evaluate_fn


def fit_scripted(out, values, *, step=train_step, evaluate_fn=None, batch_size=16, opt=None, model=None, **kw):
    """``fit`` on 16 samples scored by ``values``; ``kw`` goes to FitConfig (monitor "val_m") or fit."""
    model = model or make_model()
    opt = opt or torch.optim.Adam(model.parameters(), lr=0.05)
    cfg_keys = {"mode", "patience", "min_delta", "seed", "bf16", "grad_clip"}
    cfg = FitConfig(
        epochs=kw.pop("epochs", len(values)), monitor="val_m", **{k: kw.pop(k) for k in cfg_keys & kw.keys()}
    )
    kw.setdefault("checkpoint_path", out / "model.pt")
    result = fit(
        model,
        opt,
        DataLoader(make_data(16), batch_size=batch_size, shuffle=True),
        [None],
        train_step=step,
        evaluate=evaluate_fn or scripted(values),
        cfg=cfg,
        device=torch.device("cpu"),
        **kw,
    )
    return model, result


@pytest.mark.parametrize(
    "mode, min_delta, patience, values, best_epoch, last_epoch",
    [
        # an improvement resets the count; a plateau (equal score) is no improvement
        ("max", 0.0, 2, [0.5, 0.6, 0.55, 0.7, 0.7, 0.65, 0.9], 4, 6),
        ("min", 0.0, 2, [0.5, 0.4, 0.45, 0.3, 0.3, 0.35, 0.1], 4, 6),
        # an improvement must beat the best by more than min_delta (exact binary fractions)
        ("min", 0.25, 2, [1.0, 0.75, 0.5, 0.375, 0.25, 0.0], 3, 5),
        ("max", 0.25, 0, [0.5, 0.75, 1.0, 1.125], 3, 4),  # patience 0: never stops
        # NaN never improves and counts as a bad epoch, also before any finite score
        ("max", 0.0, 2, [NAN, 0.5, NAN, 0.6, NAN, NAN, 0.9], 4, 6),
        ("min", 0.0, 2, [NAN, 0.5, NAN, 0.4, 0.4, 0.3], 6, 6),
    ],
)
def test_early_stopping_and_best_epoch(tmp_path, mode, min_delta, patience, values, best_epoch, last_epoch):
    _, result = fit_scripted(tmp_path, values, mode=mode, min_delta=min_delta, patience=patience)
    assert [r["epoch"] for r in result.history] == list(range(1, last_epoch + 1))
    assert result.stopped_early == (last_epoch < len(values))
    assert result.best_epoch == best_epoch and result.best_score == values[best_epoch - 1]
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert (ckpt["epoch"], ckpt["score"], ckpt["monitor"]) == (best_epoch, values[best_epoch - 1], "val_m")


def test_config_defaults_higher_is_better_and_never_stop(tmp_path):
    values = [0.5, 0.5, 0.5, 0.5, 0.5 + 1e-9]
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    result = fit(
        model,
        opt,
        DataLoader(make_data(16), batch_size=16),
        [None],
        train_step=train_step,
        evaluate=scripted(values),
        cfg=FitConfig(epochs=5, monitor="val_m"),
        device=torch.device("cpu"),
        checkpoint_path=tmp_path / "model.pt",
    )
    assert not result.stopped_early and len(result.history) == 5
    assert result.best_epoch == 5  # any gain counts (min_delta 0), higher is better (mode "max")


def test_checkpoint_holds_the_best_epochs_weights_and_meta(tmp_path):
    snaps = []
    model, result = fit_scripted(
        tmp_path,
        [0.5, 0.75, 0.6, 0.7],
        evaluate_fn=scripted([0.5, 0.75, 0.6, 0.7], snapshots=snaps),
        checkpoint_meta={"classes": ("normal", "tear"), "width": np.int64(8)},
    )
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert (ckpt["epoch"], ckpt["score"], result.best_epoch) == (2, 0.75, 2)
    assert ckpt["state_dict"].keys() == snaps[1].keys()
    for k, v in snaps[1].items():
        assert torch.equal(ckpt["state_dict"][k], v), "the best epoch's weights, not the last epoch's"
    assert not torch.equal(ckpt["state_dict"]["0.weight"], model.state_dict()["0.weight"])
    assert ckpt["meta"] == {"classes": ["normal", "tear"], "width": 8} and type(ckpt["meta"]["width"]) is int
    assert ckpt["mlflow_run_id"] == ""  # no tracking
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_no_finite_score_keeps_the_last_epoch_not_a_stale_checkpoint(tmp_path, caplog):
    fit_scripted(tmp_path, [0.9, 0.8], fingerprint={"run": "earlier"})  # a finished run with other settings
    model, result = fit_scripted(
        tmp_path, [NAN, NAN, NAN], fingerprint={"run": "now"}, checkpoint_meta={"classes": ["a"]}
    )
    assert (result.best_epoch, result.best_score, result.stopped_early) == (0, None, False)
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt["epoch"] == 3 and math.isnan(ckpt["score"]) and ckpt["meta"] == {"classes": ["a"]}
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["state_dict"][k], v)
    assert "no epoch improved val_m; saving the last epoch" in [r.getMessage() for r in caplog.records]


def test_stale_best_weights_of_other_settings_never_become_the_checkpoint(tmp_path, caplog):
    dies_in_epoch_3 = dies_after_steps(2)  # one batch per epoch

    with pytest.raises(KeyboardInterrupt):  # leaves a resume file and best weights (score 0.9) behind
        fit_scripted(tmp_path, [0.9, 0.8, 0.7], step=dies_in_epoch_3, fingerprint={"lr": 0.1})
    caplog.set_level(logging.INFO, logger="medflow.train.loop")
    _, result = fit_scripted(tmp_path, [NAN, NAN, NAN], fingerprint={"lr": 0.2})
    assert f"ignoring {tmp_path / 'model.pt.resume'}: it was written with other settings" in [
        r.getMessage() for r in caplog.records
    ]
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert math.isnan(load_checkpoint(tmp_path / "model.pt")["score"])


def test_resume_fingerprint_ignores_key_order_and_takes_paths(tmp_path, caplog):
    """A custom resume path elsewhere; the params are rebuilt in another order after the restart."""
    resume, ckpt_path = tmp_path / "state" / "run.resume", tmp_path / "out" / "nested" / "model.pt"
    seen = []

    def step(model, batch):
        if len(seen) == 2:
            raise KeyboardInterrupt  # inside epoch 3 (one batch per epoch)
        seen.append(1)
        return train_step(model, batch)

    values = [0.5, 0.7, 0.6, 0.8]
    evaluate_fn = scripted(values)
    fp = {"lr": 0.05, "data": tmp_path / "data", "shape": (4, 4)}
    with pytest.raises(KeyboardInterrupt):
        fit_scripted(
            tmp_path,
            values,
            step=step,
            evaluate_fn=evaluate_fn,
            fingerprint=fp,
            resume_path=resume,
            checkpoint_path=ckpt_path,
        )
    assert resume.exists() and not ckpt_path.exists()
    seen.clear()
    caplog.set_level(logging.INFO, logger="medflow.train.loop")
    _, result = fit_scripted(
        tmp_path,
        values,
        step=lambda m, b: seen.append(1) or train_step(m, b),
        evaluate_fn=evaluate_fn,
        fingerprint=dict(reversed(list(fp.items()))),
        resume_path=resume,
        checkpoint_path=ckpt_path,
    )
    assert f"resuming from {resume} after epoch 2" in [r.getMessage() for r in caplog.records]
    assert len(seen) == 2 and [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert load_checkpoint(ckpt_path)["epoch"] == 4 == result.best_epoch
    assert list(resume.parent.iterdir()) == [], "resume file and best weights are removed at the end"


@pytest.mark.parametrize("batch_size", [4, 16], ids=["4 batches", "1 batch"])
def test_history_rows(tmp_path, batch_size):
    """train_loss is the mean batch loss of the epoch, scores get the val_ prefix, lr is the one used."""
    losses, modes = [], []

    def step(model, batch):
        modes.append((model.training, torch.is_grad_enabled()))
        loss = train_step(model, batch)
        losses.append(float(loss.detach()))
        return loss

    def evaluate_fn(model, loader):
        modes.append((model.training, torch.is_grad_enabled()))
        return {"m": 0.5, "loss": 2.0}

    _, result = fit_scripted(tmp_path, [], step=step, evaluate_fn=evaluate_fn, batch_size=batch_size, epochs=2)
    per_epoch = 16 // batch_size
    for i, row in enumerate(result.history):
        epoch_losses = losses[i * per_epoch : (i + 1) * per_epoch]
        assert row == {
            "epoch": i + 1.0,
            "train_loss": pytest.approx(sum(epoch_losses) / per_epoch, rel=1e-12),
            "val_m": 0.5,
            "val_loss": 2.0,
            "lr": 0.05,
        }
    assert set(modes[:per_epoch]) == {(True, True)} and modes[per_epoch] == (False, False)


def test_monitor_missing_from_evaluate_is_an_error(tmp_path):
    with pytest.raises(KeyError, match=r"\['acc'\].*'val_m'"):
        fit_scripted(tmp_path, [], evaluate_fn=lambda m, loader: {"acc": 1.0}, epochs=1)


@pytest.mark.parametrize(
    "make_sched, values, lrs",
    [
        (lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5), [0.5, 0.6, 0.7], [0.05, 0.025, 0.0125]),
        # stepped with the monitored score: halves after the epoch that did not improve
        (
            lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, mode="max", factor=0.5, patience=0),
            [0.5, 0.5, 0.7, 0.6],
            [0.05, 0.05, 0.025, 0.025],
        ),
    ],
    ids=["StepLR", "ReduceLROnPlateau"],
)
def test_scheduler_steps_once_per_epoch(tmp_path, make_sched, values, lrs):
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    _, result = fit_scripted(tmp_path, values, model=model, opt=opt, scheduler=make_sched(opt))
    assert [r["lr"] for r in result.history] == pytest.approx(lrs, rel=1e-12)


@pytest.mark.parametrize("clip", [None, 0.5])
def test_grad_clip_bounds_the_update(tmp_path, clip):
    """SGD with lr 1 on one batch: the weight change is minus the (clipped) gradient."""
    model = torch.nn.Linear(5, 1)
    before = torch.cat([p.detach().clone().flatten() for p in model.parameters()])
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    big = lambda m, b: 100 * ((m(b[0]).squeeze(1) - b[1] - 3) ** 2).mean()  # noqa: E731
    fit_scripted(tmp_path, [0.5], model=model, opt=opt, step=big, grad_clip=clip)
    change = float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm())
    if clip is None:
        assert change > 10
    else:
        assert change == pytest.approx(clip, rel=1e-4)


def test_train_and_evaluate_run_under_the_requested_autocast(tmp_path, monkeypatch):
    calls = []
    real = loop.autocast
    monkeypatch.setattr(loop, "autocast", lambda device, bf16: calls.append((device.type, bf16)) or real(device, bf16))
    fit_scripted(tmp_path / "a", [0.5, 0.6])  # bf16 is the default: on CUDA it is what makes training fast
    assert calls == [("cpu", True)] * 4  # one train batch and one evaluation per epoch
    calls.clear()
    fit_scripted(tmp_path / "b", [0.5, 0.6], bf16=False)
    assert calls == [("cpu", False)] * 4


def test_progress_line_per_epoch_and_early_stop_message(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="medflow.train.loop")
    _, result = fit_scripted(tmp_path, [NAN, 0.75, 0.5, 0.625, 0.9], patience=2)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 4
    tl = [r["train_loss"] for r in result.history]
    expected = [
        f"epoch 1/5 train_loss {tl[0]:.4f} val_m nan lr 0.0500 | best nan @ 0 | ",
        f"epoch 2/5 train_loss {tl[1]:.4f} val_m 0.7500 lr 0.0500 | best 0.7500 @ 2 | ",
        f"epoch 4/5 train_loss {tl[3]:.4f} val_m 0.6250 lr 0.0500 | best 0.7500 @ 2 | ",
    ]
    for line, start in zip([lines[0], lines[1], lines[3]], expected):
        assert line.startswith(start) and re.fullmatch(r"\d+\.\d s", line[len(start) :]), line
        assert float(line[len(start) : -2]) < 60  # this epoch's seconds
    assert "early stop: no val_m improvement for 2 epochs" in [r.getMessage() for r in caplog.records]


def test_seed_everything_seeds_python_numpy_and_torch():
    def draws(seed):
        seed_everything(seed)
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    assert draws(3001) == draws(3001)
    # epochs 64 apart get different streams; a 33-bit seed (e.g. from a hash) is accepted
    assert len({draws(3001)[i] for i in range(3)} | {draws(3065)[i] for i in range(3)}) == 6
    assert draws(2**33 - 1) == draws(2**33 - 1)


def test_each_epoch_and_each_seed_shuffles_differently(tmp_path):
    def first_batches(seed):
        firsts = []

        def step(model, batch):
            firsts.append(batch[0][0].clone())
            return train_step(model, batch)

        fit_scripted(tmp_path / str(seed), [0.5, 0.6], step=step, batch_size=4, seed=seed)
        return firsts[0], firsts[4]  # first batch of epochs 1 and 2

    a1, a2 = first_batches(3)
    b1, _ = first_batches(4)
    assert not torch.equal(a1, a2) and not torch.equal(a1, b1)


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    tracking.create_store(uri)  # slow (schema migrations): once per module
    return uri


def test_mlflow_run_continues_after_a_kill(tmp_path, mlflow_uri, monkeypatch):
    """Params/tags once, per-epoch metrics (NaN left out), best score (0.0 is a score), checkpoint,
    curves and history artifacts; the restarted job logs into the same run."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    spec = Tracking("oct", "toy", params={"lr": 0.05, "model": {"width": 8}}, tags={"data": "toy"}, rule="toy_train")
    values = [0.5, 0.0, NAN, 0.25]
    evaluate_fn = scripted(values)
    kw = dict(mode="min", evaluate_fn=evaluate_fn, tracking=spec, curves_path=tmp_path / "curves.png")
    plotted, real_plot = [], loop.plot_history
    monkeypatch.setattr(
        loop, "plot_history", lambda h, path, monitor: plotted.append(monitor) or real_plot(h, path, monitor)
    )

    dies_in_epoch_3 = dies_after_steps(2)  # one batch per epoch

    with pytest.raises(KeyboardInterrupt):
        fit_scripted(tmp_path, values, step=dies_in_epoch_3, **kw)
    _, result = fit_scripted(tmp_path, values, **kw)

    client = mlflow.MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("oct").experiment_id])
    assert [r.info.run_id for r in runs] == [result.run_id]
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "toy"
    assert run.data.params == {"lr": "0.05", "model.width": "8"}
    tags = run.data.tags
    assert (tags["snakemake_rule"], tags["device"], tags["data"]) == ("toy_train", "cpu", "toy")
    assert set(run.data.metrics) == {"train_loss", "val_m", "lr", "best_val_m", "best_epoch"}
    hist = client.get_metric_history(result.run_id, "val_m")
    assert sorted((m.step, m.value) for m in hist) == [(1, 0.5), (2, 0.0), (4, 0.25)]
    assert sorted(m.step for m in client.get_metric_history(result.run_id, "train_loss")) == [1, 2, 3, 4]
    assert run.data.metrics["best_val_m"] == 0.0 and run.data.metrics["best_epoch"] == 2
    arts = {a.path for d in ("checkpoint", "plots") for a in client.list_artifacts(result.run_id, d)}
    assert arts == {"checkpoint/model.pt", "plots/curves.png"} and plotted == ["val_m"]
    ckpt = load_checkpoint(client.download_artifacts(result.run_id, "checkpoint/model.pt", str(tmp_path / "dl")))
    assert (ckpt["epoch"], ckpt["mlflow_run_id"]) == (2, result.run_id)
    logged = json.loads(
        Path(client.download_artifacts(result.run_id, "history.json", str(tmp_path / "dl"))).read_text()
    )
    assert [r["epoch"] for r in logged["history"]] == [1, 2, 3, 4]
    assert [r["train_loss"] for r in logged["history"]] == [r["train_loss"] for r in result.history]

    _, no_score = fit_scripted(tmp_path / "nan", [NAN], tracking=spec)  # the last-epoch checkpoint too
    assert load_checkpoint(tmp_path / "nan" / "model.pt")["mlflow_run_id"] == no_score.run_id != result.run_id
    assert math.isnan(client.get_run(no_score.run_id).data.metrics["best_val_m"])


class NotATensor:
    """Stands for arbitrary pickled code in a checkpoint file."""


def test_load_checkpoint_maps_gpu_tensors_to_cpu_and_refuses_pickled_objects(tmp_path, monkeypatch):
    import pickle

    import torch.serialization

    with monkeypatch.context() as m:  # a checkpoint as written on a GPU node
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "gpu.pt")
    w = load_checkpoint(tmp_path / "gpu.pt")["state_dict"]["w"]
    assert w.device.type == "cpu" and torch.equal(w, torch.ones(2))
    torch.save({"state_dict": {}, "extra": NotATensor()}, tmp_path / "unsafe.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path / "unsafe.pt")


@pytest.mark.filterwarnings("ignore:No artists with labels")  # the empty history
def test_curves_show_the_losses_and_the_monitored_score(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figs = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: figs.append(fig) or real_close(fig))
    history = [
        {"epoch": 1.0, "train_loss": 0.9, "val_loss": 1.0, "val_m": 0.5, "lr": 0.1},
        {"epoch": 2.0, "train_loss": 0.7, "val_loss": 0.8, "val_m": 0.625, "lr": 0.1},
    ]
    loop.plot_history(history, tmp_path / "curves.png", "val_m")
    (fig,) = figs
    loss_ax, score_ax = fig.axes
    assert {ln.get_label(): list(ln.get_ydata()) for ln in loss_ax.get_lines()} == {
        "train_loss": [0.9, 0.7],
        "val_loss": [1.0, 0.8],
    }
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["train_loss", "val_loss"]
    assert [list(ln.get_ydata()) for ln in score_ax.get_lines()] == [[0.5, 0.625]]
    assert loss_ax.get_position().x1 <= score_ax.get_position().x0  # side by side
    for ax, title in ((loss_ax, "loss"), (score_ax, "val_m")):
        assert (ax.get_title(), ax.get_xlabel()) == (title, "epoch")
        assert all(list(ln.get_xdata()) == [1.0, 2.0] for ln in ax.get_lines())
        assert all(ln.get_marker() == "o" for ln in ax.get_lines())  # else a one-epoch curve is invisible
    png = (tmp_path / "curves.png").read_bytes()
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and width >= 2 * height  # two panels side by side
    for n in (0, 1):  # a run of one epoch, or none, still gets its figure
        loop.plot_history(history[:n], tmp_path / f"{n}.png", "val_m")
        assert (tmp_path / f"{n}.png").stat().st_size > 0


def test_resume_file_written_on_a_gpu_node_resumes_on_the_cpu(tmp_path, monkeypatch):
    """The killed job ran on CUDA (its saved tensors say so); the restart lands on a CPU node."""
    import torch.serialization

    dies_in_epoch_3 = dies_after_steps(2)  # one batch per epoch

    values = [0.5, 0.7, 0.6]
    evaluate_fn = scripted(values)
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        fit_scripted(tmp_path, values, step=dies_in_epoch_3, evaluate_fn=evaluate_fn)
    _, result = fit_scripted(tmp_path, values, evaluate_fn=evaluate_fn)
    assert [r["epoch"] for r in result.history] == [1, 2, 3] and result.best_epoch == 2


def test_model_and_batches_are_moved_to_the_device(tmp_path, monkeypatch):
    moved = []
    real_to_device = loop.to_device
    monkeypatch.setattr(
        loop, "to_device", lambda batch, device: moved.append(("batch", device)) or real_to_device(batch, device)
    )

    class Recording(torch.nn.Sequential):
        def to(self, *args, **kwargs):
            moved.append(args[0] if args else kwargs.get("device"))
            return super().to(*args, **kwargs)

    model = Recording(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    fit_scripted(tmp_path, [0.5], model=model)
    assert moved == [torch.device("cpu"), ("batch", torch.device("cpu"))]


def test_resume_file_with_pickled_objects_is_refused(tmp_path):
    """The resume file loads weights-only: a tampered one cannot run code."""
    torch.save({"fingerprint": "{}", "extra": NotATensor()}, tmp_path / "model.pt.resume")
    import pickle

    with pytest.raises(pickle.UnpicklingError):
        fit_scripted(tmp_path, [0.5])


def test_resume_without_the_scheduler_it_was_written_with(tmp_path):
    """Same params, scheduler dropped: the saved scheduler state is ignored, training resumes."""

    dies_in_epoch_3 = dies_after_steps(2)  # one batch per epoch

    values = [0.5, 0.7, 0.6]
    evaluate_fn = scripted(values)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    with pytest.raises(KeyboardInterrupt):
        fit_scripted(
            tmp_path,
            values,
            step=dies_in_epoch_3,
            evaluate_fn=evaluate_fn,
            model=model,
            opt=opt,
            scheduler=torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
        )
    _, result = fit_scripted(tmp_path, values, evaluate_fn=evaluate_fn)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]


def test_a_head_without_loss_this_batch_is_not_updated(tmp_path):
    """Gradients are cleared to None, not zero: a head that got a loss on the first batch only is not
    moved again by the optimiser's momentum on the next (multi-task heads with missing labels)."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"body": torch.nn.Linear(5, 1), "aux": torch.nn.Linear(5, 1)})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    after_first = []

    def step(m, batch):
        loss = ((m["body"](batch[0]).squeeze(1) - batch[1]) ** 2).mean()
        if not after_first:
            after_first.append(None)
            return loss + m["aux"](batch[0]).mean()
        after_first[0] = m["aux"].weight.detach().clone()
        return loss

    fit_scripted(tmp_path, [0.5], model=model, opt=opt, step=step, batch_size=8, seed=0)
    assert torch.equal(model["aux"].weight, after_first[0])


class HostReads(torch.Tensor):
    """A loss that counts the reads that make the host wait for the device (float(), .item(), ...)."""

    reads: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.tolist, torch.Tensor.cpu):
            cls.reads.append(func.__name__)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_the_train_loss_is_read_from_the_device_once_per_epoch_and_sums_as_python_floats(tmp_path):
    """On a GPU each read is a sync that stalls the next step's launch: one per epoch, not one per step.
    The float64 sum on the device equals the Python-float sum bit for bit, so CPU numbers are unchanged."""
    HostReads.reads = []
    losses = []

    def step(model, batch):
        loss = train_step(model, batch)
        losses.append(loss.detach().clone())
        return loss.as_subclass(HostReads)

    _, result = run_fit(tmp_path, epochs=3, step=step)
    assert len(HostReads.reads) == 3 and len(losses) == 12, "4 steps per epoch, one read per epoch"
    for e, row in enumerate(result.history):
        total = 0.0
        for loss in losses[4 * e : 4 * e + 4]:
            total += float(loss)
        assert row["train_loss"] == total / 4


def test_cudnn_benchmark_is_set_for_cuda_jobs_that_ask(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    cfg = FitConfig(epochs=1, monitor="val_acc")
    loop._configure_backends(cfg, torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is False, "off by default: MRNet's batches change shape"
    cfg.cudnn_benchmark = True
    loop._configure_backends(cfg, torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    loop._configure_backends(cfg, torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is True
