"""Device choice and the CUDA/CPU differences every training and inference job shares.

A Snakemake job records what its rule claims (``medflow.train.Job.from_snakemake`` calls
:func:`set_job_claim`: one workflow script process is one job). :func:`select_device` then

- runs on the CPU when the rule claims no GPU (``compute.gpu: 0``) or the machine has no NVIDIA GPU
  at all (the demo claims ``gpu=1`` on CPU-only machines);
- fails with one line (:class:`DeviceError`) when the rule claims a GPU, one is there (a device node,
  ``nvidia-smi``, NVML) and CUDA still cannot be used, e.g. a driver older than torch's CUDA build needs;
- otherwise gives the job a GPU of its own: with ``CUDA_VISIBLE_DEVICES`` set by SLURM (or naming one
  GPU) the first visible one, else the first GPU whose lock file under ``<results>/.gpu_locks`` no
  other job holds (``fcntl.flock``, held for the process's lifetime, released by the kernel when it
  ends however it ends).

Code outside a Snakemake job (tests, benchmarks, notebooks) keeps the plain behaviour: CUDA's current
device when torch sees a GPU, the CPU otherwise, no locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from medflow.jobs import JobError

log = logging.getLogger(__name__)

# The oldest NVIDIA Linux driver each CUDA major release runs on (CUDA minor version compatibility,
# docs.nvidia.com/deploy/cuda-compatibility): torch's wheels bundle the CUDA runtime, the driver is the host's.
MIN_DRIVER = {11: "450", 12: "525", 13: "580"}
LOCK_DIR_ENV = "MEDFLOW_GPU_LOCKS"  # one lock folder for several result folders on one machine
POLL_S = 5.0  # how often a job waiting for a free GPU looks again


class DeviceError(JobError, RuntimeError):
    """The job's rule claims a GPU that this process cannot use; the message is one line that says why
    (a workflow script prints it as ``ERROR: <message>``, without a traceback)."""


@dataclass(frozen=True)
class JobClaim:
    """What the running job's rule claims: ``gpus`` its ``gpu`` resource (None: not a Snakemake job),
    ``loader_workers`` its DataLoader workers on CUDA (None: all its threads but one), ``lock_dir``
    where GPU lock files live."""

    gpus: int | None = None
    loader_workers: int | None = None
    lock_dir: str = "results/.gpu_locks"


_claim = JobClaim()
_held: tuple[int, int] | None = None  # (torch device index, lock file descriptor) this process holds
_bf16_warned: set[int | None] = set()


def set_job_claim(claim: JobClaim) -> None:
    """Record what this process's rule claims (see the module docstring)."""
    global _claim
    _claim = claim


def job_claim() -> JobClaim:
    return _claim


def select_device(threads: int = 1, prefer: str = "auto") -> torch.device:
    """The device of this job: ``cuda:<index>`` of its own GPU, or the CPU (see the module docstring).

    ``threads`` is the rule's ``threads``: torch's intra-op pool on the CPU, loader workers anywhere.
    ``prefer="cpu"`` always takes the CPU. Raises :class:`DeviceError` when the rule claims a GPU that
    is there but unusable.
    """
    claim = _claim
    if prefer == "cpu":
        return _cpu(threads, "asked for")
    if claim.gpus == 0:
        return _cpu(threads, "the rule claims no GPU (compute.gpu: 0)")
    if not torch.cuda.is_available():
        problem = cuda_problem()
        if problem is None:
            return _cpu(threads, "no NVIDIA GPU on this machine")
        if claim.gpus:  # a claimed GPU silently replaced by the CPU would train for days
            raise DeviceError(
                f"the rule claims a GPU but {problem}; to run on the CPU on purpose, set compute.gpu: 0 "
                "or CUDA_VISIBLE_DEVICES="
            )
        log.warning("CUDA is unusable (%s): running on the CPU", problem)
        return _cpu(threads, "CUDA unusable")
    index = _gpu_index(claim)
    torch.cuda.set_device(index)  # so code that says plain "cuda" (and pinned memory) lands on this GPU too
    device = torch.device("cuda", index)
    log.info(
        "device: cuda:%d %s (CUDA_VISIBLE_DEVICES=%s)",
        index,
        torch.cuda.get_device_name(device),
        os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
    )
    return device


