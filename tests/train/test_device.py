"""medflow.train.device: the device (one GPU per job, a claimed GPU never silently replaced by the CPU),
torch's threads, the loader settings, bf16 where it is native, float32 heads and batch moving.

No GPU is needed: torch.cuda's answers are mocked, and GPU locks are real files in tmp_path."""

import contextlib
import fcntl
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from medflow.jobs import JobError
from medflow.train import device as dev
from medflow.train.device import (
    DeviceError,
    JobClaim,
    _workers,
    autocast,
    bf16_native,
    describe,
    fp32_head,
    loader_kwargs,
    select_device,
    set_job_claim,
    to_device,
)

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only a name: building and comparing it needs no GPU
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch):
    """Each test starts as a new job process: no claim recorded, no GPU held; torch's threads put back
    (the test machine is shared); no NVIDIA device in sight unless a test says so."""
    before = torch.get_num_threads()
    monkeypatch.setattr(dev, "_claim", JobClaim())
    monkeypatch.setattr(dev, "_held", None)
    monkeypatch.setattr(dev, "_bf16_warned", set())
    monkeypatch.setattr(dev, "_device_nodes", lambda: [])
    monkeypatch.setattr(dev, "_nvidia_smi", lambda: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", dev.LOCK_DIR_ENV):
        monkeypatch.delenv(var, raising=False)
    yield
    dev._release()
    torch.set_num_threads(before)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def gpus(monkeypatch):
    """A machine with ``n`` working GPUs; returns the list of indices passed to set_device."""
    chosen = []

    def make(n=2, name="Fake H100"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        return chosen

    return make


def claim(tmp_path, gpus=1, **kw):
    set_job_claim(JobClaim(gpus=gpus, lock_dir=str(tmp_path / "locks"), **kw))


# --- select_device: the CPU -----------------------------------------------------------------------


@pytest.mark.parametrize("threads, torch_threads", [(1, 1), (3, 3), (4, 3), (8, 6), (9, 7), (0, 1)])
def test_cpu_computes_on_the_threads_the_loader_workers_leave(no_gpu, threads, torch_threads):
    """A job never runs more busy threads than its rule's ``threads``, and always at least one."""
    assert select_device(threads) == CPU
    assert torch.get_num_threads() == torch_threads
    assert torch.get_num_threads() + loader_kwargs(CPU, threads)["num_workers"] <= max(1, threads)


def test_prefer_cpu_wins_over_a_visible_gpu(gpus):
    gpus()
    assert select_device(8, prefer="cpu") == CPU
    assert torch.get_num_threads() == 6


def test_a_rule_claiming_no_gpu_runs_on_the_cpu_beside_a_working_gpu(gpus, tmp_path):
    """compute.gpu: 0: Snakemake does not count the job against the GPUs, so it must not use one."""
    chosen = gpus()
    claim(tmp_path, gpus=0)
    assert select_device(4) == CPU
    assert chosen == [] and not (tmp_path / "locks").exists()


def test_a_claimed_gpu_on_a_machine_without_any_runs_on_the_cpu_and_says_so(no_gpu, tmp_path, caplog):
    """The demo claims gpu=1 on CPU-only machines: that is no error."""
    claim(tmp_path)
    with caplog.at_level(logging.INFO, logger="medflow.train.device"):
        assert select_device(2) == CPU
    assert caplog.messages == ["device: cpu (2 threads; no NVIDIA GPU on this machine)"]


# --- select_device: a GPU that is there but unusable ---------------------------------------------


DRIVER_TOO_OLD = (
    "The NVIDIA driver on your system is too old (found version 12020). Please update your GPU driver by "
    "downloading and installing a new version from the URL: http://www.nvidia.com/Download/index.aspx\nmore"
)


@pytest.fixture
def broken_cuda(monkeypatch, no_gpu):
    """A GPU's device node is there, CUDA does not initialise and torch says why."""

    def init():
        raise RuntimeError(DRIVER_TOO_OLD)

    monkeypatch.setattr(dev, "_device_nodes", lambda: ["/dev/nvidia0"])
    monkeypatch.setattr(dev, "_driver_version", lambda: "driver 470.256.02")
    monkeypatch.setattr(torch.cuda, "init", init)
    monkeypatch.setattr(torch.version, "cuda", "13.2")


def test_a_claimed_gpu_that_cuda_cannot_use_fails_with_one_line_naming_the_reason(broken_cuda, tmp_path):
    claim(tmp_path)
    with pytest.raises(DeviceError) as err:
        select_device(2)
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, JobError), "printed as one ERROR line by medflow.jobs"
    for part in (
        "the rule claims a GPU but /dev/nvidia0 exists",
        "The NVIDIA driver on your system is too old (found version 12020)",
        "built for CUDA 13.2, which needs NVIDIA driver >= 580",
        "installed: driver 470.256.02",
        "compute.gpu: 0",
    ):
        assert part in msg, part


@pytest.mark.parametrize(
    "evidence",
    [
        {"_device_nodes": lambda: [], "_nvidia_smi": lambda: "/usr/bin/nvidia-smi"},
        {"_device_nodes": lambda: [], "count": 1},
    ],
    ids=["nvidia-smi installed", "NVML counts a GPU"],
)
def test_other_signs_of_a_gpu_also_make_an_unusable_cuda_an_error(broken_cuda, tmp_path, monkeypatch, evidence):
    for name, value in evidence.items():
        if name == "count":
            monkeypatch.setattr(torch.cuda, "device_count", lambda n=value: n)
        else:
            monkeypatch.setattr(dev, name, value)
    claim(tmp_path)
    with pytest.raises(DeviceError, match="too old"):
        select_device(2)


def test_a_cpu_only_torch_on_a_gpu_machine_is_named(broken_cuda, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    claim(tmp_path)
    with pytest.raises(DeviceError, match="CPU-only build"):
        select_device(2)


def test_gpus_hidden_on_purpose_or_no_claim_run_on_the_cpu(broken_cuda, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    claim(tmp_path)
    assert select_device(2) == CPU  # CUDA_VISIBLE_DEVICES= : the user's way to say "CPU"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    set_job_claim(JobClaim())  # not a Snakemake job (a notebook, a benchmark): warn, do not fail
    with caplog.at_level(logging.WARNING, logger="medflow.train.device"):
        assert select_device(2) == CPU
    assert "too old" in caplog.text


# --- select_device: one GPU per job ---------------------------------------------------------------


def test_outside_a_job_the_current_gpu_is_chosen_and_logged(gpus, monkeypatch, caplog):
    chosen = gpus()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    torch.set_num_threads(2)
    with caplog.at_level(logging.INFO, logger="medflow.train.device"):
        assert select_device(8) == torch.device("cuda", 0)
    assert torch.get_num_threads() == 2, "on CUDA the workers feed the GPU; torch's CPU pool is left alone"
    assert caplog.messages == ["device: cuda:0 Fake H100 (CUDA_VISIBLE_DEVICES=3)"]
    assert chosen == [0], "set as the current device, so plain 'cuda' means this GPU too"


def test_each_job_takes_the_first_gpu_no_other_job_holds(gpus, tmp_path):
    chosen = gpus(n=3)
    claim(tmp_path)
    locks = tmp_path / "locks"
    locks.mkdir()
    other = os.open(locks / "gpu-0.lock", os.O_RDWR | os.O_CREAT)  # another job holds GPU 0
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert select_device(2) == torch.device("cuda", 1)
        assert select_device(2) == torch.device("cuda", 1), "a process keeps its GPU"
        assert chosen == [1, 1]
        probe = os.open(locks / "gpu-1.lock", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held for the job's lifetime
        os.close(probe)
        assert f"pid {os.getpid()}" in (locks / "gpu-1.lock").read_text()
    finally:
        os.close(other)


def test_visible_gpus_are_locked_by_their_names(gpus, tmp_path, monkeypatch):
    """A CUDA_VISIBLE_DEVICES of several GPUs on a workstation: torch index 0 is GPU '5' there."""
    gpus(n=2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,GPU-1a2b")
    monkeypatch.setenv(dev.LOCK_DIR_ENV, str(tmp_path / "machine_locks"))
    claim(tmp_path)
    assert select_device(2) == torch.device("cuda", 0)
    assert sorted(p.name for p in (tmp_path / "machine_locks").iterdir()) == ["gpu-5.lock"]


@pytest.mark.parametrize("env", [{"CUDA_VISIBLE_DEVICES": "7"}, {"CUDA_VISIBLE_DEVICES": "2,3", "SLURM_JOB_ID": "41"}])
def test_a_gpu_given_by_slurm_or_the_user_is_used_without_locks(gpus, tmp_path, monkeypatch, env):
    gpus(n=len(env["CUDA_VISIBLE_DEVICES"].split(",")))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    claim(tmp_path)
    assert select_device(2) == torch.device("cuda", 0)
    assert not (tmp_path / "locks").exists()


JOB = textwrap.dedent(
    """
    import sys, torch
    from medflow.train import device as dev
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 2
    torch.cuda.set_device = lambda i: None
    torch.cuda.get_device_name = lambda d=None: "Fake"
    dev.POLL_S = 0.05
    dev.set_job_claim(dev.JobClaim(gpus=1, lock_dir=sys.argv[1]))
    print(dev.select_device(1).index, flush=True)
    sys.stdin.readline()  # the job runs until the test ends it
    """
)


def test_concurrent_job_processes_get_different_gpus_and_a_third_waits_for_a_free_one(tmp_path):
    def start():
        return subprocess.Popen(
            [sys.executable, "-c", JOB, str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": SRC},
        )

    a = start()
    first = a.stdout.readline().strip()
    b = start()
    second = b.stdout.readline().strip()
    c = start()
    try:
        assert (first, second) == ("0", "1")
        with pytest.raises(subprocess.TimeoutExpired):
            c.communicate(timeout=3)  # both GPUs held: the third job waits
        a.kill()  # a job that dies, however it dies, gives its GPU back
        a.wait()
        assert c.stdout.readline().strip() == "0"
    finally:
        for p in (a, b, c):
            with contextlib.suppress(OSError, ValueError):
                p.stdin.close()
            p.kill()
            p.wait()


# --- describe, bf16, autocast, fp32_head ------------------------------------------------------


def test_describe_names_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake H100")
    assert describe(CPU) == "cpu"
    assert describe(CUDA) == "cuda:Fake H100"


@pytest.fixture
def capability(monkeypatch):
    def make(major, minor=0):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"Fake sm_{major}{minor}")
        # What torch.autocast itself checks for "cuda" (it counts emulated bf16 as support).
        monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)

    return make


@pytest.mark.parametrize("major, native", [(6, False), (7, False), (8, True), (9, True), (12, True)])
def test_bf16_only_where_the_gpu_computes_it_natively(capability, major, native, caplog):
    """Volta/Turing (sm_70/75) emulate bf16: is_bf16_supported() says yes, yet the run is fp32 there."""
    capability(major, 5 if major == 7 else 0)
    assert bf16_native(CUDA) is native
    with caplog.at_level(logging.INFO, logger="medflow.train.device"):
        ctx = autocast(CUDA)
        autocast(CUDA)
    if native:
        assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
        assert caplog.messages == []
    else:
        assert isinstance(ctx, contextlib.nullcontext)
        assert len(caplog.messages) == 1 and "no native bf16" in caplog.messages[0], "said once"
    assert isinstance(autocast(CUDA, bf16=False), contextlib.nullcontext)
    assert not bf16_native(CPU)


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
    assert on.dtype == (torch.bfloat16 if bf16_native(CUDA) else torch.float32)
    assert off.dtype == torch.float32


def test_fp32_head_keeps_logits_in_float32_under_autocast():
    """CPU bf16 autocast stands in for CUDA's: the body computes in bf16, the head in float32."""
    torch.manual_seed(0)
    body, head = torch.nn.Linear(16, 16), torch.nn.Linear(16, 1)
    model = torch.nn.Sequential(body, torch.nn.ReLU(), head)
    keys = list(model.state_dict())
    x = torch.randn(64, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16  # without it: bf16 logits
        fp32_head(head)
        hidden = torch.relu(body(x))
        out = model(x)
        assert torch.is_autocast_enabled("cpu"), "autocast is back on after the head"
    assert hidden.dtype == torch.bfloat16 and out.dtype == torch.float32
    assert torch.equal(out, torch.nn.functional.linear(hidden.float(), head.weight, head.bias))
    assert list(model.state_dict()) == keys, "checkpoints are unchanged"
    plain = torch.nn.functional.linear(torch.relu(body(x)), head.weight, head.bias)
    assert torch.equal(model(x), plain), "outside autocast nothing changes"


def test_fp32_head_restores_autocast_when_the_head_raises():
    head = fp32_head(torch.nn.Linear(4, 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError):
            head(torch.randn(2, 5))  # wrong width
        assert torch.is_autocast_enabled("cpu")


# --- loader_kwargs ------------------------------------------------------------------------------


@pytest.mark.parametrize("threads, workers", [(1, 0), (3, 0), (4, 1), (7, 1), (8, 2), (16, 4)])
def test_cpu_loads_with_a_quarter_of_the_threads(threads, workers):
    kw = loader_kwargs(CPU, threads)
    assert kw == {"num_workers": workers, "pin_memory": False, "persistent_workers": False}
    assert _workers(CPU, threads) == workers
    assert loader_kwargs(CPU, threads, cuda_workers=6)["num_workers"] == workers, "cuda_workers is for CUDA"


@pytest.mark.parametrize("threads, workers", [(0, 0), (1, 0), (2, 1), (8, 7)])
def test_cuda_loads_with_all_threads_but_the_one_feeding_the_gpu(threads, workers):
    assert _workers(CUDA, threads) == workers
    kw = loader_kwargs(CUDA, threads)
    assert kw == {"num_workers": workers, "pin_memory": True, "persistent_workers": False}


def test_cuda_loader_workers_from_the_job_or_the_caller_capped_at_the_cpus_it_may_use(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    claim(tmp_path, loader_workers=4)
    assert _workers(CUDA, 2) == 4, "the job's loader_workers, beyond its 2 threads"
    assert _workers(CUDA, 2, cuda_workers=6) == 6, "the caller's wins"
    assert _workers(CPU, 2) == 0, "the CPU keeps its quarter of the threads"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})  # e.g. a SLURM job's 3 CPUs
    assert _workers(CUDA, 2) == 2


@pytest.mark.parametrize("threads", [1, 4])
def test_loader_kwargs_make_a_valid_dataloader(threads):
    ds = TensorDataset(torch.arange(4.0))
    DataLoader(ds, batch_size=2, **loader_kwargs(CPU, threads))


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
