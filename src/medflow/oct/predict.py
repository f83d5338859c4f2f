"""OCT VGG16 inference: per-image class log-probabilities (the one place its inputs become outputs), the top-k
table, class-activation maps, and the prediction stage on a folder tree of new JPEG/PNG scans.

The validation inside ``fit`` (:mod:`medflow.oct.train`), the evaluation and the prediction stage all call
:func:`predict_log_proba`, i.e. ``medflow.train.predict`` with the job's ``bf16``, so validation, test and
new-scan figures come from the same precision (bf16 autocast on CUDA, float32 on the CPU). Evaluation and
prediction read images with the same reader and transform, built from the checkpoint's ``preprocessing``
(:func:`medflow.oct.data.eval_transform_for`), so a scan gets the same probabilities in both.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medflow.train import predict

log = logging.getLogger(__name__)

EXPERIMENT = "oct"
RULE = "oct_predict"  # the MLflow run name when no rule is given (library callers)
# Grad-CAM layer: the ReLU of conv5_3, the output of VGG16's last conv block. Not conv5_3 itself: that ReLU
# (inplace) overwrites the conv's output, which the backward hooks of Grad-CAM refuse.
CAM_LAYER = "features.29"


def forward(model: torch.nn.Module, batch) -> dict[str, torch.Tensor]:
    """A batch of images (B, 3, S, S), or ``(images, targets (B,))`` as :class:`~medflow.oct.data.OctImages`
    gives -> ``{"log_proba": (B, n_classes)}``, plus ``"target"`` passed through when the batch has one."""
    if isinstance(batch, (tuple, list)):
        x, y = batch
        return {"log_proba": model(x), "target": y}
    return {"log_proba": model(batch)}


def predict_log_proba(
    model: torch.nn.Module, loader, device: torch.device, *, bf16: bool = True
) -> dict[str, np.ndarray]:
    """``{"log_proba": (N, n_classes) float32}`` (the model ends in LogSoftmax) over ``loader`` in its order,
    plus ``"target"`` (N,) int64 class indices when its batches carry them."""
    return predict(model, loader, device, bf16=bf16, forward=forward)


def top_k_table(ids: Sequence[str], log_proba: np.ndarray, classes: Sequence[str], k: int) -> pd.DataFrame:
    """One row per image: ``id``, ``top1..topk`` class names with ``prob1..probk``, then ``p_<class>``
    for every class. ``log_proba`` is (N, n_classes)."""
    prob = np.exp(log_proba)
    k = min(k, len(classes))
    order = np.argsort(-prob, axis=1, kind="stable")[:, :k]
    df = pd.DataFrame({"id": list(ids)})
    for j in range(k):
        df[f"top{j + 1}"] = [classes[i] for i in order[:, j]]
        df[f"prob{j + 1}"] = np.take_along_axis(prob, order[:, j : j + 1], axis=1)[:, 0]
    for i, c in enumerate(classes):
        df[f"p_{c}"] = prob[:, i]
    return df


def pick_for_cams(groups: Sequence[Hashable], n: int) -> list[int]:
    """Up to ``n`` indices into ``groups`` (a class per image), taken in turn from each group (in order of first
    appearance, each group's images in order), so a few maps show every class there is."""
    queues: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        queues.setdefault(g, []).append(i)
    picked: list[int] = []
    while len(picked) < n and any(queues.values()):
        for q in queues.values():
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked


def class_maps(model: torch.nn.Module, x: torch.Tensor, class_idx: Sequence[int]) -> np.ndarray:
    """Grad-CAM at :data:`CAM_LAYER` of each image of ``x`` (N, 3, S, S) for its class ``class_idx[i]`` (the
    gradient of that class's log-probability): (N, S, S) in [0, 1]. Works with the frozen features."""
    from medflow.evaluation.cam import grad_cam

    device = next(model.parameters()).device
    maps = [grad_cam(model, x[i : i + 1].to(device), CAM_LAYER, class_idx=int(c))[0] for i, c in enumerate(class_idx)]
    return np.stack(maps) if maps else np.zeros((0, *x.shape[-2:]), np.float32)


def save_cams(
    model: torch.nn.Module,
    images: Sequence[torch.Tensor],
    class_idx: Sequence[int],
    ids: Sequence[str],
    titles: Sequence[str],
    folder: str | os.PathLike,
) -> list[Path]:
    """One PNG ``<folder>/<id>.png`` per image (3, S, S) (the model's input): the image (channel mean) with its
    Grad-CAM for ``class_idx[i]`` over it, titled ``titles[i]``. ``ids`` are safe ids (ingest checked them).
    Returns the paths written; ``folder`` is created even when there is nothing to draw."""
    from medflow.evaluation.cam import save_overlay

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not len(images):
        return []
    x = torch.stack(list(images))
    maps = class_maps(model, x, class_idx)
    paths = []
    for image, cam, sid, title in zip(x, maps, ids, titles):
        path = folder / f"{sid}.png"
        save_overlay(image.mean(0).numpy(), cam, path, titles=[title])
        paths.append(path)
    return paths


@dataclass(frozen=True)
class PredictParams:
    """What ``oct_predict`` passes besides bf16 (the ``Job``'s): ``folder``, the tree of scans to predict on
    (``predict.oct.input`` resolved), ``top_k`` and ``batch_size`` (``oct.evaluate``'s) and ``cams``
    (``predict.cams``: scans drawn with their class-activation map)."""

    folder: str
    top_k: int
    batch_size: int
    cams: int = 0


def load_for_prediction(checkpoint: str | os.PathLike) -> tuple[dict, dict]:
    """The checkpoint dict and its recorded ``preprocessing``; ``InputError`` naming the file for a checkpoint of
    another pipeline or one that records no preprocessing (trained before it was recorded: retrain it)."""
    from medflow.errors import InputError
    from medflow.lineage import check_checkpoint
    from medflow.train import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    check_checkpoint(ckpt, checkpoint, pipeline="oct")
    prep = ckpt["meta"].get("preprocessing")
    if not isinstance(prep, Mapping):
        raise InputError(checkpoint, "checkpoint records no preprocessing parameters (meta.preprocessing): retrain it")
    return ckpt, dict(prep)


def predict_scans(
    inputs: Mapping[str, str | os.PathLike], outputs: Mapping[str, str | os.PathLike], params: PredictParams, job
) -> dict:
    """Classify every usable JPEG/PNG scan under ``params.folder`` with the checkpoint, using its recorded
    preprocessing; a bad file is excluded with its reason, no usable scan at all is one ``InputError``.

    ``inputs``: ``checkpoint``. ``outputs``: ``predictions`` (CSV: ``id, path, class, top1, prob1 .. topk,
    probk, p_<class>`` per scan, ``path`` relative to the folder), ``excluded`` (CSV: ``file, reason``),
    ``cams`` (folder of ``<id>.png``, up to ``params.cams`` scans, in turn per predicted class), ``summary``
    (JSON: ``n_predicted, n_excluded, class_mix, figures``), ``lineage`` (JSON, :mod:`medflow.lineage`).
    One MLflow run ``job.rule`` in experiment ``oct`` (``log_prediction``) when ``job.track``.
    Returns ``{"predictions", "excluded"}`` (DataFrames, probabilities unrounded) and ``"summary"``.
    """
    from torch.utils.data import DataLoader

    from medflow import io
    from medflow.ingest.oct import discover_scans
    from medflow.lineage import model_record, write_lineage
    from medflow.oct.data import ScanImages, eval_transform_for
    from medflow.oct.model import load_model
    from medflow.train import loader_kwargs, select_device

    ckpt_path = inputs["checkpoint"]
    ckpt, prep = load_for_prediction(ckpt_path)
    transform = eval_transform_for(prep, ckpt_path)
    classes = list(prep["classes"])
    scans, excluded = discover_scans(params.folder)

    device = select_device(job.threads)
    model = load_model(ckpt).to(device)
    ds = ScanImages(params.folder, scans["path"].tolist(), transform)
    loader = DataLoader(ds, batch_size=int(params.batch_size), shuffle=False, **loader_kwargs(device, job.threads))
    logp = predict_log_proba(model, loader, device, bf16=job.bf16)["log_proba"]
    table = top_k_table(scans["id"], logp, classes, int(params.top_k))
    table.insert(1, "path", scans["path"].tolist())
    table.insert(2, "class", table["top1"])
    with io.atomic_path(outputs["predictions"]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")
    with io.atomic_path(outputs["excluded"]) as tmp:
        excluded.to_csv(tmp, index=False)

    pred = logp.argmax(1)
    picked = pick_for_cams(pred.tolist(), int(params.cams))
    titles = [f"{table['id'][i]}: {classes[pred[i]]} ({table['prob1'][i]:.2f})" for i in picked]
    figures = save_cams(
        model,
        [ds[i] for i in picked],
        [int(pred[i]) for i in picked],
        table["id"].iloc[picked],
        titles,
        outputs["cams"],
    )
    mix = {c: int((pred == i).sum()) for i, c in enumerate(classes)}
    summary = {
        "n_predicted": len(table),
        "n_excluded": len(excluded),
        "class_mix": mix,
        "figures": [str(p) for p in figures],
    }
    io.write_json(outputs["summary"], summary)
    log.info("%d scans predicted (%s), %d files excluded", len(table), mix, len(excluded))

    rule = job.rule or RULE
    record = model_record("oct", ckpt_path, ckpt)
    settings = {**asdict(params), "checkpoint": str(ckpt_path), "preprocessing": prep}
    write_lineage(outputs["lineage"], [record], settings, rule)
    if job.track:
        from medflow import tracking

        tracking.log_prediction(
            EXPERIMENT,
            rule,
            models=[record],
            artifacts=[outputs[k] for k in ("predictions", "excluded", "summary", "lineage", "cams")],
            params={"input": params.folder, "top_k": params.top_k, "cams": params.cams, "checkpoint": str(ckpt_path)},
            metrics={
                "n_predicted": len(table),
                "n_excluded": len(excluded),
                **{f"n_{c}": n for c, n in mix.items()},
            },
            rule=job.rule,
        )
    return {"predictions": table, "excluded": excluded, "summary": summary}