def _cpu(threads: int, why: str) -> torch.device:
    # Loader workers take their share of the rule's threads; torch computes on the rest, so a
    # job never runs more busy threads than it claimed from Snakemake.
    cpu = torch.device("cpu")
    torch.set_num_threads(max(1, threads - _workers(cpu, threads)))
    log.info("device: cpu (%d threads; %s)", torch.get_num_threads(), why)
    return cpu


# --- why CUDA is unusable ----------------------------------------------------------------------


def cuda_problem() -> str | None:
    """Why CUDA cannot be used although an NVIDIA GPU is in sight, as one line; None when none is
    (no device node, no ``nvidia-smi``, NVML counts none, or ``CUDA_VISIBLE_DEVICES`` hides them all)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "NoDevFiles"):
        return None  # hidden on purpose
    seen = _gpu_evidence()
    if seen is None:
        return None
    if torch.version.cuda is None:
        return f"{seen} and torch {torch.__version__} is a CPU-only build"
    reason = "torch.cuda.is_available() is False"
    try:
        torch.cuda.init()
    except Exception as e:  # torch says why: no driver, a driver too old, no device for this build...
        reason = _first_line(str(e)) or type(e).__name__
    major = int(torch.version.cuda.split(".")[0])
    need = f"torch {torch.__version__} is built for CUDA {torch.version.cuda}"
    if major in MIN_DRIVER:
        need += f", which needs NVIDIA driver >= {MIN_DRIVER[major]}"
    driver = _driver_version()
    return f"{seen} yet CUDA is unusable: {reason} ({need}{f'; installed: {driver}' if driver else ''})"


def _gpu_evidence() -> str | None:
    """What shows an NVIDIA GPU or driver on this machine, independent of whether CUDA initialises."""
    nodes = _device_nodes()
    if nodes:
        return f"{nodes[0]} exists"
    try:
        n = torch.cuda.device_count()  # NVML where it answers, without initialising CUDA
    except Exception:
        n = 0
    if n > 0:
        return f"torch counts {n} GPU(s)"
    if _nvidia_smi():
        return "nvidia-smi is installed"
    return None


def _device_nodes() -> list[str]:
    return sorted(glob.glob("/dev/nvidia[0-9]*"))


def _nvidia_smi() -> str | None:
    return shutil.which("nvidia-smi")


def _driver_version() -> str | None:
    smi = _nvidia_smi()
    if not smi:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    line = _first_line(out.stdout)
    return f"driver {line}" if out.returncode == 0 and line else None


def _first_line(text: str, limit: int = 240) -> str:
    lines = [s.strip() for s in text.strip().splitlines() if s.strip()]
    return lines[0][:limit] if lines else ""


# --- one GPU per job ---------------------------------------------------------------------------


def _gpu_index(claim: JobClaim) -> int:
    """The torch index of this job's GPU; taken once per process and kept."""
    global _held
    if _held is not None:
        return _held[0]
    if claim.gpus is None:  # not a Snakemake job: no locks
        return torch.cuda.current_device()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = _lock_names(visible, torch.cuda.device_count())
    if visible is not None and ("SLURM_JOB_ID" in os.environ or len(names) <= 1):
        return 0  # SLURM (or the user) gave this job its GPU: its first visible one is it
    index, fd = _acquire(names, Path(os.environ.get(LOCK_DIR_ENV) or claim.lock_dir))
    _held = (index, fd)
    return index


def _lock_names(visible: str | None, count: int) -> list[str]:
    """One lock name per torch device index: the index itself, or the ``CUDA_VISIBLE_DEVICES`` entry
    (a number or a UUID) it stands for, so jobs seeing different subsets still exclude each other."""
    if visible is None:
        return [str(i) for i in range(count)]
    entries = [e.strip() for e in visible.split(",") if e.strip()][:count]
    return [re.sub(r"[^A-Za-z0-9_.-]", "_", e) for e in entries]


