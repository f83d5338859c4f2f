"""medflow.train.setup: Job from the rule, the two loaders (today's order exactly), FitConfig and Tracking."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from snakemake.iocontainers import Params
from torch.utils.data import DataLoader, TensorDataset

from medflow.train import (
    FitConfig,
    Job,
    Tracking,
    fit_config,
    loader_kwargs,
    make_loaders,
    tracking,
)

torch.set_num_threads(1)
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def no_job_claim(monkeypatch):
    """Job.from_snakemake records the process's claim: keep it from leaking into other tests."""
    from medflow.train import device

    monkeypatch.setattr(device, "_claim", device.JobClaim())


def dataset(n):
    return TensorDataset(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n))


def epoch_ids(loader):
    return [b[1].tolist() for b in loader]


# --- Job ----------------------------------------------------------------------------------------


def test_job_defaults_and_frozen():
    job = Job()
    assert (job.threads, job.seed, job.bf16, job.rule, job.track) == (1, 0, True, None, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.seed = 3


def test_job_from_snakemake_reads_threads_rule_and_params():
    smk = SimpleNamespace(
        threads=6, rule="brats_grade_train", params=Params(fromdict={"seed": 7, "bf16": False, "train": {}})
    )
    assert Job.from_snakemake(smk) == Job(threads=6, seed=7, bf16=False, rule="brats_grade_train", track=True)


def test_job_from_snakemake_keeps_defaults_for_params_the_rule_lacks():
    smk = SimpleNamespace(threads=2, rule="oct_evaluate", params=Params(fromdict={"evaluate": {"top_k": 3}}))
    assert Job.from_snakemake(smk) == Job(threads=2, rule="oct_evaluate")
    # A plain mapping of params (library callers, tests) works the same.
    assert Job.from_snakemake(SimpleNamespace(threads=1, rule=None, params={"seed": 4})).seed == 4


def test_job_from_snakemake_reads_the_gpu_claim_and_records_it_for_the_process(monkeypatch):
    """select_device and loader_kwargs are called with threads only: the job's claim reaches them
    through the process record (one workflow script is one job)."""
    from medflow.train import device

    smk = SimpleNamespace(
        threads=2,
        rule="mrnet_train",
        params=Params(fromdict={"seed": 1, "loader_workers": 4}),
        resources=SimpleNamespace(gpu=1, _cores=2),
        config={"results": "/scratch/run1"},
    )
    job = Job.from_snakemake(smk)
    assert (job.gpus, job.loader_workers) == (1, 4)
    assert device.job_claim() == device.JobClaim(gpus=1, loader_workers=4, lock_dir="/scratch/run1/.gpu_locks")
    Job.from_snakemake(SimpleNamespace(threads=1, rule="oct_evaluate", params={}, resources={"gpu": 0}))
    assert device.job_claim() == device.JobClaim(gpus=0, lock_dir="results/.gpu_locks")


# --- make_loaders -------------------------------------------------------------------------------


@pytest.mark.parametrize("n, bs, threads", [(37, 8, 1), (20, 5, 1), (23, 4, 4)])
def test_train_order_equals_todays_dataloader_for_any_seed(n, bs, threads):
    """Bit-identical models need the same batches: same torch seed -> same shuffled order, epoch after epoch
    (threads=4 gives one loader worker on the CPU)."""
    ds = dataset(n)
    train, val = make_loaders(ds, ds, batch_size=bs, device=CPU, threads=threads)
    today = DataLoader(ds, batch_size=bs, shuffle=True, **loader_kwargs(CPU, threads))
    for seed in (0, 1, 1234):
        torch.manual_seed(seed)
        ours = [epoch_ids(train) for _ in range(2)]
        torch.manual_seed(seed)
        theirs = [epoch_ids(today) for _ in range(2)]
        assert ours == theirs
        assert ours[0] != ours[1], "a new order each epoch"
    assert epoch_ids(val) == [list(range(i, min(i + bs, n))) for i in range(0, n, bs)], "val is in dataset order"


def test_a_lone_last_train_item_is_dropped_and_only_that():
    ds9, ds10 = dataset(9), dataset(10)
    train, val = make_loaders(ds9, ds9, batch_size=4, device=CPU, threads=1)
    assert [len(b) for b in epoch_ids(train)] == [4, 4]
    assert [len(b) for b in epoch_ids(val)] == [4, 4, 1], "validation keeps every item"
    train, _ = make_loaders(ds10, ds10, batch_size=4, device=CPU, threads=1)
    assert [len(b) for b in epoch_ids(train)] == [4, 4, 2]
    train, _ = make_loaders(ds9, ds9, batch_size=4, device=CPU, threads=1, drop_lone=False)
    assert sorted(i for batch in epoch_ids(train) for i in batch) == list(range(9))


def test_collate_fn_goes_to_both_loaders_and_samplers_are_refused():
    def collate(items):
        return {"x": torch.stack([x for x, _ in items]), "n": len(items)}

    ds = dataset(6)
    train, val = make_loaders(ds, ds, batch_size=4, device=CPU, threads=1, collate_fn=collate)
    assert [b["n"] for b in val] == [4, 2] and sorted(b["n"] for b in train) == [2, 4]
    with pytest.raises(TypeError, match="batch_sampler"):
        make_loaders(ds, ds, batch_size=4, device=CPU, threads=1, batch_sampler=[[0, 1]])
    with pytest.raises(ValueError, match="batch_size"):
        make_loaders(ds, ds, batch_size=0, device=CPU, threads=1)


# --- fit_config ---------------------------------------------------------------------------------


def test_fit_config_from_a_config_block_and_the_job():
    params = {"epochs": 12, "patience": 3, "lr": 1e-3, "batch_size": 8}
    cfg = fit_config(params, monitor="val_auc", mode="max", job=Job(seed=9, bf16=False), min_delta=-1e-9)
    assert cfg == FitConfig(epochs=12, monitor="val_auc", mode="max", patience=3, min_delta=-1e-9, seed=9, bf16=False)
    cfg = fit_config({"epochs": 2, "grad_clip": 1}, monitor="val_loss", mode="min", job=Job())
    assert (cfg.patience, cfg.grad_clip, cfg.seed, cfg.bf16) == (0, 1.0, 0, True)


def test_fit_config_from_a_dataclass_and_extra_fields():
    @dataclasses.dataclass
    class UNet:
        epochs: int = 4
        patience: int = 1

    cfg = fit_config(UNet(), monitor="val_dice", mode="max", job=Job(seed=2), grad_clip=0.5)
    assert (cfg.epochs, cfg.patience, cfg.seed, cfg.grad_clip) == (4, 1, 2, 0.5)


def test_fit_config_rejects_a_block_without_epochs_and_a_bad_mode():
    with pytest.raises(ValueError, match="epochs"):
        fit_config({"patience": 2}, monitor="val_auc", mode="max", job=Job())
    with pytest.raises(ValueError, match="mode"):
        fit_config({"epochs": 2}, monitor="val_auc", mode="maximum", job=Job())


# --- tracking -----------------------------------------------------------------------------------


def test_tracking_none_when_the_job_does_not_track():
    assert tracking(Job(track=False), "oct", "vgg16", {"lr": 1}) is None


def test_tracking_carries_the_rule_params_and_tags():
    params = {"lr": 0.01, "augment": {"hflip": True}}
    t = tracking(Job(rule="oct_train", seed=3), "oct", "vgg16", params, tags={"variant": "a"})
    assert t == Tracking(experiment="oct", run_name="vgg16", params=params, tags={"variant": "a"}, rule="oct_train")
    params["lr"] = 5  # the Tracking holds its own copy
    assert t.params["lr"] == 0.01

    @dataclasses.dataclass
    class P:
        depth: int = 3

    assert tracking(Job(), "brats_segmentation", "unet", P()).params == {"depth": 3}
