"""medflow.train.device: the device, torch's threads, the loader settings, autocast and batch moving."""

import logging

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from medflow.train.device import _workers, autocast, describe, loader_kwargs, select_device, to_device

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only a name: building and comparing it needs no GPU


@pytest.fixture
def restore_threads():
    """select_device sets torch's global thread count; the test machine is shared, so put it back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# --- select_device ------------------------------------------------------------------------------


@pytest.mark.parametrize("threads, torch_threads", [(1, 1), (3, 3), (4, 3), (8, 6), (9, 7), (0, 1)])
def test_cpu_computes_on_the_threads_the_loader_workers_leave(no_gpu, restore_threads, threads, torch_threads):
    """A job never runs more busy threads than its rule's ``threads``, and always at least one."""
    assert select_device(threads) == CPU
    assert torch.get_num_threads() == torch_threads
    assert torch.get_num_threads() + loader_kwargs(CPU, threads)["num_workers"] <= max(1, threads)


def test_prefer_cpu_wins_over_a_visible_gpu(monkeypatch, restore_threads):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device(8, prefer="cpu") == CPU
    assert torch.get_num_threads() == 6


def test_a_visible_gpu_is_chosen_and_logged_with_cuda_visible_devices(monkeypatch, restore_threads, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake H100")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    torch.set_num_threads(2)
    with caplog.at_level(logging.INFO, logger="medflow.train.device"):
        assert select_device(8) == CUDA
    assert torch.get_num_threads() == 2, "on CUDA the workers feed the GPU; torch's CPU pool is left alone"
    assert caplog.messages == ["device: cuda Fake H100 (CUDA_VISIBLE_DEVICES=3)"]


def test_describe_names_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake H100")
    assert describe(CPU) == "cpu"
    assert describe(CUDA) == "cuda:Fake H100"


# --- loader_kwargs ------------------------------------------------------------------------------


@pytest.mark.parametrize("threads, workers", [(1, 0), (3, 0), (4, 1), (7, 1), (8, 2), (16, 4)])
def test_cpu_loads_with_a_quarter_of_the_threads(threads, workers):
    kw = loader_kwargs(CPU, threads)
    assert kw == {"num_workers": workers, "pin_memory": False, "persistent_workers": workers > 0}
    assert _workers(CPU, threads) == workers


@pytest.mark.parametrize("threads, workers", [(0, 0), (1, 0), (2, 1), (8, 7)])
def test_cuda_loads_with_all_threads_but_the_one_feeding_the_gpu(threads, workers):
    assert _workers(CUDA, threads) == workers
    kw = loader_kwargs(CUDA, threads)
    assert kw == {"num_workers": workers, "pin_memory": True, "persistent_workers": workers > 0}


@pytest.mark.parametrize("threads", [1, 4])
def test_loader_kwargs_make_a_valid_dataloader(threads):
    """persistent_workers without workers is an error of DataLoader itself, so it must follow the workers."""
    ds = TensorDataset(torch.arange(4.0))
    DataLoader(ds, batch_size=2, **loader_kwargs(CPU, threads))


# --- autocast -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bf16", [True, False])
def test_autocast_on_the_cpu_keeps_full_precision(bf16):
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with autocast(CPU, bf16=bf16):
        out = a @ b
        assert not torch.is_autocast_enabled("cpu")
    assert out.dtype == torch.float32
    assert torch.equal(out, a @ b), "CPU runs are exactly what they are without autocast"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_autocast_on_cuda_is_bf16_unless_turned_off():
    a, b = torch.randn(8, 8, device=CUDA), torch.randn(8, 8, device=CUDA)
    with autocast(CUDA):
        on = a @ b
    with autocast(CUDA, bf16=False):
        off = a @ b
    assert on.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    assert off.dtype == torch.float32


# --- to_device ----------------------------------------------------------------------------------


def test_to_device_moves_nested_batches_and_keeps_their_types():
    # The meta device stands in for a GPU: a move there is visible without one.
    meta = torch.device("meta")
    batch = {"x": torch.ones(2, 3), "pair": (torch.zeros(2), [torch.arange(2), 7]), "name": "case_001"}
    out = to_device(batch, meta)
    assert type(out) is dict and set(out) == {"x", "pair", "name"}
    assert out["x"].device == meta and out["x"].shape == (2, 3)
    assert type(out["pair"]) is tuple and type(out["pair"][1]) is list
    assert out["pair"][0].device == meta and out["pair"][1][0].device == meta
    assert out["pair"][1][1] == 7 and out["name"] == "case_001", "what is not a tensor passes through"
    assert batch["x"].device == CPU, "the input batch is not changed"
    assert to_device(torch.ones(1), meta).device == meta
