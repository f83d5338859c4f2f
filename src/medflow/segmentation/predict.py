"""Turning inputs into U-Net outputs: the one place the segmentation model runs without training.

- ``sliding_window`` / ``predict_case``: probabilities / the stored label map of a whole stacked case
  (evaluation, and a predict stage on new data);
- ``score_patches``: the validation inside ``fit`` (loss and Dice voxel counts of patch batches);
- ``uncrop`` / ``write_nifti``: a prediction written back into the geometry of the raw NIfTI, so it
  overlays on the original images.

Every batch goes through ``medflow.train.predict`` (eval mode, inference_mode, bf16 autocast on CUDA,
full precision on the CPU), so validation and test numbers come from the model at the same precision.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medflow import io
from medflow.preprocess.patches import standardise as patch_standardise
from medflow.segmentation import regions
from medflow.segmentation.loss import soft_dice_loss
from medflow.train import predict as predict_batches

BLENDS = ("gaussian", "constant")


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets of windows of ``window`` voxels covering ``size`` voxels with at least ``overlap``
    (fraction of the window) between neighbours; the last window ends exactly at ``size``."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size <= window:
        return [0]
    step = max(1, int(window * (1 - overlap)))
    n = math.ceil((size - window) / step) + 1
    # Spread the windows evenly so the last one ends at the border.
    return sorted({round(i * (size - window) / (n - 1)) for i in range(n)})


def importance_map(window: Sequence[int], blend: str = "gaussian") -> np.ndarray:
    """Per-voxel weight of a window's prediction (shape ``window``): a Gaussian with sigma 1/8 of the
    window (as nnU-Net) trusts window centres over borders, where context is missing."""
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    if blend == "constant":
        return np.ones(tuple(window), dtype=np.float32)
    axes = []
    for n in window:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        sigma = max(n / 8, 1e-3)
        axes.append(np.exp(-0.5 * (x / sigma) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    w = w / w.max()
    return np.maximum(w, 1e-3).astype(np.float32)  # never exactly 0: every voxel gets some weight


def sliding_window(
    model: torch.nn.Module,
    image: np.ndarray,
    window: Sequence[int],
    *,
    overlap: float = 0.25,
    batch_size: int = 1,
    blend: str = "gaussian",
    device: torch.device | None = None,
    bf16: bool = True,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Probabilities (L, Z, Y, X) float32 of ``model`` over a whole volume ``image`` (C, Z, Y, X).

    Windows of size ``window`` (pz, py, px) overlap by ``overlap``; their outputs are averaged with
    :func:`importance_map` weights. ``transform`` maps each batch of windows (B, C, pz, py, px)
    before the model (e.g. the per-window standardisation the training patches got). A volume
    smaller than the window along an axis is zero-padded and cropped back afterwards.
    """
    device = device or next(model.parameters()).device
    window = tuple(int(w) for w in window)
    c, *shape = image.shape
    pad = [max(0, w - s) for w, s in zip(window, shape)]
    if any(pad):
        image = np.pad(image, [(0, 0)] + [(0, p) for p in pad])
    padded = image.shape[1:]
    starts = list(itertools.product(*(window_starts(s, w, overlap) for s, w in zip(padded, window))))
    weight = importance_map(window, blend)
    weight_t = torch.from_numpy(weight).to(device)

    def weighted(m: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return m(batch).float() * weight_t  # weighted on the device, before the copy back

    acc = None
    norm = np.zeros(padded, dtype=np.float32)
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        boxes = [tuple(slice(s, s + w) for s, w in zip(start, window)) for start in chunk]
        windows = np.stack([image[(slice(None), *b)] for b in boxes])
        if transform is not None:
            windows = transform(windows)
        batch = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        if device.type == "cuda":
            batch = batch.pin_memory()
        # The accumulation stays here, with one predict call per batch of windows: predict gathers every
        # output before it returns, which over a whole volume would hold all windows' probabilities at once.
        probs = predict_batches(model, [batch], device, bf16=bf16, forward=weighted)
        if acc is None:
            acc = np.zeros((probs.shape[1], *padded), dtype=np.float32)
        for p, b in zip(probs, boxes):
            acc[(slice(None), *b)] += p
            norm[b] += weight
    acc /= norm
    return np.ascontiguousarray(acc[(slice(None), *(slice(0, s) for s in shape))])


STANDARDISE = ("window", "volume")


@dataclass
class PredictParams:
    """How a whole case is predicted (keys of ``brats.segmentation.evaluate``): windows overlapping by
    ``overlap`` (fraction), ``batch_size`` windows per forward pass, ``blend`` ``gaussian`` or ``constant``;
    ``standardise``: ``window`` (each window as each training patch was) or ``volume`` (once, whole slices)."""

    overlap: float = 0.5
    standardise: str = "window"
    batch_size: int = 2
    blend: str = "gaussian"


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


def write_nifti(label_zyx: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> None:
    """Write a (Z, Y, X) label map as a uint8 NIfTI in the source image's voxel grid.

    The stacking stage reads NIfTI data (i, j, k) = (X, Y, Z) and transposes it to (Z, Y, X)
    (docs/brats_preprocessing.md); this is the inverse, with the source ``affine`` as qform and sform.
    """
    import nibabel as nib

    data = np.ascontiguousarray(np.asarray(label_zyx, dtype=np.uint8).transpose(2, 1, 0))
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=float))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_data_dtype(np.uint8)
    with io.atomic_path(path) as tmp:
        nib.save(img, str(tmp))
