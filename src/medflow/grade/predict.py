"""Slice P(HGG) from the grade ResNet18: the one place its inputs become outputs.

Used by the validation inside ``fit`` (:mod:`medflow.grade.train`), by the evaluation and by the predict
stage on new cases (:func:`predict_new`), all through ``medflow.train.predict`` with the job's ``bf16``, so
validation, test and new-data figures come from the same precision (bf16 autocast on CUDA, float32 on the CPU).

On new cases the slices are chosen as in training (``medflow.grade.slices.slices_for_case`` with the slice
parameters the checkpoint records), from the tumour the segmentation model predicted (its submission file
brought back into the stack's grid by ``medflow.segmentation.predict.predicted_labels``). Class-activation maps
(Grad-CAM at ResNet18's last block, :func:`cam_layer`; class HGG) of a case's most HGG-looking slices:
:func:`save_case_cam`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from medflow.errors import InputError
from medflow.train import predict

log = logging.getLogger(__name__)

EXPERIMENT = "brats_grade"
RULE = "brats_grade_predict"  # the MLflow run name when no rule is given (library callers)
PIPELINE = "brats_grade"
SEGMENTATION_PIPELINE = "brats_segmentation"
MODEL_NAMES = {PIPELINE: "grade", SEGMENTATION_PIPELINE: "segmentation"}  # lineage/MLflow names (as segmentation's)
# Grad-CAM at ResNet18's last residual block (stride 32: 7 x 7 at 224 px); on slices under 64 px that block is
# 1 x 1, a map without spatial detail (MONAI's min-max scaling makes float noise of it), so the block before it.
CAM_LAYERS = (("layer4", 32), ("layer3", 16), ("layer2", 8))
CAM_SLICES = 3  # slices per case in one CAM PNG, most HGG-looking first
CAM_CHANNEL = "flair"  # drawn under the map: the whole tumour (oedema included) is brightest in FLAIR


def _forward(model: torch.nn.Module, batch):
    """P(HGG) (B,) of a ``GradeSlices`` batch ``(x (B, 4, S, S), grade (B,), index (B,))``; the grade and the
    dataset index pass through, so every probability keeps its slice."""
    x, y, i = batch
    # Softmax in float32 whatever the autocast dtype of the logits, as the logits of a bf16 run are.
    return torch.softmax(model(x).float(), dim=1)[:, 1], y, i


def predict_slices(
    model: torch.nn.Module, loader, device: torch.device, *, bf16: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P(HGG) (N,) float32, slice grades (N,) int64 (1 = HGG) and dataset indices (N,) int64 over
    ``loader`` (batches of a :class:`~medflow.grade.data.GradeSlices`), in the loader's order."""
    return predict(model, loader, device, bf16=bf16, forward=_forward)


def slice_probabilities(
    model: torch.nn.Module, x: np.ndarray, device: torch.device, *, batch_size: int, bf16: bool = True
) -> np.ndarray:
    """P(HGG) (N,) float32 of the slices ``x`` (N, 4, S, S) of one case, in their order, through
    :func:`predict_slices` (what the evaluation runs over the slice file)."""
    from medflow.grade.data import ArraySlices

    if len(x) == 0:
        return np.zeros(0, np.float32)
    loader = DataLoader(ArraySlices(x), batch_size=int(batch_size), shuffle=False)
    prob, _, idx = predict_slices(model, loader, device, bf16=bf16)
    out = np.empty_like(prob)
    out[idx] = prob
    return out


def cam_layer(size: int) -> str:
    """The Grad-CAM layer for ``size`` x ``size`` slices: the deepest block of ResNet18 whose map is >= 2 x 2."""
    for name, stride in CAM_LAYERS:
        if int(size) // stride >= 2:
            return name
    return CAM_LAYERS[-1][0]


def save_case_cam(
    model: torch.nn.Module,
    x: np.ndarray,
    prob: np.ndarray,
    z: Sequence[int],
    path: str | os.PathLike,
    *,
    title: str,
    n: int = CAM_SLICES,
) -> np.ndarray:
    """Grad-CAM PNG of one case: its ``n`` highest-P(HGG) slices of ``x`` (N, 4, S, S) (``prob`` (N,), stack
    indices ``z`` (N,)), each map over the FLAIR channel; ``title`` above. Returns the maps (n, S, S) in [0, 1]."""
    from medflow.evaluation.cam import grad_cam, save_overlay
    from medflow.grade.model import CLASSES
    from medflow.ingest.brats import MODALITIES

    top = np.argsort(-np.asarray(prob), kind="stable")[: max(1, int(n))]
    device = next(model.parameters()).device
    xt = torch.from_numpy(np.ascontiguousarray(x[top])).to(device)
    maps = grad_cam(model, xt, cam_layer(x.shape[-1]), CLASSES.index("HGG"))
    images = x[top, MODALITIES.index(CAM_CHANNEL)]
    titles = [f"z {int(z[i])}: P(HGG) {float(prob[i]):.2f}" for i in top]
    save_overlay(list(images), list(maps), path, titles=titles, suptitle=title)
    return maps


