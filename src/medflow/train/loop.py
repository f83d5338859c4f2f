"""The one training loop every medflow model trains through.

It owns what all models share: epochs, early stopping on a validation metric, the best-metric
checkpoint, a resume file written after every epoch (a killed job restarts from its last finished
epoch), device and bf16 handling, a line of progress per epoch, and MLflow logging. What differs
between models comes in as two callables:

- ``train_step(model, batch) -> loss``: one forward pass on a batch already on the device; the
  loop runs it under autocast, then does backward and the optimiser step.
- ``evaluate(model, loader) -> {name: float}``: validation metrics (the loop adds the ``val_``
  prefix); it runs under ``torch.no_grad()``, autocast and ``model.eval()``.

Checkpoints hold only tensors and plain data, so they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medflow import io
from medflow.train.device import autocast, describe, to_device

log = logging.getLogger(__name__)


@dataclass
class FitConfig:
    epochs: int
    monitor: str  # validation metric to select on, with its prefix, e.g. "val_auc", "val_dice"
    mode: str = "max"  # "max" or "min"
    patience: int = 0  # epochs without improvement before stopping; 0 never stops early
    min_delta: float = 0.0
    seed: int = 0
    bf16: bool = True
    grad_clip: float | None = None
    # cuDNN tries its algorithms once per input shape and keeps the fastest: a win when every batch has
    # one shape (the U-Net's fixed patches), a loss when shapes vary (MRNet's exams). CUDA only.
    cudnn_benchmark: bool = False


@dataclass
class Tracking:
    """Where the run goes in MLflow; ``params`` are logged once, when the run starts."""

    experiment: str
    run_name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    rule: str | None = None


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    history: list[dict[str, float]]
    stopped_early: bool
    run_id: str | None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _improved(score: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(score)
    return score > best + min_delta if mode == "max" else score < best - min_delta


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader,
    val_loader,
    *,
    train_step: Callable[[torch.nn.Module, Any], torch.Tensor],
    evaluate: Callable[[torch.nn.Module, Any], Mapping[str, float]],
    cfg: FitConfig,
    device: torch.device,
    checkpoint_path: str | Path,
    resume_path: str | Path | None = None,
    scheduler=None,
    checkpoint_meta: Mapping[str, Any] | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    tracking: Tracking | None = None,
    curves_path: str | Path | None = None,
) -> FitResult:
    """Train ``model`` and write the best-``cfg.monitor`` checkpoint to ``checkpoint_path``.

    ``resume_path`` (default: beside the checkpoint) holds the state after the last finished epoch;
    it is used only if its ``fingerprint`` (the caller's params) matches, and removed when training
    ends. ``checkpoint_meta`` (plain data: class names, model config...) is stored in the checkpoint.

    Nothing in an epoch waits for the GPU but its end: the train loss is summed on the device and read
    once per epoch (``evaluate`` should gather on the device too, as ``medflow.train.predict`` does).
    """
    checkpoint_path = Path(checkpoint_path)
    resume_path = Path(resume_path) if resume_path else checkpoint_path.with_name(checkpoint_path.name + ".resume")
    # The best weights so far live beside the resume file until training ends: Snakemake deletes a
    # failed job's outputs, so the declared checkpoint itself would not survive a kill.
    best_path = resume_path.with_name(resume_path.name + ".best")
    fp = json.dumps(io.to_plain(dict(fingerprint or {})), sort_keys=True, default=str)
    model.to(device)
    _configure_backends(cfg, device)

    state = {"epoch": 0, "best_score": None, "best_epoch": 0, "bad_epochs": 0, "history": [], "run_id": None}
    if resume_path.exists():
        # To the CPU first: load_state_dict copies weights onto the model's device and moves optimizer
        # state to each parameter's device itself, except what must stay on the host (Adam's ``step``
        # counters, unless fused/capturable); loaded onto the GPU, those would sync every step.
        saved = torch.load(resume_path, map_location="cpu", weights_only=True)
        if saved.get("fingerprint") == fp:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None and saved.get("scheduler") is not None:
                scheduler.load_state_dict(saved["scheduler"])
            state = {k: saved[k] for k in state}
            log.info("resuming from %s after epoch %d", resume_path, state["epoch"])
        else:
            log.warning("ignoring %s: it was written with other settings", resume_path)
    if state["epoch"] == 0:
        best_path.unlink(missing_ok=True)  # best weights of another run's settings

    def epoch_line(row: dict[str, float], seconds: float) -> str:
        vals = " ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch")
        best = float("nan") if state["best_score"] is None else state["best_score"]  # None until a finite score
        return (
            f"epoch {int(row['epoch'])}/{cfg.epochs} {vals} | best {best:.4f} @ {state['best_epoch']} | {seconds:.1f} s"
        )

    run_cm = _tracking_run(tracking, device, state["run_id"])
    with run_cm as run:
        run_id = run.info.run_id if run is not None else None
        state["run_id"] = run_id
        stopped_early = False
        if cfg.patience and state["bad_epochs"] >= cfg.patience:
            stopped_early = True  # a job killed after deciding to stop, before cleaning up
        epoch = state["epoch"]
        while epoch < cfg.epochs and not stopped_early:
            epoch += 1
            start = time.perf_counter()
            # Seeding per epoch makes a resumed run draw the same shuffles and augmentations as an
            # uninterrupted one.
            seed_everything(cfg.seed * 1000 + epoch)
            model.train()
            # Summed on the device in float64: one host sync per epoch, and on the CPU the very sum
            # ``total += float(loss)`` in Python floats gives.
            total, batches = None, 0
            for batch in train_loader:
                batch = to_device(batch, device)
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, cfg.bf16):
                    loss = train_step(model, batch)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                step_loss = loss.detach().to(torch.float64)
                total = step_loss if total is None else total + step_loss
                batches += 1
            model.eval()
            with torch.no_grad(), autocast(device, cfg.bf16):
                val = evaluate(model, val_loader)
            row = {"epoch": float(epoch), "train_loss": (0.0 if total is None else float(total)) / max(batches, 1)}
            row.update({f"val_{k}": float(v) for k, v in val.items()})
            row["lr"] = float(optimizer.param_groups[0]["lr"])
            if cfg.monitor not in row:
                raise KeyError(f"evaluate() returned {sorted(val)}, which lacks the monitored {cfg.monitor!r}")
            score = row[cfg.monitor]
            if scheduler is not None:
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(score)
                else:
                    scheduler.step()
            if _improved(score, state["best_score"], cfg.mode, cfg.min_delta):
                state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
                _save_checkpoint(model, best_path, epoch, cfg, score, checkpoint_meta, run_id)
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch
            state["history"].append(row)
            if run is not None:
                import mlflow

                mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch" and math.isfinite(v)}, step=epoch)
            log.info(epoch_line(row, time.perf_counter() - start))
            _save_resume(resume_path, model, optimizer, scheduler, state, fp)
            if cfg.patience and state["bad_epochs"] >= cfg.patience:
                log.info("early stop: no %s improvement for %d epochs", cfg.monitor, cfg.patience)
                stopped_early = True

        if best_path.exists():
            # Copied, not moved: a job killed before the resume file is removed restarts from it and
            # needs the best weights again (Snakemake deletes the failed job's checkpoint).
            with io.atomic_path(checkpoint_path) as tmp:
                shutil.copyfile(best_path, tmp)
        else:  # every epoch scored NaN: keep the last weights, say so
            log.warning("no epoch improved %s; saving the last epoch", cfg.monitor)
            _save_checkpoint(model, checkpoint_path, state["epoch"], cfg, float("nan"), checkpoint_meta, run_id)
        if curves_path is not None:
            plot_history(state["history"], curves_path, cfg.monitor)
        if run is not None:
            import mlflow

            mlflow.log_metrics(
                {
                    f"best_{cfg.monitor}": float("nan") if state["best_score"] is None else state["best_score"],
                    "best_epoch": state["best_epoch"],
                }
            )
            mlflow.log_artifact(str(checkpoint_path), artifact_path="checkpoint")
            if curves_path is not None:
                mlflow.log_artifact(str(curves_path), artifact_path="plots")
            mlflow.log_dict({"history": state["history"]}, "history.json")
    resume_path.unlink(missing_ok=True)
    best_path.unlink(missing_ok=True)  # after the resume file, which needs it
    return FitResult(state["best_epoch"], state["best_score"], state["history"], stopped_early, run_id)


def _configure_backends(cfg: FitConfig, device: torch.device) -> None:
    if cfg.cudnn_benchmark and device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # process-wide: one training job is one process


def _tracking_run(tracking: Tracking | None, device: torch.device, run_id: str | None):
    if tracking is None:
        import contextlib

        return contextlib.nullcontext(None)
    from medflow import tracking as tr

    tags = {"device": describe(device), **dict(tracking.tags)}
    return tr.run(
        tracking.experiment, tracking.run_name, params=tracking.params, tags=tags, rule=tracking.rule, run_id=run_id
    )


def _save_checkpoint(model, path: Path, epoch: int, cfg: FitConfig, score: float, meta, run_id) -> None:
    ckpt = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "epoch": epoch,
        "monitor": cfg.monitor,
        "score": float(score),
        "meta": io.to_plain(dict(meta or {})),
        "mlflow_run_id": run_id or "",
    }
    with io.atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def _save_resume(path: Path, model, optimizer, scheduler, state: dict, fp: str) -> None:
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "fingerprint": fp,
        **state,
    }
    with io.atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A medflow checkpoint: ``state_dict``, ``epoch``, ``monitor``, ``score``, ``meta``, ``mlflow_run_id``."""
    return torch.load(path, map_location=map_location, weights_only=True)


def plot_history(history: list[dict[str, float]], path: str | Path, monitor: str) -> None:
    """Loss curves and the monitored metric per epoch, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key in ("train_loss", "val_loss"):
        if history and key in history[0]:
            ax1.plot(epochs, [r[key] for r in history], marker="o", label=key)
    ax1.set_xlabel("epoch")
    ax1.set_title("loss")
    ax1.legend()
    if history and monitor in history[0]:
        ax2.plot(epochs, [r[monitor] for r in history], marker="o", color="tab:green")
    ax2.set_xlabel("epoch")
    ax2.set_title(monitor)
    io.save_figure(fig, path)
