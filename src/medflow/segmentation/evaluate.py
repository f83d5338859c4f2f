"""Full-volume evaluation of a trained U-Net on the held-out (``test``) cases.

For each test case: predict the whole stacked volume (``predict.predict_case``: sliding windows, each
standardised per channel and per axial slice exactly as the training patches were, labels at the
checkpoint's threshold), score Dice/HD95 of the BraTS regions and labels against the stacked label,
and write the prediction (the release's labels, 2020: 0, 1, 2, 4) as NIfTI in the raw images' geometry. The
``headline`` block of metrics.json holds the mean Dice of WT, TC, ET and the mean WT HD95 (mm) over the
test cases, with seeded percentile bootstrap intervals over cases. Two trivial predictors are scored on
the same cases for reference:
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
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medflow import io
from medflow.errors import InputError
from medflow.evaluation.headline import Bootstrap, mean_metric
from medflow.ingest import releases
from medflow.ingest.splits import ids_in, read_split
from medflow.preprocess.stack import read_stack
from medflow.segmentation import predict
from medflow.segmentation.data import by_case
from medflow.segmentation.metrics import HD95_EMPTY, case_metrics, flat_row, summarise
from medflow.segmentation.model import load_model
from medflow.train import Job, select_device

log = logging.getLogger(__name__)

EXPERIMENT = "brats_segmentation"
RULE = "brats_segmentation_evaluate"  # the MLflow run name when no rule runs the job (library calls, tests)
BASELINES = ("all_background", "all_foreground_in_brain")
# Headline name -> (structure, metric) of the per-case results; the value is the mean over test cases.
HEADLINE = {"dice_wt": ("WT", "dice"), "dice_tc": ("TC", "dice"), "dice_et": ("ET", "dice"), "hd95_wt": ("WT", "hd95")}


@dataclass
class EvalParams(predict.PredictParams):
    """``brats.segmentation.evaluate`` in config (the window fields of ``PredictParams``, ``n_overlays``)
    plus the rule's ``bootstrap`` block (config ``evaluation``). The threshold is training's, read from
    the checkpoint."""

    n_overlays: int = 3
    bootstrap: Bootstrap = field(default_factory=Bootstrap)


def baseline_predictions(image: np.ndarray) -> dict[str, np.ndarray]:
    """Trivial stored label maps for a (4, Z, Y, X) stacked image (before standardisation)."""
    brain = np.any(image != 0, axis=0)
    return {
        "all_background": np.zeros(brain.shape, np.uint8),
        "all_foreground_in_brain": np.where(brain, 3, 0).astype(np.uint8),
    }


def headline(
    per_case: Mapping[str, Mapping[str, Mapping[str, float]]], bootstrap: Bootstrap, seed: int
) -> dict[str, dict[str, Any]]:
    """The metrics.json headline block: ``HEADLINE``'s means over the test cases (``per_case`` in case
    order, as ``summarise``'s ``mean``; NaN skipped) with percentile bootstrap intervals over cases."""
    rows = list(per_case.values())
    return {
        name: mean_metric([r[structure][metric] for r in rows], **bootstrap.kwargs(seed))
        for name, (structure, metric) in HEADLINE.items()
    }


