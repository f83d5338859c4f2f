"""Training the 3D U-Net on BraTS patches through the shared loop (``medflow.train.fit``).

Training and validation patches come from the patient-level split (``split.csv``: id, split, ...):
patches of ``train`` cases train, patches of ``val`` cases select the best epoch by ``val_dice``
(hard Dice of the three labels at ``threshold``, averaged over labels: the tutorial's metric).
Dice of the BraTS regions on the validation patches is logged beside it. Validation runs the model
through ``medflow.segmentation.predict.score_patches``, the path evaluation takes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from medflow.errors import InputError
from medflow.ingest.brats import MODALITIES
from medflow.ingest.splits import ids_in, read_split
from medflow.segmentation import predict, regions
from medflow.segmentation.data import PatchDataset, by_case
from medflow.segmentation.loss import soft_dice_loss
from medflow.segmentation.metrics import dice_from_counts
from medflow.segmentation.model import make_model
from medflow.train import FitResult, Job, fit, fit_config, make_loaders, seed_everything, select_device, tracking

log = logging.getLogger(__name__)

EXPERIMENT = "brats_segmentation"
RULE = "brats_segmentation_train"  # the MLflow run name when no rule runs the job (library calls, tests)


@dataclass
class UNetParams:
    """Hyperparameters (``brats.segmentation.train`` in config)."""

    depth: int = 3
    base_filters: int = 8
    batch_norm: bool = True
    upsampling: str = "transpose"
    batch_size: int = 2
    epochs: int = 10
    patience: int = 0
    learning_rate: float = 1e-3
    dice_epsilon: float = 1e-5
    threshold: float = 0.5
    loader_workers: int = 4  # DataLoader workers on CUDA (the CPU keeps threads // 4)


def split_cases(split_csv: str | os.PathLike, patch_files: Mapping[str, str]) -> dict[str, list[str]]:
    """Train and val case ids from the split file, each checked to have a patch file."""
    split = read_split(split_csv)
    if not {"id", "split"} <= set(split.columns):
        raise InputError(split_csv, f"needs columns id,split; has {list(split.columns)}")
    out = {name: sorted(ids_in(split, name)) for name in ("train", "val")}
    for name, cases in out.items():
        if not cases:
            raise InputError(split_csv, f"no case is in the '{name}' split")
        missing = [c for c in cases if c not in patch_files]
        if missing:
            raise InputError(split_csv, f"{len(missing)} {name} case(s) have no patch file, e.g. {missing[0]}")
    return out


def make_steps(params: UNetParams, bf16: bool = True):
    """The ``train_step`` and ``evaluate`` callables ``fit`` needs; ``bf16`` as ``fit``'s."""

    def train_step(model, batch):
        image, label = batch
        return soft_dice_loss(model(image), label, params.dice_epsilon)

    def evaluate(model, loader) -> dict[str, float]:
        loss_sum, n, counts = predict.score_patches(
            model, loader, threshold=params.threshold, dice_epsilon=params.dice_epsilon, bf16=bf16
        )
        out = {"loss": loss_sum / max(n, 1)}
        scores = {name: dice_from_counts(*counts[name]) for name in regions.STRUCTURES}
        out["dice"] = sum(scores[name] for name in regions.LABEL_NAMES) / len(regions.LABEL_NAMES)
        out.update({f"dice_{name}": v for name, v in scores.items()})
        return out

    return train_step, evaluate


