"""The shared training loop: best checkpoint, early stopping, resume after a kill, determinism, MLflow."""

import math

import mlflow
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from medflow import tracking
from medflow.train import FitConfig, Tracking, fit, load_checkpoint


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
        model, opt, train, val, train_step=step, evaluate=evaluate_fn, cfg=cfg, device=torch.device("cpu"),
        checkpoint_path=tmp_path / name, fingerprint={"lr": 0.05}, tracking=tracking_spec,
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


def test_mlflow_run_has_params_metrics_and_checkpoint(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.create_store(uri)
    spec = Tracking("oct", "toy", params={"lr": 0.05, "model": {"width": 8}}, rule="toy_train")
    _, result = run_fit(tmp_path, epochs=3, tracking_spec=spec)
    client = mlflow.MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.data.params == {"lr": "0.05", "model.width": "8"}
    assert run.data.tags["snakemake_rule"] == "toy_train" and run.data.tags["device"] == "cpu"
    assert len(client.get_metric_history(result.run_id, "val_acc")) == 3
    arts = {a.path for a in client.list_artifacts(result.run_id, "checkpoint")}
    assert arts == {"checkpoint/model.pt"}
    assert load_checkpoint(tmp_path / "model.pt")["mlflow_run_id"] == result.run_id
    assert math.isfinite(run.data.metrics["best_val_acc"])
