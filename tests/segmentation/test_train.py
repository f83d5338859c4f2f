"""Training through the shared loop: patient-level split, determinism on the CPU, resume after an
interruption, the checkpoint evaluation needs."""

import pytest
import torch

from medflow.errors import InputError
from medflow.segmentation import train
from medflow.segmentation.train import UNetParams, train_unet3d
from medflow.train import load_checkpoint
from tests.segmentation.fakes import write_split

PARAMS = UNetParams(depth=2, base_filters=4, batch_size=4, epochs=4, learning_rate=3e-3)


def train(dataset, out, **kw):
    return train_unet3d(dataset["patches"], dataset["split"], out / "unet3d.pt", params=kw.pop("params", PARAMS),
                        seed=7, threads=1, track=False, device=torch.device("cpu"), **kw)


def test_checkpoint_holds_what_evaluation_needs(dataset, tmp_path):
    result = train(dataset, tmp_path, curves=tmp_path / "curves.png")
    ckpt = load_checkpoint(tmp_path / "unet3d.pt")
    assert ckpt["epoch"] == result.best_epoch and ckpt["monitor"] == "val_dice"
    assert ckpt["score"] == pytest.approx(max(r["val_dice"] for r in result.history))
    meta = ckpt["meta"]
    assert meta["model"]["depth"] == 2 and meta["patch_size"] == [8, 16, 16]
    # Only train cases train, only the val case validates (6 patches per case).
    assert meta["hyperparameters"]["n_train_patches"] == 30 and meta["hyperparameters"]["n_val_patches"] == 6
    row = result.history[-1]
    for key in ("train_loss", "val_loss", "val_dice", "val_dice_WT", "val_dice_TC", "val_dice_ET", "val_dice_label_1"):
        assert 0 <= row[key] <= 1
    assert row["val_dice"] == pytest.approx((row["val_dice_label_1"] + row["val_dice_label_2"] + row["val_dice_label_4"]) / 3)
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert not (tmp_path / "unet3d.pt.resume").exists()


def test_training_learns(dataset, tmp_path):
    result = train(dataset, tmp_path, params=UNetParams(depth=2, base_filters=4, batch_size=4, epochs=8, learning_rate=3e-3))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_score > result.history[0]["val_dice"] + 0.3
    assert max(r["val_dice_WT"] for r in result.history) > 0.8


def test_cpu_training_is_deterministic_and_resumes_where_it_stopped(dataset, tmp_path, monkeypatch):
    a = train(dataset, tmp_path / "a")
    b = train(dataset, tmp_path / "b")
    assert a.history == b.history

    # Interrupt the third epoch, as a killed job would, then start again.
    real = train.make_steps

    def interrupting(params):
        step, evaluate = real(params)
        calls = {"n": 0}

        def train_step(model, batch):
            calls["n"] += 1
            if calls["n"] > 2 * 8 + 1:  # 8 batches per epoch: die inside epoch 3
                raise KeyboardInterrupt
            return step(model, batch)

        return train_step, evaluate

    monkeypatch.setattr(training, "make_steps", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train(dataset, tmp_path / "c")
    assert (tmp_path / "c" / "unet3d.pt.resume").exists()
    monkeypatch.setattr(training, "make_steps", real)
    c = train(dataset, tmp_path / "c")
    assert c.history == a.history  # epochs 1-2 come from the resume file, 3-4 match a run never stopped
    wa, wc = load_checkpoint(tmp_path / "a" / "unet3d.pt"), load_checkpoint(tmp_path / "c" / "unet3d.pt")
    assert wa["epoch"] == wc["epoch"]
    for k, v in wa["state_dict"].items():
        assert torch.equal(v, wc["state_dict"][k]), k


def test_split_without_patches_for_a_val_case_is_refused(dataset, tmp_path):
    split = tmp_path / "split.csv"
    write_split(split, {**dataset["splits"], "val": ["BraTS20_Training_099"]})
    with pytest.raises(InputError, match="split.csv: 1 val case"):
        train_unet3d(dataset["patches"], split, tmp_path / "m.pt", params=PARAMS, seed=0, track=False,
                     device=torch.device("cpu"))
