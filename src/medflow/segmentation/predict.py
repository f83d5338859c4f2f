"""Turning inputs into U-Net outputs: the one place the segmentation model runs without training.

- ``sliding_window`` / ``predict_case``: probabilities / the stored label map of a whole stacked case
  (evaluation, and a predict stage on new data);
- ``score_patches``: the validation inside ``fit`` (loss and Dice voxel counts of patch batches);
- ``uncrop`` / ``write_nifti``: a prediction written back into the geometry of the raw NIfTI, so it
  overlays on the original images;
- ``predict_new_case`` / ``collect_volumes``: new, unlabeled cases (the BraTS validation layout) through
  the training cases' preprocessing and ``predict_case``, written in the release's submission format, and
  their tumour volumes (docs/predict_brats.md).

Every batch goes through ``medflow.train.predict`` (eval mode, inference_mode, bf16 autocast on CUDA,
full precision on the CPU), so validation and test numbers come from the model at the same precision.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medflow import io
from medflow.preprocess.patches import standardise as patch_standardise
from medflow.segmentation import regions
from medflow.segmentation.loss import soft_dice_loss
from medflow.segmentation.sliding_window import BLENDS, importance_map, sliding_window, window_starts  # noqa: F401
from medflow.train import predict as predict_batches

STANDARDISE = ("window", "volume")


@dataclass
class PredictParams:
    """How a whole case is predicted (keys of ``brats.segmentation.evaluate``): windows overlapping by
    ``overlap`` (fraction), ``batch_size`` windows per forward pass, ``blend`` ``gaussian`` or ``constant``;
    ``standardise``: ``window`` (each window as each training patch was) or ``volume`` (once, whole slices);
    ``skip_background``: windows without brain are not run and voxels outside the brain are background."""

    overlap: float = 0.5
    standardise: str = "window"
    batch_size: int = 2
    blend: str = "gaussian"
    skip_background: bool = True


def predict_case(
    model: torch.nn.Module,
    image: np.ndarray,
    window: Sequence[int],
    params: PredictParams,
    *,
    threshold: float,
    device: torch.device | None = None,
    bf16: bool = True,
    standardise: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Stored label map (Z, Y, X) uint8 of one stacked (4, Z, Y, X) image (as stored, not normalised).

    ``window`` (pz, py, px) is the training patch size (checkpoint ``meta["patch_size"]``), ``threshold``
    training's (``meta["threshold"]``). ``standardise`` (default: the patch sampler's per-channel,
    per-slice ``medflow.preprocess.patches.standardise``) is applied to every window
    (``params.standardise == "window"``: what each training patch got) or once to the whole volume.
    The brain, for ``params.skip_background``, is every voxel with signal in some channel of ``image``.
    """
    if params.standardise not in STANDARDISE:
        raise ValueError(f"standardise must be one of {STANDARDISE}, got {params.standardise!r}")
    standardise = standardise or patch_standardise
    per_window = params.standardise == "window"
    x = image if per_window else standardise(image)
    probs = sliding_window(
        model,
        x,
        window,
        overlap=params.overlap,
        batch_size=params.batch_size,
        blend=params.blend,
        device=device,
        bf16=bf16,
        transform=standardise if per_window else None,
        skip_background=params.skip_background,
        brain=np.any(image != 0, axis=0) if params.skip_background else None,
    )
    return regions.probabilities_to_labels(probs, threshold)