def evaluate(
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any],
    params: EvalParams,
    job: Job,
    *,
    device: torch.device | None = None,
    standardise: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict:
    """Evaluate the checkpoint on the split's ``test`` cases; write every output; return the metrics dict.

    ``inputs``: ``checkpoint``, ``stacks`` (every case's stacked HDF5 ``<case>.h5``, a list, or a
    {case: path} mapping) and ``split``; ``outputs``: ``metrics`` (JSON), ``per_case`` (CSV),
    ``predictions`` and ``overlays`` (folders). ``device`` defaults to ``select_device(job.threads)``,
    ``standardise`` to the patch sampler's (``predict.predict_case``).
    """
    checkpoint, split_csv = inputs["checkpoint"], inputs["split"]
    stacks = inputs["stacks"]
    stack_files = dict(stacks) if isinstance(stacks, Mapping) else by_case(stacks)
    split = read_split(split_csv)
    cases = sorted(ids_in(split, "test"))
    if not cases:
        raise InputError(split_csv, "no case is in the 'test' split")
    missing = [c for c in cases if c not in stack_files]
    if missing:
        raise InputError(split_csv, f"{len(missing)} test case(s) have no stacked file, e.g. {missing[0]}")
    ckpt = predict.load_unet_checkpoint(checkpoint)
    meta = ckpt["meta"]
    device = device or select_device(job.threads)
    model = load_model(ckpt, device)  # channels-last: the faster kernels, as in training
    window, threshold = meta["patch_size"], float(meta["threshold"])

    per_case: dict[str, dict] = {}
    per_baseline: dict[str, dict] = {b: {} for b in BASELINES}
    pred_dir, ov_dir = Path(outputs["predictions"]), Path(outputs["overlays"])
    with _atomic_dir(pred_dir) as tmp_pred, _atomic_dir(ov_dir) as tmp_ov:
        for case in cases:  # one case in memory at a time
            start = time.perf_counter()
            stack = read_stack(stack_files[case])
            pred = predict.predict_case(
                model,
                stack.image,
                window,
                params,
                threshold=threshold,
                device=device,
                bf16=job.bf16,
                standardise=standardise,
            )
            per_case[case] = case_metrics(pred, stack.label, stack.spacing_zyx)
            for name, base in baseline_predictions(stack.image).items():
                per_baseline[name][case] = case_metrics(base, stack.label, stack.spacing_zyx, with_hd95=False)
            # The release's own labels (2020: 4 for ET, 2023-GLI: 3), as a submission of that release.
            stored_full = predict.uncrop(pred, stack.kept_z_range, stack.original_shape_zyx)
            full = releases.get(stack.release).from_stored(stored_full)
            predict.write_nifti(full, stack.affine, tmp_pred / f"{case}.nii.gz")
            if len(per_case) <= params.n_overlays:
                plot_overlay(
                    stack.image[0],
                    stack.label,
                    pred,
                    tmp_ov / f"{case}.png",
                    title=case,
                    z_offset=stack.kept_z_range[0],
                )
            log.info(
                "%s: WT %.3f TC %.3f ET %.3f (Dice) | %.1f s",
                case,
                per_case[case]["WT"]["dice"],
                per_case[case]["TC"]["dice"],
                per_case[case]["ET"]["dice"],
                time.perf_counter() - start,
            )

    result = {
        "headline": headline(per_case, params.bootstrap, job.seed),
        "n_cases": len(cases),
        "checkpoint_epoch": int(ckpt.get("epoch", 0)),
        "training_run_id": ckpt.get("mlflow_run_id", ""),
        "params": {**asdict(params), "threshold": threshold},
        "hd95_unit": "mm",
        "hd95_one_empty_mm": HD95_EMPTY,
        "mean": summarise(per_case),
        "per_case": per_case,
        "baselines": {name: {"mean": summarise(rows), "per_case": rows} for name, rows in per_baseline.items()},
    }
    io.write_json(outputs["metrics"], result)
    write_per_case_csv(outputs["per_case"], per_case, per_baseline)
    mean = result["mean"]
    log.info(
        "mean Dice WT %.3f TC %.3f ET %.3f over %d test cases; baselines WT: all-background %.3f, all-brain %.3f",
        mean["WT"]["dice"],
        mean["TC"]["dice"],
        mean["ET"]["dice"],
        len(cases),
        result["baselines"]["all_background"]["mean"]["WT"]["dice"],
        result["baselines"]["all_foreground_in_brain"]["mean"]["WT"]["dice"],
    )
    if job.track:
        _log_mlflow(result, outputs, job)
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
        for name, rows_of in per_baseline.items():
            row[f"baseline_{name}_WT_dice"] = rows_of[case]["WT"]["dice"]
        rows.append(row)
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _log_mlflow(result: dict, outputs: Mapping[str, Any], job: Job) -> None:
    from medflow import tracking

    # Beside the headline: every structure's mean (``test_<structure>_<metric>``) and the baselines' WT Dice.
    extra = {k: v for k, v in flat_row(result["mean"]).items() if not k.endswith(("_std", "_median"))}
    for name, res in result["baselines"].items():
        extra[f"baseline_{name}_WT_dice"] = res["mean"]["WT"]["dice"]
    tracking.log_evaluation(
        EXPERIMENT,
        job.rule or RULE,
        headline=result["headline"],
        training_run_id=result["training_run_id"],
        artifacts=[outputs["metrics"], outputs["per_case"], outputs["overlays"]],
        params={**result["params"], "n_cases": result["n_cases"]},
        rule=job.rule,
        extra_metrics=extra,
    )


def plot_overlay(
    flair: np.ndarray,
    truth: np.ndarray | None,
    pred: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
    z_offset: int = 0,
) -> Path:
    """PNG of the axial slice with the most tumour (or brain, if none): FLAIR, ground truth and prediction
    side by side.

    ``flair`` (Z, Y, X) intensities, ``truth`` / ``pred`` (Z, Y, X) stored labels (``truth`` None: a new,
    unlabeled case, FLAIR and prediction only); ``z_offset`` turns the slice index into the raw volume's
    (the first kept slice).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    area = (pred > 0).sum(axis=(1, 2)) + (0 if truth is None else (truth > 0).sum(axis=(1, 2)))
    if not area.any():  # no tumour anywhere: the slice with the most brain
        area = (flair != 0).sum(axis=(1, 2))
    z = int(area.argmax())
    # Colours of the labels NCR/NET (1), ED (2), ET (4, stored 3); background transparent.
    cmap = ListedColormap([(0, 0, 0, 0), (0.9, 0.2, 0.2, 0.6), (0.2, 0.8, 0.2, 0.6), (1.0, 0.9, 0.1, 0.7)])
    panels = [(None, "FLAIR"), *([] if truth is None else [(truth, "ground truth")]), (pred, "prediction")]
    fig, axes = plt.subplots(1, len(panels), figsize=(10 * len(panels) / 3, 3.8))
    for ax, (overlay, name) in zip(axes, panels):
        ax.imshow(flair[z], cmap="gray", origin="lower")
        if overlay is not None:
            ax.imshow(overlay[z], cmap=cmap, vmin=0, vmax=3, interpolation="nearest", origin="lower")
        ax.set_title(f"{name} (slice {z + z_offset})")
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in (1, 2, 3)]
    fig.legend(handles, ["1 NCR/NET", "2 ED", "4 ET"], loc="lower center", ncol=3, frameon=False)
    if title:
        fig.suptitle(title)
    path = Path(path)
    io.save_figure(fig, path, dpi=90, rect=(0, 0.06, 1, 0.93 if title else 1))
    return path
