"""P(pneumonia) per image: the one place an RSNA model turns (image, metadata) batches into outputs.

Validation inside ``fit``, the evaluation stage and the predict stage all call ``predict``, so they share
one precision (``medflow.train.predict``: bf16 autocast on CUDA, full precision on the CPU). Grad-CAM maps
of the image branch (``write_cams``) serve evaluation and prediction alike.

Prediction on new data (``predict_folder``, rule ``rsna_predict``) takes a folder of DICOMs in the layout of
the challenge's ``stage_2_test_images/`` (``<patientId>.dcm``; the id is the file name, never a DICOM tag)
and a checkpoint of ``rsna.train``. Each file passes the ingest's header check, a radiograph check, then the
metadata and preprocessing stages' own functions (``medflow.rsna.preprocess.prepare_dicom``) with the
parameters the checkpoint recorded; a file that fails any step is listed in ``excluded.csv`` with the
reason and the others go on. Only the technical tags those stages read leave a file: names, birth dates and
hospital ids never reach an output, a log line or MLflow.
"""

from __future__ import annotations

import copy
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medflow import io
from medflow import train as mtrain
from medflow.errors import InputError
from medflow.rsna.model import cam_layer, normalise

log = logging.getLogger(__name__)

EXPERIMENT = "rsna"
TARGET_NAMES = {0: "Target 0", 1: "Target 1 (opacity)"}  # class_mix keys of summary.json
# Why a file of a predict folder is excluded: the first word(s) of each excluded.csv reason.
UNSAFE_ID, UNREADABLE, NOT_RADIOGRAPH, UNDECODABLE, DUPLICATE = (
    "unsafe id",
    "unreadable",
    "not a radiograph",
    "undecodable",
    "duplicate patientId",
)


def forward(model: torch.nn.Module, batch) -> dict[str, torch.Tensor]:
    """One batch ``(image uint8 (B, H, W), meta float32 (B, F)[, target (B,)])`` -> ``{"prob": (B,)}``
    plus ``"target"`` passed through when the batch has one. The image-only model ignores ``meta``."""
    image, meta, *rest = batch
    logits = model(normalise(image), meta if model.use_meta else None)
    out = {"prob": torch.sigmoid(logits.float())}
    if rest:
        out["target"] = rest[0]
    return out


def predict(model: torch.nn.Module, loader, device: torch.device, *, bf16: bool = True) -> dict[str, np.ndarray]:
    """``{"prob": (N,) float32 P(pneumonia)}`` over ``loader`` in its order, plus ``"target"`` (N,) when its
    batches carry targets (``medflow.rsna.data.H5Patients`` does)."""
    return mtrain.predict(model, loader, device, bf16=bf16, forward=forward)