def score_patches(
    model: torch.nn.Module,
    loader,
    *,
    threshold: float,
    dice_epsilon: float,
    device: torch.device | None = None,
    bf16: bool = True,
) -> tuple[float, int, dict[str, list[float]]]:
    """Loss and hard-Dice voxel counts of ``model`` over (image (B, 4, pz, py, px), one-hot label
    (B, 3, pz, py, px)) batches: ``(sum over batches of soft Dice loss x batch size, patches,
    {structure: [intersection, predicted, true] voxels})`` for every ``regions.STRUCTURES`` entry,
    labels taken at ``threshold``. Counting happens per batch on the device (no probabilities are kept).
    """
    device = device or next(model.parameters()).device

    def forward(m: torch.nn.Module, batch) -> dict[str, torch.Tensor]:
        image, label = batch
        probs = m(image)
        pred_m = regions.masks(regions.probabilities_to_labels(probs.float(), threshold, axis=1))
        true_m = regions.masks(regions.onehot_to_labels(label, axis=1))
        counts = torch.stack(
            [torch.stack([(pred_m[s] & true_m[s]).sum(), pred_m[s].sum(), true_m[s].sum()]) for s in regions.STRUCTURES]
        )
        # One row per batch: the loss is a batch statistic (sums over the whole batch).
        return {
            "loss": soft_dice_loss(probs, label, dice_epsilon).reshape(1),
            "n": torch.tensor([len(image)]),
            "counts": counts[None],
        }

    out = predict_batches(model, loader, device, bf16=bf16, forward=forward)
    loss_sum = 0.0
    for loss, n in zip(out["loss"], out["n"]):  # the batch order of a plain loop, in Python floats
        loss_sum += float(loss) * int(n)
    totals = out["counts"].sum(axis=0)  # integer voxel counts: exact in any order
    return loss_sum, int(out["n"].sum()), {s: [float(v) for v in totals[i]] for i, s in enumerate(regions.STRUCTURES)}


def uncrop(label_zyx: np.ndarray, kept_z_range: Sequence[int], original_shape_zyx: Sequence[int]) -> np.ndarray:
    """Put a (Z, Y, X) map of the kept slices back into the original (Z0, Y, X) volume (zeros elsewhere)."""
    start, stop = (int(v) for v in kept_z_range)
    full = np.zeros(tuple(int(s) for s in original_shape_zyx), dtype=label_zyx.dtype)
    if stop - start != label_zyx.shape[0] or full.shape[1:] != label_zyx.shape[1:]:
        raise ValueError(f"a {label_zyx.shape} map does not fit slices [{start}, {stop}) of {full.shape}")
    full[start:stop] = label_zyx
    return full


def write_nifti(label_zyx: np.ndarray, affine: np.ndarray, path: str | os.PathLike, *, like=None) -> None:
    """Write a (Z, Y, X) label map as a uint8 NIfTI in the source image's voxel grid.

    The stacking stage reads NIfTI data (i, j, k) = (X, Y, Z) and transposes it to (Z, Y, X)
    (docs/brats_preprocessing.md); this is the inverse, with the source ``affine`` as qform and sform.
    ``like``: the raw nibabel image itself (a submission): its header is copied (qform, sform and their
    codes, units, orientation), only the data type set to uint8 without scaling; its shape and affine must
    be the map's and ``affine``.
    """
    import nibabel as nib

    data = np.ascontiguousarray(np.asarray(label_zyx, dtype=np.uint8).transpose(2, 1, 0))
    if like is None:
        img = nib.Nifti1Image(data, np.asarray(affine, dtype=float))
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    else:
        if tuple(like.shape) != data.shape or not np.allclose(like.affine, affine, atol=1e-3):
            raise ValueError(f"a map of (X, Y, Z) {data.shape} and this affine does not fit the {like.shape} image")
        header = like.header.copy()
        header.set_data_dtype(np.uint8)
        header.set_slope_inter(1.0, 0.0)  # labels as they are, whatever scaling the raw intensities had
        img = type(like)(data, None, header)  # no affine: the header's qform/sform stay exactly the raw ones
    img.header.set_data_dtype(np.uint8)
    with io.atomic_path(path) as tmp:
        nib.save(img, str(tmp))


# ---------------------------------------------------------------------------------------------------
# New, unlabeled cases (rules brats_segmentation_predict, per case, and brats_segmentation_volumes).
# A new case goes through the training cases' own preprocessing functions (validation without seg, N4,
# trimming, stacking), with the parameters its checkpoint records, then through predict_case exactly as
# evaluation runs it; the labels go back into the raw file's grid and the release's label values.

log = logging.getLogger(__name__)

