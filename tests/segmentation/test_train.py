"""Training through the shared loop: patient-level split, determinism on the CPU, resume after an
interruption, the checkpoint evaluation needs, validation through the predict path."""

import dataclasses

import pytest
import torch
from torch.utils.data import DataLoader

from medflow.errors import InputError
from medflow.segmentation import predict, regions
from medflow.segmentation import train as train_module
from medflow.segmentation.data import PatchDataset
from medflow.segmentation.loss import soft_dice_loss
from medflow.segmentation.metrics import dice_from_counts
from medflow.segmentation.model import make_model
from medflow.segmentation.train import UNetParams, make_steps, train
from medflow.train import Job, load_checkpoint
from tests.segmentation.fakes import write_split

PARAMS = UNetParams(depth=2, base_filters=4, batch_size=4, epochs=4, learning_rate=3e-3)
CPU = torch.device("cpu")


def run(dataset, out, params=PARAMS, split=None, **outputs):
    inputs = {"patches": dataset["patches"], "split": split or dataset["split"]}
    return train(
        inputs, {"checkpoint": out / "unet3d.pt", **outputs}, params, Job(threads=1, seed=7, track=False), device=CPU
    )


def test_checkpoint_holds_what_evaluation_needs(dataset, tmp_path):
    result = run(dataset, tmp_path, curves=tmp_path / "curves.png")
    ckpt = load_checkpoint(tmp_path / "unet3d.pt")
    assert ckpt["epoch"] == result.best_epoch and ckpt["monitor"] == "val_dice"
    assert ckpt["score"] == pytest.approx(max(r["val_dice"] for r in result.history))
    meta = ckpt["meta"]
    assert meta["model"]["depth"] == 2 and meta["patch_size"] == [8, 16, 16] and meta["threshold"] == 0.5
    assert meta["modalities"] == ["flair", "t1", "t1ce", "t2"] and meta["hyperparameters"]["seed"] == 7
    # Only train cases train, only the val case validates (6 patches per case).
    assert meta["hyperparameters"]["n_train_patches"] == 30 and meta["hyperparameters"]["n_val_patches"] == 6
    row = result.history[-1]
    for key in ("train_loss", "val_loss", "val_dice", "val_dice_WT", "val_dice_TC", "val_dice_ET", "val_dice_label_1"):
        assert 0 <= row[key] <= 1
    labels = (row["val_dice_label_1"] + row["val_dice_label_2"] + row["val_dice_label_4"]) / 3
    assert row["val_dice"] == pytest.approx(labels)
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert not (tmp_path / "unet3d.pt.resume").exists()


def test_training_learns(dataset, tmp_path):
    result = run(dataset, tmp_path, params=dataclasses.replace(PARAMS, epochs=8))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_score > result.history[0]["val_dice"] + 0.3
    assert max(r["val_dice_WT"] for r in result.history) > 0.8


def test_cpu_training_is_deterministic_and_resumes_where_it_stopped(dataset, tmp_path, monkeypatch):
    a = run(dataset, tmp_path / "a")
    b = run(dataset, tmp_path / "b")
    assert a.history == b.history

    # Interrupt the third epoch, as a killed job would, then start again.
    real = train_module.make_steps

    def interrupting(params, bf16=True):
        step, evaluate = real(params, bf16)
        calls = {"n": 0}

        def train_step(model, batch):
            calls["n"] += 1
            if calls["n"] > 2 * 8 + 1:  # 8 batches per epoch: die inside epoch 3
                raise KeyboardInterrupt
            return step(model, batch)

        return train_step, evaluate

    monkeypatch.setattr(train_module, "make_steps", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run(dataset, tmp_path / "c")
    assert (tmp_path / "c" / "unet3d.pt.resume").exists()
    monkeypatch.setattr(train_module, "make_steps", real)
    c = run(dataset, tmp_path / "c")
    assert c.history == a.history  # epochs 1-2 come from the resume file, 3-4 match a run never stopped
    wa, wc = load_checkpoint(tmp_path / "a" / "unet3d.pt"), load_checkpoint(tmp_path / "c" / "unet3d.pt")
    assert wa["epoch"] == wc["epoch"]
    for k, v in wa["state_dict"].items():
        assert torch.equal(v, wc["state_dict"][k]), k


def test_split_without_patches_for_a_val_case_is_refused(dataset, tmp_path):
    split = tmp_path / "split.csv"
    write_split(split, {**dataset["splits"], "val": ["BraTS20_Training_099"]})
    with pytest.raises(InputError, match="split.csv: 1 val case"):
        run(dataset, tmp_path, split=split)


def plain_validation(model, loader, params):
    """The validation loop as written before it went through ``medflow.train.predict``."""
    model.eval()
    loss_sum, n = 0.0, 0
    counts = {name: torch.zeros(3, dtype=torch.float64) for name in regions.STRUCTURES}
    with torch.no_grad():
        for image, label in loader:
            probs = model(image)
            loss_sum += float(soft_dice_loss(probs, label, params.dice_epsilon)) * len(image)
            n += len(image)
            pred_m = regions.masks(regions.probabilities_to_labels(probs.float(), params.threshold, axis=1))
            true_m = regions.masks(regions.onehot_to_labels(label, axis=1))
            for name in regions.STRUCTURES:
                p, t = pred_m[name], true_m[name]
                counts[name] += torch.tensor(
                    [float((p & t).sum()), float(p.sum()), float(t.sum())], dtype=torch.float64
                )
    scores = {name: dice_from_counts(*counts[name].tolist()) for name in regions.STRUCTURES}
    out = {"loss": loss_sum / n, "dice": sum(scores[k] for k in regions.LABEL_NAMES) / 3}
    return out | {f"dice_{k}": v for k, v in scores.items()}


def test_validation_runs_through_the_predict_path_and_equals_a_plain_loop(dataset, monkeypatch):
    """Validation inside fit goes through predict.score_patches (inference mode, eval mode), and on the
    CPU its numbers equal those of a plain no_grad loop bit for bit."""
    torch.manual_seed(0)
    params = UNetParams(depth=2, base_filters=4, threshold=0.4)
    model = make_model(params)
    ds = PatchDataset([dataset["patches"][c] for c in dataset["splits"]["train"][:2]])
    loader = DataLoader(ds, batch_size=5)  # 12 patches: batches of 5, 5 and 2
    seen = []
    real_forward = model.forward

    def spy(x):
        seen.append((torch.is_inference_mode_enabled(), model.training))
        return real_forward(x)

    model.forward = spy
    _, evaluate = make_steps(params, bf16=True)
    calls = []
    real_score = predict.score_patches
    monkeypatch.setattr(predict, "score_patches", lambda *a, **kw: calls.append(kw) or real_score(*a, **kw))
    model.train()  # fit puts it in eval mode; the predict path must do so itself
    got = evaluate(model, loader)
    assert len(calls) == 1 and calls[0]["threshold"] == 0.4 and calls[0]["bf16"] is True
    assert seen == [(True, False)] * 3
    model.forward = real_forward
    assert got == plain_validation(model, loader, params)
    ds.close()