def batches(images: np.ndarray, meta: np.ndarray, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """In-memory (image uint8 (B, H, W), meta float32 (B, F)) batches of ``batch_size`` for ``predict``."""
    bs = max(1, int(batch_size))
    return [
        (torch.from_numpy(images[i : i + bs]), torch.from_numpy(meta[i : i + bs])) for i in range(0, len(images), bs)
    ]


# ---- class-activation maps --------------------------------------------------------------------------------


class _Logit2D(torch.nn.Module):
    """The network with its one logit as a (B, 1) column, the shape Grad-CAM picks a class from."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(image, meta).unsqueeze(1)


def cam_maps(model: torch.nn.Module, images: np.ndarray, meta: np.ndarray, device: torch.device) -> np.ndarray:
    """Grad-CAM of P(pneumonia) at the image branch's last convolution: uint8 images (B, H, W) and their
    features (B, F) -> (B, H, W) in [0, 1]. The metadata reach the network as its ``meta`` argument; the
    model itself is not changed (the hooks go on a copy)."""
    from medflow.evaluation.cam import grad_cam

    net = copy.deepcopy(model).to(device)
    x = normalise(torch.from_numpy(np.ascontiguousarray(images))).to(device)
    m = torch.from_numpy(np.ascontiguousarray(meta, dtype=np.float32)).to(device) if net.use_meta else None
    return grad_cam(_Logit2D(net), x, f"net.{cam_layer(net)}", class_idx=0, meta=m)


def top_items(prob: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` highest probabilities (ties in input order): the items drawn as CAMs."""
    return np.argsort(-np.asarray(prob, dtype=np.float64), kind="stable")[: max(0, int(n))]


def write_cams(
    model: torch.nn.Module,
    images: np.ndarray,
    meta: np.ndarray,
    ids: Sequence[str],
    titles: Sequence[str],
    out_dir: str | os.PathLike,
    device: torch.device,
) -> list[str]:
    """One PNG per item, ``<out_dir>/<id>.png``: the (H, W) image with its Grad-CAM map over it and its title.
    ``ids`` must be safe ids (``medflow.ingest.ids``); returns the PNG paths (none for no items)."""
    from medflow.evaluation.cam import save_overlay

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not len(ids):
        return []
    maps = cam_maps(model, images, meta, device)
    paths = []
    for image, cam, pid, title in zip(images, maps, ids, titles):
        path = out / f"{pid}.png"
        save_overlay(image, cam, path, titles=[title], suptitle=pid)
        paths.append(str(path))
    return paths


# ---- prediction on a folder of new DICOMs -----------------------------------------------------------------


@dataclass(frozen=True)
class PredictParams:
    """The rule's params: ``threshold`` (config ``rsna.evaluate.threshold``: label 1 at or above it),
    ``batch_size`` (``rsna.evaluate.batch_size``) and ``cams`` (config ``predict.cams``)."""

    threshold: float = 0.5
    batch_size: int = 64
    cams: int = 0


def checkpoint_preprocessing(ckpt: Mapping[str, Any], path: str | os.PathLike):
    """(PreprocessConfig, max_age_years) a checkpoint's model was trained with; InputError(path) when it is
    another pipeline's, records no (or an incomplete) preprocessing, or its features do not follow from it."""
    from medflow.lineage import check_checkpoint
    from medflow.rsna.preprocess import config_from_record, feature_names

    check_checkpoint(ckpt, path, pipeline=EXPERIMENT)
    meta = ckpt["meta"]
    cfg, max_age = config_from_record(meta.get("preprocessing"), path)
    if list(meta.get("meta_features") or []) != feature_names(cfg.age_bins) or meta.get("size") != cfg.size:
        raise InputError(
            path,
            f"model inputs (features {meta.get('meta_features')}, size {meta.get('size')}) do not match its "
            f"preprocessing record (features {feature_names(cfg.age_bins)}, size {cfg.size})",
        )
    return cfg, max_age


def list_dicoms(folder: str | os.PathLike) -> list[Path]:
    """The ``*.dcm`` files (any case of the suffix) directly in ``folder``, sorted; InputError when the folder
    is missing or holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "missing: expected a folder of <patientId>.dcm files (like stage_2_test_images)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".dcm" and p.is_file())
    if not files:
        raise InputError(folder, "no .dcm file in this folder: nothing to predict")
    return files


@dataclass(frozen=True)
class Item:
    """One file of a predict folder: its patientId (the file name) and image/features, or the reason it is out."""

    file: str
    patient_id: str
    image: np.ndarray | None = None
    features: np.ndarray | None = None
    reason: str = ""


def prepare_file(path: str | os.PathLike, cfg, max_age_years: float) -> Item:
    """One new DICOM -> Item: the ingest's checks (a safe id, a readable header with the tags images need),
    a single projection radiograph, then ``preprocess.prepare_dicom`` (the training stages' functions)."""
    from medflow.ingest.ids import id_problem
    from medflow.ingest.rsna import check_header
    from medflow.rsna.dicom import radiograph_problem
    from medflow.rsna.metadata import read_dicom
    from medflow.rsna.preprocess import prepare_dicom

    path = Path(path)
    pid = path.stem
    problem = id_problem(pid, "patientId (the file name)")
    if problem:
        return Item(path.name, "", reason=f"{UNSAFE_ID}: {problem}")
    try:
        check_header(path)
        ds = read_dicom(path)
    except InputError as e:
        return Item(path.name, pid, reason=f"{UNREADABLE}: {e.problem}")
    problem = radiograph_problem(ds)
    if problem:
        return Item(path.name, pid, reason=f"{NOT_RADIOGRAPH}: {problem}")
    prepared = prepare_dicom(ds, pid, cfg, max_age_years)
    if prepared.image is None:
        return Item(path.name, pid, reason=f"{UNDECODABLE}: {prepared.exclusion}")
    return Item(path.name, pid, prepared.image, prepared.features)


def _prepare_job(args) -> Item:
    return prepare_file(*args)


def prepare_folder(files: Sequence[Path], cfg, max_age_years: float, threads: int = 1) -> list[Item]:
    """``prepare_file`` of every file, in a process pool of ``threads`` (as the metadata stage decodes), in
    order; a second file of one patientId (``x.dcm`` beside ``x.DCM``) is excluded as a duplicate."""
    from medflow.rsna.preprocess import parallel_map

    items, seen = [], set()
    for item in parallel_map(_prepare_job, [(f, cfg, max_age_years) for f in files], threads):
        if item.patient_id and item.patient_id in seen:
            item = Item(item.file, item.patient_id, reason=f"{DUPLICATE}: another file holds {item.patient_id}")
        if item.patient_id:
            seen.add(item.patient_id)
        items.append(item)
    return items


def predict_folder(
    inputs: Mapping[str, Any], outputs: Mapping[str, Any], params: PredictParams, job: mtrain.Job
) -> dict[str, Any]:
    """Predict every usable DICOM of ``inputs["images"]`` with the checkpoint ``inputs["checkpoint"]``.

    ``outputs``: ``predictions`` (CSV ``patientId,probability,label``, sorted by patientId; label 1 when
    P(pneumonia) >= ``params.threshold``), ``excluded`` (CSV ``item,reason``: file name and why), ``cams``
    (folder: Grad-CAM PNGs of the ``params.cams`` highest-probability images), ``summary`` (JSON
    ``n_predicted, n_excluded, class_mix, figures`` and ``excluded_reasons``, ``threshold``) and ``lineage``
    (JSON, ``medflow.lineage``). One MLflow run (``tracking.log_prediction``) when ``job.track``. Returns the
    summary. A folder without a usable image is an InputError, and so is a checkpoint that another pipeline
    wrote or that records no preprocessing (``checkpoint_preprocessing``).
    """
    from medflow import lineage, tracking
    from medflow.rsna.model import load_model

    folder, ckpt_path = Path(inputs["images"]), Path(inputs["checkpoint"])
    ckpt = mtrain.load_checkpoint(ckpt_path)
    cfg, max_age = checkpoint_preprocessing(ckpt, ckpt_path)
    files = list_dicoms(folder)
    # Before torch computes anything: the decoding pool forks this process.
    items = prepare_folder(files, cfg, max_age, job.threads)
    good = sorted((i for i in items if i.image is not None), key=lambda i: i.patient_id)
    bad = [i for i in items if i.image is None]
    for item in bad:
        log.warning("%s: excluded: %s", item.file, item.reason)
    if not good:
        first = bad[0]
        raise InputError(
            folder, f"no usable image: all {len(files)} .dcm files excluded (first: {first.file}: {first.reason})"
        )
    log.info(
        "%d of %d files usable (%d excluded); preprocessing of %s: %s", len(good), len(files), len(bad), ckpt_path, cfg
    )

    device = mtrain.select_device(job.threads)
    model = load_model(ckpt, device)
    images = np.stack([i.image for i in good])
    feats = np.stack([i.features for i in good]).astype(np.float32)
    ids = [i.patient_id for i in good]
    prob = predict(model, batches(images, feats, params.batch_size), device, bf16=job.bf16)["prob"]
    label = (prob >= params.threshold).astype(int)

    with io.atomic_path(outputs["predictions"]) as tmp:
        pd.DataFrame({"patientId": ids, "probability": prob, "label": label}).to_csv(tmp, index=False)
    with io.atomic_path(outputs["excluded"]) as tmp:
        pd.DataFrame({"item": [i.file for i in bad], "reason": [i.reason for i in bad]}).to_csv(tmp, index=False)
    top = top_items(prob, params.cams)
    figures = write_cams(
        model,
        images[top],
        feats[top],
        [ids[k] for k in top],
        [f"P(opacity) {prob[k]:.2f}, label {label[k]}" for k in top],
        outputs["cams"],
        device,
    )
    counts = Counter(label.tolist())
    summary = {
        "n_predicted": len(good),
        "n_excluded": len(bad),
        "class_mix": {TARGET_NAMES[t]: int(counts.get(t, 0)) for t in (0, 1)},
        "figures": figures,
        "excluded_reasons": dict(sorted(Counter(i.reason.split(":")[0] for i in bad).items())),
        "threshold": float(params.threshold),
    }
    io.write_json(outputs["summary"], summary)
    variant = str(ckpt["meta"].get("variant", "model"))
    models = [lineage.model_record(variant, ckpt_path, ckpt)]
    run_params = {
        "input": str(folder),
        "checkpoint": str(ckpt_path),
        "threshold": float(params.threshold),
        "batch_size": int(params.batch_size),
        "cams": int(params.cams),
    }
    rule = job.rule or "rsna_predict"
    lineage.write_lineage(
        outputs["lineage"], models, {**run_params, "preprocessing": ckpt["meta"]["preprocessing"]}, rule
    )
    log.info("%s: %d predicted (%s), %d excluded", rule, len(good), summary["class_mix"], len(bad))
    if job.track:
        cams_dir = Path(outputs["cams"])
        tracking.log_prediction(
            EXPERIMENT,
            rule,
            models=models,
            artifacts=[outputs["predictions"], outputs["excluded"], outputs["summary"], outputs["lineage"]]
            + ([cams_dir] if figures else []),
            params={**run_params, "variant": variant, "n_files": len(files)},
            metrics={"n_predicted": len(good), "n_excluded": len(bad), "n_positive": int(label.sum())},
            rule=job.rule,
        )
    return summary