PIPELINE = "brats_segmentation"  # meta.pipeline of a U-Net checkpoint
EXPERIMENT = "brats_segmentation"
PREDICT_RULE = "brats_segmentation_predict"  # MLflow/lineage names when no rule runs the job
VOLUMES_RULE = "brats_segmentation_volumes"
UNET_META = ("model", "patch_size", "threshold")
# How each training patch was standardised (medflow.preprocess.patches.standardise): per channel and axial
# slice to mean 0 / sd 1. Recorded, so a checkpoint trained on otherwise standardised patches is refused.
PATCH_STANDARDISATION = "per_channel_per_slice"
MODEL_NAME = "segmentation"  # the model's name in lineage records and MLflow tags


def preprocessing_record(n4: Mapping[str, Any], trim: Mapping[str, Any]) -> dict[str, Any]:
    """``meta.preprocessing`` of a U-Net checkpoint: every parameter that shaped its input voxels.

    ``n4``: ``brats.n4`` (its ``N4Params`` fields are kept; threads and per_modality only change how N4
    runs); ``trim``: ``brats.trim``. Adds the stacked channels' order, axes and dtype and the patches'
    standardisation. The train rule records it; the predict rule builds it from its config and refuses a
    checkpoint whose record differs (:func:`load_unet_checkpoint`).
    """
    from dataclasses import fields

    from medflow.ingest.brats import MODALITIES
    from medflow.preprocess.n4 import N4Params

    return {
        "n4": {f.name: io.to_plain(n4[f.name]) for f in fields(N4Params)},
        "trim": {"margin": int(trim["margin"])},
        "stack": {"modalities": list(MODALITIES), "axes": "CZYX", "dtype": "float32"},
        "patches": {"standardise": PATCH_STANDARDISATION},
    }


