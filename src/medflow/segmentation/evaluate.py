"""Full-volume evaluation of a trained U-Net on the held-out (``test``) cases.

For each test case: predict with sliding windows over the whole stacked volume, each window
standardised per channel and per axial slice exactly as the training patches were (``standardise:
window``; or the whole volume's slices at once, ``standardise: volume``), turn probabilities into a
stored label map, score Dice/HD95 of the BraTS regions
and labels against the stacked label, and write the prediction (BraTS labels 0, 1, 2, 4) as NIfTI
in the raw images' geometry. Two trivial predictors are scored on the same cases for reference:
``all_background`` (nothing predicted) and ``all_foreground_in_brain`` (every brain voxel, i.e. every
voxel with signal in any modality, labelled 4, so WT = TC = ET = the brain).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from medflow import io
from medflow.errors import InputError
from medflow.ingest.splits import ids_in, read_split
from medflow.segmentation import predict, regions
from medflow.segmentation.data import read_stack
from medflow.segmentation.metrics import HD95_EMPTY, case_metrics, flat_row, summarise
from medflow.segmentation.model import build
from medflow.train import load_checkpoint

log = logging.getLogger(__name__)

BASELINES = ("all_background", "all_foreground_in_brain")


@dataclass
class EvalParams:
    """``brats.segmentation.evaluate_unet3d`` in config (the threshold comes from training's config)."""

    overlap: float = 0.5
    standardise: str = "window"
    batch_size: int = 2
    blend: str = "gaussian"
    threshold: float = 0.5
    n_overlays: int = 3


def baseline_predictions(image: np.ndarray) -> dict[str, np.ndarray]:
    """Trivial stored label maps for a (4, Z, Y, X) stacked image (before standardisation)."""
    brain = np.any(image != 0, axis=0)
    return {"all_background": np.zeros(brain.shape, np.uint8), "all_foreground_in_brain": np.where(brain, 3, 0).astype(np.uint8)}


STANDARDISE = ("window", "volume")


def predict_case(model, image: np.ndarray, window: Sequence[int], params: EvalParams, device, bf16: bool,
                 standardize: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Stored label map (Z, Y, X) uint8 of one stacked (4, Z, Y, X) image (as stored, not normalised).

    ``standardize`` is the patches' per-channel, per-slice standardisation, applied to every window
    (``params.standardise == "window"``: what each training patch got) or once to the whole volume.
    """
    if params.standardise not in STANDARDISE:
        raise ValueError(f"standardise must be one of {STANDARDISE}, got {params.standardise!r}")
    per_window = params.standardise == "window"
    x = image if per_window else standardize(image)
    probs = predict.sliding_window(model, x, window, overlap=params.overlap, batch_size=params.batch_size,
                                     blend=params.blend, device=device, bf16=bf16,
                                     transform=standardize if per_window else None)
    return regions.probabilities_to_labels(probs, params.threshold)


def _patch_standardize():
    # The exact per-channel, per-slice standardisation the patch sampler applied to training patches.
    from medflow.preprocess.patches import standardize

    return standardize


def evaluate_unet3d(
    checkpoint: str | os.PathLike,
    stack_files: Mapping[str, str],
    split_csv: str | os.PathLike,
    *,
    metrics_json: str | os.PathLike,
    per_case_csv: str | os.PathLike,
    predictions_dir: str | os.PathLike,
    overlays_dir: str | os.PathLike,
    params: EvalParams,
    device: torch.device,
    bf16: bool = True,
    standardize: Callable[[np.ndarray], np.ndarray] | None = None,
    track: bool = True,
    rule: str | None = "evaluate_unet3d",
) -> dict:
    """Evaluate ``checkpoint`` on the split's ``test`` cases; write every output; return the metrics dict.

    ``standardize`` defaults to ``medflow.preprocess.patches.standardize`` (tests pass their own).
    """
    standardize = standardize or _patch_standardize()
    split = read_split(split_csv)
    cases = sorted(ids_in(split, "test"))
    if not cases:
        raise InputError(split_csv, "no case is in the 'test' split")
    missing = [c for c in cases if c not in stack_files]
    if missing:
        raise InputError(split_csv, f"{len(missing)} test case(s) have no stacked file, e.g. {missing[0]}")
    ckpt = load_checkpoint(checkpoint)
    meta = ckpt.get("meta", {})
    if "model" not in meta or "patch_size" not in meta:
        raise InputError(checkpoint, "not a U-Net checkpoint from train_unet3d (meta lacks model/patch_size)")
    model = build(meta["model"])
    model.load_state_dict(ckpt["state_dict"])
    model.to(device, memory_format=torch.channels_last_3d).eval()  # faster kernels, as in training
    window = meta["patch_size"]

    per_case: dict[str, dict] = {}
    per_baseline: dict[str, dict] = {b: {} for b in BASELINES}
    pred_dir, ov_dir = Path(predictions_dir), Path(overlays_dir)
    overlay_paths = []
    with _atomic_dir(pred_dir) as tmp_pred, _atomic_dir(ov_dir) as tmp_ov:
        for case in cases:  # one case in memory at a time
            start = time.perf_counter()
            stack = read_stack(stack_files[case])
            pred = predict_case(model, stack.image, window, params, device, bf16, standardize)
            per_case[case] = case_metrics(pred, stack.label, stack.spacing_zyx)
            for name, base in baseline_predictions(stack.image).items():
                per_baseline[name][case] = case_metrics(base, stack.label, stack.spacing_zyx, with_hd95=False)
            full = predict.uncrop(regions.to_brats(pred), stack.kept_z_range, stack.original_shape_zyx)
            predict.write_nifti(full, stack.affine, tmp_pred / f"{case}.nii.gz")
            if len(overlay_paths) < params.n_overlays:
                plot_overlay(stack.image[0], stack.label, pred, tmp_ov / f"{case}.png", title=case, z_offset=stack.kept_z_range[0])
                overlay_paths.append(ov_dir / f"{case}.png")
            log.info("%s: WT %.3f TC %.3f ET %.3f (Dice) | %.1f s", case, per_case[case]["WT"]["dice"],
                     per_case[case]["TC"]["dice"], per_case[case]["ET"]["dice"], time.perf_counter() - start)

    result = {
        "n_cases": len(cases),
        "checkpoint_epoch": int(ckpt.get("epoch", 0)),
        "training_run_id": ckpt.get("mlflow_run_id", ""),
        "params": asdict(params),
        "hd95_unit": "mm",
        "hd95_one_empty_mm": HD95_EMPTY,
        "mean": summarise(per_case),
        "per_case": per_case,
        "baselines": {name: {"mean": summarise(rows), "per_case": rows} for name, rows in per_baseline.items()},
    }
    io.write_json(metrics_json, result)
    write_per_case_csv(per_case_csv, per_case, per_baseline)
    mean = result["mean"]
    log.info("mean Dice WT %.3f TC %.3f ET %.3f over %d test cases; baselines WT: all-background %.3f, all-brain %.3f",
             mean["WT"]["dice"], mean["TC"]["dice"], mean["ET"]["dice"], len(cases),
             result["baselines"]["all_background"]["mean"]["WT"]["dice"],
             result["baselines"]["all_foreground_in_brain"]["mean"]["WT"]["dice"])
    if track:
        _log_mlflow(result, params, ckpt, metrics_json, per_case_csv, overlay_paths, rule)
    return result


@contextlib.contextmanager
def _atomic_dir(path: Path):
    """Fill a temporary folder beside ``path``; it replaces ``path`` only when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_per_case_csv(path, per_case: Mapping[str, Mapping], per_baseline: Mapping[str, Mapping]) -> None:
    """One row per test case: ``case`` then ``<structure>_<metric>`` columns, then baseline WT Dice."""
    rows = []
    for case, res in per_case.items():
        row = {"case": case, **flat_row(res)}
        for name, by_case in per_baseline.items():
            row[f"baseline_{name}_WT_dice"] = by_case[case]["WT"]["dice"]
        rows.append(row)
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _log_mlflow(result, params, ckpt, metrics_json, per_case_csv, overlay_paths, rule) -> None:
    import mlflow

    from medflow import tracking

    tags = {"training_run_id": ckpt.get("mlflow_run_id", "")}
    with tracking.run("brats_segmentation", "evaluate_unet3d", params={**asdict(params), "n_cases": result["n_cases"]},
                      tags=tags, rule=rule):
        metrics = {f"test_{k}": v for k, v in flat_row(result["mean"]).items() if not k.endswith(("_std", "_median"))}
        for name, res in result["baselines"].items():
            metrics[f"baseline_{name}_WT_dice"] = res["mean"]["WT"]["dice"]
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(metrics_json))
        mlflow.log_artifact(str(per_case_csv))
        for p in overlay_paths:
            mlflow.log_artifact(str(p), artifact_path="overlays")


def plot_overlay(flair: np.ndarray, truth: np.ndarray, pred: np.ndarray, path: str | os.PathLike, title: str = "",
                 z_offset: int = 0) -> Path:
    """PNG of the axial slice with the most tumour: FLAIR, ground truth and prediction side by side.

    ``flair`` (Z, Y, X) intensities, ``truth`` / ``pred`` (Z, Y, X) stored labels; ``z_offset`` turns
    the slice index into the raw volume's (the first kept slice).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    area = (truth > 0).sum(axis=(1, 2)) + (pred > 0).sum(axis=(1, 2))
    z = int(area.argmax())
    # Colours of the labels NCR/NET (1), ED (2), ET (4, stored 3); background transparent.
    cmap = ListedColormap([(0, 0, 0, 0), (0.9, 0.2, 0.2, 0.6), (0.2, 0.8, 0.2, 0.6), (1.0, 0.9, 0.1, 0.7)])
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.8))
    for ax, overlay, name in zip(axes, (None, truth, pred), ("FLAIR", "ground truth", "prediction")):
        ax.imshow(flair[z], cmap="gray", origin="lower")
        if overlay is not None:
            ax.imshow(overlay[z], cmap=cmap, vmin=0, vmax=3, interpolation="nearest", origin="lower")
        ax.set_title(f"{name} (slice {z + z_offset})")
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in (1, 2, 3)]
    fig.legend(handles, ["1 NCR/NET", "2 ED", "4 ET"], loc="lower center", ncol=3, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 0.93 if title else 1))
    path = Path(path)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path