def train(
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any],
    params: UNetParams,
    job: Job,
    *,
    device: torch.device | None = None,
    preprocessing: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train on the ``train`` cases' patches, select on the ``val`` cases'; write the best checkpoint.

    ``inputs``: ``patches`` (every case's patch HDF5 ``<case>.h5``, a list, or a {case: path} mapping;
    cases of other splits are ignored) and ``split``; ``outputs``: ``checkpoint`` and optionally
    ``curves`` (PNG). The checkpoint's ``meta`` holds the model config, patch size and threshold that
    evaluation needs, ``pipeline`` (brats_segmentation) and ``preprocessing``: the parameters the patches
    were made with (``predict.preprocessing_record`` of the config), which prediction on new cases applies
    (absent when not given: such a checkpoint evaluates, and prediction refuses it). ``device`` defaults to
    ``select_device(job.threads)``.
    """
    patches = inputs["patches"]
    patch_files = dict(patches) if isinstance(patches, Mapping) else by_case(patches)
    split_csv, checkpoint = inputs["split"], outputs["checkpoint"]
    cases = split_cases(split_csv, patch_files)
    train_ds = PatchDataset([patch_files[c] for c in cases["train"]])
    val_ds = PatchDataset([patch_files[c] for c in cases["val"]])
    for name, ds in (("train", train_ds), ("val", val_ds)):
        if len(ds) == 0:
            raise InputError(split_csv, f"the {name} cases hold no patches")
    if train_ds.patch_size != val_ds.patch_size:
        raise InputError(
            patch_files[cases["val"][0]], f"val patch size {val_ds.patch_size} differs from train {train_ds.patch_size}"
        )
    device = device or select_device(job.threads)
    log.info(
        "train: %d patches from %d cases; val: %d patches from %d cases; patch %s",
        len(train_ds),
        len(cases["train"]),
        len(val_ds),
        len(cases["val"]),
        train_ds.patch_size,
    )

    seed_everything(job.seed)  # weights start the same on every run with this seed
    model = make_model(params)
    bad = [s for s in train_ds.patch_size if s % model.divisor]
    if bad:
        raise InputError(
            patch_files[cases["train"][0]],
            f"patch size {train_ds.patch_size} is not divisible by 2**(depth-1) = {model.divisor}; "
            "change the patch size or brats.segmentation.train.depth",
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    # Every patch trains (drop_lone=False): BatchNorm3d normalises over a lone patch's voxels, so a
    # last batch of one is no problem here, and dropping it would change the training.
    train_loader, val_loader = make_loaders(
        train_ds, val_ds, batch_size=params.batch_size, device=device, threads=job.threads, drop_lone=False
    )
    train_step, evaluate = make_steps(params, bf16=job.bf16)

    hyper = {
        **asdict(params),
        "seed": job.seed,
        "patch_size": list(train_ds.patch_size),
        "optimizer": "adam",
        "loss": "soft_dice_squared",
        "n_train_cases": len(cases["train"]),
        "n_val_cases": len(cases["val"]),
        "n_train_patches": len(train_ds),
        "n_val_patches": len(val_ds),
        "n_parameters": sum(p.numel() for p in model.parameters()),
    }
    meta = {
        "pipeline": predict.PIPELINE,
        **({"preprocessing": dict(preprocessing)} if preprocessing is not None else {}),
        "model": model.config,
        "patch_size": list(train_ds.patch_size),
        "threshold": params.threshold,
        "modalities": list(MODALITIES),
        "labels": list(regions.BRATS_LABELS),
        "hyperparameters": hyper,
    }
    result = fit(
        model,
        optimizer,
        train_loader,
        val_loader,
        train_step=train_step,
        evaluate=evaluate,
        # Fixed-size patches: cuDNN may pick the fastest convolution algorithms once (no effect on the CPU).
        cfg=replace(fit_config(params, monitor="val_dice", mode="max", job=job), cudnn_benchmark=True),
        device=device,
        checkpoint_path=checkpoint,
        checkpoint_meta=meta,
        fingerprint={**hyper, "train_cases": cases["train"], "val_cases": cases["val"]},
        tracking=tracking(job, EXPERIMENT, job.rule or RULE, hyper),
        curves_path=outputs.get("curves"),
    )
    train_ds.close()
    val_ds.close()
    best = float("nan") if result.best_score is None else result.best_score
    log.info(
        "best val_dice %.4f at epoch %d%s", best, result.best_epoch, " (stopped early)" if result.stopped_early else ""
    )
    return result