def load_unet_checkpoint(path: str | os.PathLike, *, preprocessing: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint of ``brats_segmentation_train`` (``medflow.train.load_checkpoint``), checked.

    Its meta must hold ``UNET_META`` (model config, patch size, threshold). With ``preprocessing`` (what
    :func:`preprocessing_record` gives for the inputs to predict on) it must also be a checkpoint of this
    pipeline (``meta.pipeline``) recording the same preprocessing (``medflow.lineage.check_checkpoint``).
    Anything else: ``InputError`` naming the file and each difference.
    """
    from medflow.errors import InputError
    from medflow.lineage import check_checkpoint
    from medflow.train import load_checkpoint

    try:
        ckpt = load_checkpoint(path)
    except FileNotFoundError:
        raise InputError(path, "checkpoint not found (predict.brats.segmentation_checkpoint)") from None
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        raise InputError(path, f"not a readable checkpoint ({type(exc).__name__})") from None
    if preprocessing is not None:
        check_checkpoint(ckpt, path, pipeline=PIPELINE, preprocessing=preprocessing)
    meta = ckpt.get("meta", {})
    lacking = [k for k in UNET_META if k not in meta]
    if lacking:
        raise InputError(path, f"not a U-Net checkpoint of brats_segmentation_train (meta lacks {', '.join(lacking)})")
    return ckpt


def preprocess_new_case(
    input_dir: str | os.PathLike,
    case: str,
    out_stack: str | os.PathLike,
    preprocessing: Mapping[str, Any],
    *,
    release,
    threads: int = 1,
) -> dict[str, Any]:
    """Validate, N4-correct, trim and stack one new case as the training cases were, by the same functions
    (``validate_case`` without seg, ``n4.correct_case``, ``trim.trim_range``, ``stack.stack_case``) with the
    parameters of ``preprocessing`` (a checkpoint's ``meta.preprocessing``).

    Reads ``input_dir/<case>/`` in ``release``'s file names; writes the unlabeled stack ``out_stack``
    (image (4, Z, Y, X) float32 of the kept slices, the stacking contract's attributes). The corrected
    volumes live in a temporary folder beside ``out_stack``. A missing modality, a shape or affine mismatch
    or an unreadable file: ``InputError`` naming the file (every problem of the case, together). Returns
    ``validate_case``'s description plus ``trim`` (``trim_range``'s result).
    """
    import tempfile
    from pathlib import Path

    from medflow.ingest.brats import MODALITIES, validate_case
    from medflow.params import from_config
    from medflow.preprocess.n4 import N4Params, correct_case
    from medflow.preprocess.stack import StackParams, stack_case
    from medflow.preprocess.trim import trim_range

    info = validate_case(input_dir, case, release=release, with_seg=False)
    n4 = from_config(N4Params, preprocessing["n4"])
    Path(out_stack).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(out_stack).parent, prefix=f".{case}.") as tmp:
        corrected = {m: os.path.join(tmp, f"{case}_{m}.nii") for m in MODALITIES}
        correct_case({m: info["files"][m] for m in MODALITIES}, corrected, n4, threads)
        trim = trim_range([corrected[m] for m in MODALITIES], int(preprocessing["trim"]["margin"]))
        stack_case(
            case,
            corrected,
            None,  # no segmentation: the stack of a new case has no label dataset
            trim["kept_z_range"],
            out_stack,
            StackParams(),  # chunking and compression: how the file is stored, not what it holds
            affine=info["affine"],
            source_files=[info["source_files"][m] for m in MODALITIES],
            release=release,
        )
    return {**info, "trim": trim}


def label_volumes(stored: np.ndarray, spacing_zyx: Sequence[float], release) -> dict[str, dict[str, Any]]:
    """Tumour volumes of a stored label map (any shape; voxels of ``spacing_zyx`` mm): for each BraTS region
    (WT, TC, ET) and each of ``release``'s labels (``label_<value>``, e.g. ``label_4`` the enhancing tumour
    in 2020, ``label_3`` in 2023-GLI, with its ``part``): ``{"voxels", "mm3", "ml"}`` (1 ml = 1000 mm^3)."""
    from medflow.ingest.releases import STORED

    voxel_mm3 = float(np.prod([float(s) for s in spacing_zyx]))
    stored = np.asarray(stored)

    def entry(mask: np.ndarray) -> dict[str, Any]:
        n = int(np.count_nonzero(mask))
        return {"voxels": n, "mm3": n * voxel_mm3, "ml": n * voxel_mm3 / 1000.0}

    masks = regions.masks(stored)
    out = {name: entry(masks[name]) for name in regions.REGION_NAMES}
    for part, value in release.labels.items():
        out[f"label_{value}"] = {"part": part, **entry(stored == STORED[part])}
    return out


def predicted_labels(seg_path: str | os.PathLike, stack) -> np.ndarray:
    """A prediction as written (the release's labels, the raw (X, Y, Z) grid) back as stored labels (Z, Y, X)
    uint8 in the grid of ``stack`` (a ``medflow.preprocess.stack.Stack``: its kept axial slices)."""
    from medflow.errors import InputError
    from medflow.ingest import releases
    from medflow.ingest.brats import load_nifti
    from medflow.preprocess.stack import to_zyx

    _, seg = load_nifti(seg_path)
    seg_zyx = to_zyx(seg)
    if seg_zyx.shape != tuple(stack.original_shape_zyx):
        raise InputError(
            seg_path, f"(Z, Y, X) {list(seg_zyx.shape)} is not the case's {list(stack.original_shape_zyx)}"
        )
    start, stop = stack.kept_z_range
    return np.ascontiguousarray(releases.get(stack.release).to_stored(seg_zyx[start:stop], seg_path))


def predict_new_case(
    input_dir: str | os.PathLike,
    case: str,
    outputs: Mapping[str, Any],
    *,
    checkpoint: str | os.PathLike,
    params: PredictParams,
    preprocessing: Mapping[str, Any],
    release,
    job,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Segment one new case ``input_dir/<case>/`` (four modalities, no seg) and write its outputs.

    ``checkpoint``: a U-Net checkpoint, refused unless its ``meta.preprocessing`` equals ``preprocessing``
    (:func:`preprocessing_record` of the config: what every other BraTS stage, the grade model's training
    stacks included, was made with). ``params``: the sliding window of evaluation
    (``brats.segmentation.evaluate``); the threshold and window size are the checkpoint's. ``job``: a
    ``medflow.train.Job`` (threads, bf16, rule). ``outputs``:

    - ``submission``: the label map in the raw flair file's exact grid and header, uint8, ``release``'s
      labels (2020: {0, 1, 2, 4}) — the BraTS submission format;
    - ``stack``: the preprocessed case (``read_stack(path, with_label=False)``);
    - ``case``: JSON with the volumes (:func:`label_volumes`), the kept slices, the geometry and lineage.

    Returns the JSON document.
    """
    import time
    from dataclasses import asdict
    from pathlib import Path

    import nibabel as nib

    from medflow import lineage
    from medflow.preprocess.stack import read_stack
    from medflow.segmentation.model import load_model
    from medflow.train import select_device

    start = time.perf_counter()
    ckpt = load_unet_checkpoint(checkpoint, preprocessing=preprocessing)
    meta = ckpt["meta"]
    info = preprocess_new_case(
        input_dir, case, outputs["stack"], meta["preprocessing"], release=release, threads=job.threads
    )
    stack = read_stack(outputs["stack"], with_label=False)
    device = device or select_device(job.threads)
    model = load_model(ckpt, device)
    threshold = float(meta["threshold"])
    pred = predict_case(
        model, stack.image, meta["patch_size"], params, threshold=threshold, device=device, bf16=job.bf16
    )
    full = uncrop(pred, stack.kept_z_range, stack.original_shape_zyx)
    write_nifti(release.from_stored(full), stack.affine, outputs["submission"], like=nib.load(info["files"]["flair"]))

    rule = job.rule or PREDICT_RULE
    record = lineage.model_record(MODEL_NAME, checkpoint, ckpt)
    config = {
        "input": str(input_dir),
        "release": release.name,
        "inference": asdict(params),
        "threshold": threshold,
        "patch_size": list(meta["patch_size"]),
        "preprocessing": meta["preprocessing"],
    }
    volumes = label_volumes(pred, stack.spacing_zyx, release)
    doc = {
        "case": case,
        "release": release.name,
        "submission": Path(outputs["submission"]).name,
        "shape_xyz": info["shape_xyz"],
        "spacing_xyz": info["spacing_xyz"],
        "kept_z_range": list(stack.kept_z_range),
        "n_slices": int(stack.original_shape_zyx[0]),
        "labels": [int(v) for v in np.unique(release.from_stored(pred))],
        "volumes": volumes,
        "lineage": lineage.lineage([record], config, rule),
    }
    io.write_json(outputs["case"], doc)
    log.info(
        "%s: WT %.2f ml, TC %.2f ml, ET %.2f ml; slices [%d, %d) of %d | %.1f s",
        case,
        volumes["WT"]["ml"],
        volumes["TC"]["ml"],
        volumes["ET"]["ml"],
        *stack.kept_z_range,
        doc["n_slices"],
        time.perf_counter() - start,
    )
    return doc


VOLUME_COLUMNS = ("WT", "TC", "ET")


def volumes_table(docs: Sequence[Mapping[str, Any]]):
    """One row per case (pandas DataFrame, case order as given): ``case``, ``wt_ml``, ``tc_ml``, ``et_ml``,
    ``label_<value>_ml`` per release label, the same in mm^3, ``kept_z_start``/``kept_z_stop`` (the kept
    axial slices [start, stop) of the raw volume) and the ``submission`` file name."""
    import pandas as pd

    rows = []
    for d in docs:
        vol = d["volumes"]
        labels = [k for k in vol if k.startswith("label_")]
        row = {"case": d["case"]}
        row.update({f"{k.lower()}_ml": vol[k]["ml"] for k in (*VOLUME_COLUMNS, *labels)})
        row.update({f"{k.lower()}_mm3": vol[k]["mm3"] for k in (*VOLUME_COLUMNS, *labels)})
        row.update(kept_z_start=d["kept_z_range"][0], kept_z_stop=d["kept_z_range"][1], submission=d["submission"])
        rows.append(row)
    return pd.DataFrame(rows)


def collect_volumes(inputs: Mapping[str, Any], outputs: Mapping[str, Any], *, n_overlays: int, job) -> dict[str, Any]:
    """Gather every predicted case's JSON into the prediction's summary files; log one MLflow prediction run.

    ``inputs``: ``cases`` (the per-case JSONs of :func:`predict_new_case`), ``stacks`` and ``submissions``
    (its stacks and label maps, file names ``<case>.h5`` and ``<case>`` + the submission suffix).
    ``outputs``: ``volumes`` (CSV, :func:`volumes_table`), ``summary`` (JSON ``{"n_predicted", "n_excluded",
    "class_mix", "figures", "mean_ml"}``; ``class_mix``: cases in which each region is predicted, and cases
    with no tumour), ``lineage`` (JSON: the model, config and commit) and ``figures`` (a folder of overlay PNGs
    of the first ``n_overlays`` cases: FLAIR and the predicted labels on the slice with the most tumour).
    Every case must come from the same checkpoint. Returns the summary.
    """
    import shutil
    from pathlib import Path

    from medflow import lineage
    from medflow.errors import InputError
    from medflow.preprocess.stack import read_stack
    from medflow.segmentation.evaluate import plot_overlay

    docs = [io.read_json(p) for p in inputs["cases"]]
    if not docs:
        raise InputError(outputs["volumes"], "no predicted case to collect")
    docs.sort(key=lambda d: d["case"])
    first = docs[0]["lineage"]
    for path, d in zip(inputs["cases"], docs):
        if d["lineage"]["models"] != first["models"] or d["lineage"]["config"] != first["config"]:
            raise InputError(path, f"predicted with another checkpoint or config than {docs[0]['case']}")
    stacks = {Path(p).name: str(p) for p in inputs["stacks"]}
    segs = {Path(p).name: str(p) for p in inputs["submissions"]}

    table = volumes_table(docs)
    with io.atomic_path(outputs["volumes"]) as tmp:
        table.to_csv(tmp, index=False)

    fig_dir = Path(outputs["figures"])
    if fig_dir.exists():
        shutil.rmtree(fig_dir)
    fig_dir.mkdir(parents=True)
    figures = []
    for d in docs[: max(0, int(n_overlays))]:
        stack = read_stack(stacks[f"{d['case']}.h5"], with_label=False)
        pred = predicted_labels(segs[d["submission"]], stack)
        png = fig_dir / f"{d['case']}.png"
        plot_overlay(stack.image[0], None, pred, png, title=d["case"], z_offset=stack.kept_z_range[0])
        figures.append(str(png))

    present = {name: sum(d["volumes"][name]["voxels"] > 0 for d in docs) for name in VOLUME_COLUMNS}
    summary = {
        "n_predicted": len(docs),
        "n_excluded": 0,  # a case that cannot be predicted fails its own job, named in its log
        "class_mix": {**present, "no tumour": sum(d["volumes"]["WT"]["voxels"] == 0 for d in docs)},
        "figures": figures,
        "mean_ml": {name: float(table[f"{name.lower()}_ml"].mean()) for name in VOLUME_COLUMNS},
    }
    io.write_json(outputs["summary"], summary)
    rule = job.rule or VOLUMES_RULE
    config = {**first["config"], "cases": [d["case"] for d in docs]}
    lineage.write_lineage(outputs["lineage"], first["models"], config, rule)
    log.info(
        "%d cases: WT in %d, ET in %d; mean WT %.2f ml",
        len(docs),
        present["WT"],
        present["ET"],
        summary["mean_ml"]["WT"],
    )
    if job.track:
        from medflow import tracking

        tracking.log_prediction(
            EXPERIMENT,
            rule,
            models=first["models"],
            artifacts=[outputs["volumes"], outputs["summary"], outputs["lineage"], outputs["figures"]],
            params={k: v for k, v in first["config"].items() if k != "preprocessing"},
            metrics={
                "n_predicted": summary["n_predicted"],
                "n_excluded": summary["n_excluded"],
                **{f"mean_{k.lower()}_ml": v for k, v in summary["mean_ml"].items()},
            },
            rule=job.rule,
        )
    return summary