@dataclass
class CasePrediction:
    """One case's slices and their P(HGG): ``x`` (N, 4, S, S), ``z`` and ``tumour_pixels`` (N,), ``prob`` (N,)."""

    x: np.ndarray
    z: np.ndarray
    tumour_pixels: np.ndarray
    prob: np.ndarray


def predict_case(
    model: torch.nn.Module,
    image: np.ndarray,
    label: np.ndarray,
    slice_params,
    device: torch.device,
    *,
    batch_size: int,
    bf16: bool = True,
) -> CasePrediction:
    """Slices of one stacked case (image (4, Z, Y, X), stored ``label`` (Z, Y, X), the predicted tumour on new
    data) chosen as in training with ``slice_params`` (``medflow.grade.slices.SliceParams``), and their P(HGG)."""
    from medflow.grade.slices import slices_for_case

    x, z, pixels = slices_for_case(image, label, slice_params)
    return CasePrediction(x, z, pixels, slice_probabilities(model, x, device, batch_size=batch_size, bf16=bf16))


@dataclass(frozen=True)
class PredictParams:
    """What ``brats_grade_predict`` passes: ``aggregate`` (brats.grade.aggregate), ``threshold`` and
    ``batch_size`` (brats.grade.evaluate: a case is called HGG as evaluation calls a test patient), ``cams``
    (predict.cams: cases drawn as Grad-CAM PNGs)."""

    aggregate: str
    threshold: float
    batch_size: int
    cams: int


def pair_cases(
    stacks: Sequence[str | os.PathLike], segmentations: Sequence[str | os.PathLike]
) -> dict[str, tuple[str, str]]:
    """case -> (stack ``<case>.h5``, its predicted segmentation), sorted by case; ``segmentations[i]`` belongs to
    ``stacks[i]`` and its file name starts with that case id (``<case>.nii.gz`` in 2020). Case ids must be
    safe file names (``medflow.ingest.ids.check_id``: they name the CAM PNGs)."""
    from medflow.ingest.ids import check_id

    if len(stacks) != len(segmentations):
        raise ValueError(f"{len(stacks)} stacks but {len(segmentations)} segmentations")
    out = {}
    for stack, seg in zip(stacks, segmentations):
        case = check_id(Path(stack).name.removesuffix(".h5"), stack, "case id")
        if not Path(seg).name.startswith(case):
            raise InputError(seg, f"is not the predicted segmentation of case {case} ({stack})")
        out[case] = (str(stack), str(seg))
    return dict(sorted(out.items()))


def expected_preprocessing(grade_ckpt: Mapping, seg_ckpt: Mapping) -> dict:
    """What the grade checkpoint's ``meta.preprocessing`` must equal to predict on stacks the segmentation
    checkpoint's predict stage made: its own slice parameters (applied here) with each ``stack`` key (n4,
    trim) taken from the segmentation checkpoint's ``meta.preprocessing``, the parameters those stacks got."""
    recorded = dict((grade_ckpt.get("meta") or {}).get("preprocessing") or {})
    seg = (seg_ckpt.get("meta") or {}).get("preprocessing") or {}
    if isinstance(recorded.get("stack"), Mapping):
        recorded["stack"] = {k: seg[k] for k in recorded["stack"] if k in seg}
    return recorded


def _load_checkpoint(path: Path) -> dict:
    from medflow.train import load_checkpoint

    try:
        return load_checkpoint(path)
    except FileNotFoundError:
        raise InputError(
            path, "checkpoint not found (predict.brats.grade_checkpoint / segmentation_checkpoint)"
        ) from None
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        raise InputError(path, f"not a readable checkpoint ({type(exc).__name__})") from None