def _acquire(names: list[str], lock_dir: Path) -> tuple[int, int]:
    """Lock the first free GPU of ``names`` (waiting while every one is held): (index, descriptor)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    waiting = False
    while True:
        for index, name in enumerate(names):
            path = lock_dir / f"gpu-{name}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)  # who holds it, for a person looking at the folder
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
            log.info("GPU %s is this job's (lock %s)", name, path)
            return index, fd
        if not waiting:
            log.info("all %d GPUs are held by other jobs (locks in %s): waiting for one", len(names), lock_dir)
            waiting = True
        time.sleep(POLL_S)


def _release() -> None:
    """Give the GPU lock back (tests; a job keeps it until it exits)."""
    global _held
    if _held is not None:
        os.close(_held[1])
        _held = None


# --- per-device behaviour ----------------------------------------------------------------------


def describe(device: torch.device) -> str:
    """A short name for logs and MLflow tags: 'cpu' or 'cuda:<gpu name>'."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return "cpu"


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: CUDA compute capability 8.0 or newer (Ampere on).

    This is ``torch.cuda.is_bf16_supported(including_emulation=False)``, asked of ``device`` rather
    than of the current device; the default ``including_emulation=True`` also says yes for older GPUs,
    which emulate bf16 slowly.
    """
    if device.type != "cuda":
        return False
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def autocast(device: torch.device, bf16: bool = True):
    """bf16 autocast on CUDA GPUs with native bf16 (no loss scaling needed, unlike fp16); full
    precision on older GPUs and on the CPU, so CPU runs stay exactly reproducible. Training,
    validation, evaluation and prediction all enter it with the same ``compute.bf16``; logits and
    probabilities come out in float32 from heads wrapped by :func:`fp32_head`."""
    if bf16 and device.type == "cuda":
        if bf16_native(device):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        if device.index not in _bf16_warned:  # said once per device
            _bf16_warned.add(device.index)
            log.info("bf16 off: %s has no native bf16 (compute capability < 8.0); float32", describe(device))
    return contextlib.nullcontext()


def fp32_head(module: torch.nn.Module) -> torch.nn.Module:
    """Make ``module`` (a model's head: its last layer(s) before the sigmoid/softmax) run in float32
    under any autocast: its floating inputs are cast to float32 and autocast is off inside it.

    The body keeps bf16 speed; logits, and the probabilities taken from them, keep float32 precision
    (no ties from bf16's 8-bit mantissa in AUCs, no label flipped at a 0.5 threshold). Done with
    forward hooks, so the state dict and checkpoints are unchanged. Returns ``module``. A no-op on the CPU.
    """
    stack: list = []

    def enter(mod, args, kwargs):
        device_type = next((a.device.type for a in (*args, *kwargs.values()) if torch.is_tensor(a)), "cuda")
        off = torch.autocast(device_type, enabled=False)
        off.__enter__()
        stack.append(off)
        return tuple(_float32(a) for a in args), {k: _float32(v) for k, v in kwargs.items()}

    def leave(mod, args, kwargs, output):
        if stack:  # empty only when an earlier pre-hook raised before ``enter`` ran
            stack.pop().__exit__(None, None, None)

    module.register_forward_pre_hook(enter, with_kwargs=True)
    module.register_forward_hook(leave, with_kwargs=True, always_call=True)
    return module


def _float32(x):
    return x.float() if torch.is_tensor(x) and x.is_floating_point() else x


def loader_kwargs(device: torch.device, threads: int, *, cuda_workers: int | None = None) -> dict:
    """DataLoader settings: workers from the rule's threads (on CUDA ``cuda_workers``, else the job's
    ``loader_workers``, where given), pinned memory on CUDA so host-to-device copies can be non-blocking.

    Workers are not persistent: each epoch's iterator starts them again, seeded from torch's global
    generator, which ``fit`` seeds from (seed, epoch). Persistent workers would keep the first epoch's
    random streams, so a resumed run would draw other augmentations (and its first epoch another
    shuffle) than an uninterrupted one. Restarting a forked worker costs milliseconds per epoch.
    """
    workers = _workers(device, threads, cuda_workers)
    return {"num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": False}


def _workers(device: torch.device, threads: int, cuda_workers: int | None = None) -> int:
    """On CUDA the main process only feeds the GPU: ``cuda_workers`` (or the job's ``loader_workers``)
    load data, capped at the CPUs this process may run on less one; without either, all threads but
    one. On the CPU the model is the bottleneck: a quarter of the threads load data (none below 4)."""
    if device.type == "cuda":
        wanted = cuda_workers if cuda_workers is not None else _claim.loader_workers
        if wanted is None:
            return max(0, threads - 1)
        # SLURM and taskset confine a job to its CPUs: more workers than those would only contend.
        return max(0, min(int(wanted), len(os.sched_getaffinity(0)) - 1))
    return threads // 4


def to_device(batch, device: torch.device):
    """Move a batch (tensor, or nested list/tuple/dict of them) to ``device`` without blocking."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