def predict_new(
    inputs: Mapping[str, object], outputs: Mapping[str, str | os.PathLike], params: PredictParams, job
) -> dict:
    """P(HGG) of every new case; returns the summary written.

    ``inputs``: ``stacks`` (``<case>.h5`` of the segmentation predict stage), ``segmentations`` (its
    ``<case>.nii.gz``, raw grid, release labels), ``checkpoint`` (grade), ``segmentation_checkpoint``.
    ``outputs``: ``predictions`` (CSV case, p_hgg, label, n_slices), ``excluded`` (CSV case, reason: unreadable
    or mismatched files, no slice with ``min_tumour_pixels`` predicted tumour pixels), ``cams`` (folder of
    ``<case>.png`` for the first ``params.cams`` cases), ``summary`` and ``lineage`` (JSON). A bad case is
    logged and excluded; no readable case at all is an InputError. One MLflow run ``job.rule``.
    """
    from medflow import io
    from medflow.grade.aggregate import aggregate
    from medflow.grade.model import CLASSES, load_model
    from medflow.grade.slices import SliceParams
    from medflow.lineage import check_checkpoint, model_record, write_lineage
    from medflow.params import from_config
    from medflow.preprocess.stack import read_stack
    from medflow.segmentation.predict import predicted_labels
    from medflow.train import select_device

    grade_path, seg_path = Path(inputs["checkpoint"]), Path(inputs["segmentation_checkpoint"])
    ckpt, seg_ckpt = _load_checkpoint(grade_path), _load_checkpoint(seg_path)
    check_checkpoint(seg_ckpt, seg_path, pipeline=SEGMENTATION_PIPELINE)
    # The pipeline first (a segmentation checkpoint named as the grade model), then the stacks' preprocessing.
    check_checkpoint(ckpt, grade_path, pipeline=PIPELINE, preprocessing=expected_preprocessing(ckpt, seg_ckpt))
    slice_params = from_config(SliceParams, ckpt["meta"]["preprocessing"]["slices"])
    cases = pair_cases(list(inputs["stacks"]), list(inputs["segmentations"]))
    if not cases:
        raise InputError(outputs["predictions"], "no new cases to predict")

    device = select_device(job.threads)
    model = load_model(ckpt).to(device)
    cams_dir = Path(outputs["cams"])
    slice_cases, slice_probs, excluded, kept = [], [], [], {}
    n_unreadable = 0
    for case, (stack_file, seg_file) in cases.items():
        try:
            stack = read_stack(stack_file, with_label=False)
            label = predicted_labels(seg_file, stack)
        except InputError as exc:
            log.error("%s excluded: %s", case, exc)
            excluded.append({"case": case, "reason": str(exc)})
            n_unreadable += 1
            continue
        pred = predict_case(
            model, stack.image, label, slice_params, device, batch_size=params.batch_size, bf16=job.bf16
        )
        if len(pred.prob) == 0:
            reason = f"no slice with >= {slice_params.min_tumour_pixels} predicted tumour pixels"
            log.warning("%s excluded: %s", case, reason)
            excluded.append({"case": case, "reason": reason})
            continue
        slice_cases += [case] * len(pred.prob)
        slice_probs.append(pred.prob)
        if len(kept) < int(params.cams):  # only the cases drawn keep their slices in memory
            kept[case] = pred
    if n_unreadable == len(cases):
        raise InputError(Path(next(iter(cases.values()))[0]).parent, "no readable case: " + excluded[0]["reason"])

    threshold = float(params.threshold)
    if slice_cases:
        table = aggregate(slice_cases, np.concatenate(slice_probs), params.aggregate)
    else:
        table = pd.DataFrame({"id": [], "prob": [], "n_slices": []})
    predictions = pd.DataFrame(
        {
            "case": table["id"].astype(str),
            "p_hgg": table["prob"].astype(float),
            "label": [CLASSES[int(p >= threshold)] for p in table["prob"]],
            "n_slices": table["n_slices"].astype(int),
        }
    )
    with io.atomic_path(outputs["predictions"]) as tmp:
        predictions.to_csv(tmp, index=False, float_format="%.6f")
    with io.atomic_path(outputs["excluded"]) as tmp:
        pd.DataFrame(excluded, columns=["case", "reason"]).to_csv(tmp, index=False)

    figures = []
    cams_dir.mkdir(parents=True, exist_ok=True)  # each PNG is written atomically (medflow.io.save_figure)
    by_case = predictions.set_index("case")
    for case, pred in kept.items():
        p, lab = float(by_case.at[case, "p_hgg"]), by_case.at[case, "label"]
        png = cams_dir / f"{case}.png"
        save_case_cam(model, pred.x, pred.prob, pred.z, png, title=f"{case}: P(HGG) {p:.2f} / predicted {lab}")
        figures.append(str(png))

    class_mix = {c: int((predictions["label"] == c).sum()) for c in reversed(CLASSES)}
    summary = {"n_predicted": len(predictions), "n_excluded": len(excluded), "class_mix": class_mix, "figures": figures}
    io.write_json(outputs["summary"], summary)
    models = [
        model_record(MODEL_NAMES[PIPELINE], grade_path, ckpt),
        model_record(MODEL_NAMES[SEGMENTATION_PIPELINE], seg_path, seg_ckpt),
    ]
    rule = job.rule or RULE
    write_lineage(
        outputs["lineage"],
        models,
        {
            "aggregate": params.aggregate,
            "threshold": threshold,
            "cams": int(params.cams),
            "slices": slice_params.as_dict(),
        },
        rule,
    )
    log.info("%d cases predicted (%s), %d excluded", len(predictions), class_mix, len(excluded))
    if job.track:
        from medflow import tracking

        tracking.log_prediction(
            EXPERIMENT,
            rule,
            models=models,
            artifacts=[outputs[k] for k in ("predictions", "excluded", "summary", "lineage", "cams")],
            params={"aggregate": params.aggregate, "threshold": threshold},
            metrics={"n_predicted": len(predictions), "n_excluded": len(excluded)},
            rule=job.rule,
        )
    return summary
