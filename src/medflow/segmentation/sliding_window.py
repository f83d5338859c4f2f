"""Sliding-window inference of the U-Net over a whole stacked volume (evaluation and the predict stage).

The volume is cut into overlapping windows (a grid that reaches every border, :func:`window_starts`);
each window's probabilities are weighted by :func:`importance_map` and averaged where windows overlap.
Everything after the window is cut stays on the model's device: the weighted sum and the weights are
accumulated there, and one copy to the host returns the whole probability map (no copy per window).

Windows whose input is 0 in every channel hold no brain (after skull stripping every voxel outside the
brain is 0 in all modalities): with ``skip_background`` they are not run, and every voxel outside the
brain gets probability 0 (background). A brain voxel only lies in windows that are run, so its
probabilities are those of the full pass (benchmarks/bench_sliding_window.py: a third of the windows
of a real-size BraTS case are skipped).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

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
    window (as nnU-Net and MONAI's default ``sigma_scale``) trusts window centres over borders, where
    context is missing. Scaled to a peak of 1, then floored at 1e-3."""
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


def fold_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` in eval mode where every batch norm that directly follows a convolution in an
    ``nn.Sequential`` is folded into that convolution's weights and bias (``fuse_conv_bn_eval``): the same
    function up to float rounding (probabilities within 1e-5), without the batch norms' pass over every
    activation (12-20% of the demo U-Net's CPU forward time). ``model`` itself is left as it is; a model
    with nothing to fold is returned as it is."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    convs = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)

    def pairs(m: torch.nn.Module):
        for seq in m.modules():
            if isinstance(seq, torch.nn.Sequential):
                for i in range(len(seq) - 1):
                    conv, bn = seq[i], seq[i + 1]
                    if isinstance(conv, convs) and isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                        if bn.track_running_stats:
                            yield seq, i

    if next(pairs(model), None) is None:
        return model  # nothing to fold: no copy
    model = copy.deepcopy(model).eval()
    for seq, i in list(pairs(model)):
        seq[i], seq[i + 1] = fuse_conv_bn_eval(seq[i], seq[i + 1]), torch.nn.Identity()
    return model


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
    skip_background: bool = True,
    brain: np.ndarray | None = None,
    fold_bn: bool = True,
) -> np.ndarray:
    """Probabilities (L, Z, Y, X) float32 of ``model`` over a whole volume ``image`` (C, Z, Y, X).

    Windows of size ``window`` (pz, py, px) overlap by ``overlap``; their outputs are averaged with
    :func:`importance_map` weights. ``batch_size`` windows go through the model at once (all batches
    through one ``medflow.train.predict`` call: eval mode, inference mode, its precision policy).
    ``transform`` maps each batch of windows (B, C, pz, py, px), as an ndarray, before the model (e.g.
    the per-window standardisation the training patches got). A volume smaller than the window along
    an axis is zero-padded and cropped back afterwards.

    ``skip_background``: windows without a ``brain`` voxel are not run and every voxel outside
    ``brain`` gets probability 0. ``brain`` (Z, Y, X) bool defaults to the voxels where some channel
    of ``image`` is not 0; pass it when ``image`` was normalised as a whole (its background is no longer
    0). With ``skip_background=False`` every window is run and every voxel keeps its blended output.

    ``fold_bn``: run :func:`fold_batch_norm`'s copy of ``model`` (inference only needs the folded weights).
    """
    device = device or next(model.parameters()).device
    if fold_bn:
        model = fold_batch_norm(model)
    window = tuple(int(w) for w in window)
    c, *shape = image.shape
    if skip_background:
        brain = np.any(image != 0, axis=0) if brain is None else np.asarray(brain, bool)
        if brain.shape != tuple(shape):
            raise ValueError(f"brain mask {brain.shape} does not match the image's {tuple(shape)}")
    pad = [max(0, w - s) for w, s in zip(window, shape)]
    if any(pad):
        image = np.pad(image, [(0, 0)] + [(0, p) for p in pad])
        if skip_background:
            brain = np.pad(brain, [(0, p) for p in pad])
    padded = image.shape[1:]
    starts = itertools.product(*(window_starts(s, w, overlap) for s, w in zip(padded, window)))
    boxes = [tuple(slice(s, s + w) for s, w in zip(start, window)) for start in starts]
    if skip_background:
        # At least one window runs, so the number of labels is known even for an empty volume.
        boxes = [b for b in boxes if brain[b].any()] or boxes[:1]
    weight = torch.from_numpy(importance_map(window, blend)).to(device)

    if transform is None:
        # The whole volume goes to the device once; windows are cut there.
        volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)

    def batches():
        for i in range(0, len(boxes), batch_size):
            chunk = boxes[i : i + batch_size]
            if transform is None:
                # Copies into one buffer: torch.stack of the strided window views is about 100x slower.
                batch = torch.empty((len(chunk), c, *window), dtype=torch.float32, device=device)
                for j, b in enumerate(chunk):
                    batch[j].copy_(volume[(slice(None), *b)])
                yield batch, i
                continue
            windows = transform(np.stack([image[(slice(None), *b)] for b in chunk]))
            batch = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
            yield (batch.pin_memory() if device.type == "cuda" else batch), i

    acc: list[torch.Tensor] = []  # the weighted sum (L, *padded), made once the number of labels is known
    norm = torch.zeros(padded, dtype=torch.float32, device=device)

    def forward(m: torch.nn.Module, batch) -> torch.Tensor:
        windows, first = batch
        out = m(windows)
        # Weighted into a contiguous buffer: adding a channels-last output into the volume is about 2x slower.
        weighted = torch.empty(out.shape, dtype=torch.float32, device=device)
        torch.mul(out, weight, out=weighted)
        if not acc:
            acc.append(torch.zeros((weighted.shape[1], *padded), dtype=torch.float32, device=device))
        for p, b in zip(weighted, boxes[first : first + len(windows)]):
            acc[0][(slice(None), *b)] += p
            norm[b] += weight
        # A host tensor, so predict's gathering of the outputs copies nothing back from the device.
        return torch.full((1,), len(windows))

    predict_batches(model, batches(), device, bf16=bf16, forward=forward)
    with torch.inference_mode():
        probs = acc[0]
        crop = (slice(None), *(slice(0, s) for s in shape))
        probs.div_(norm)
        if skip_background:
            # Voxels only in skipped windows are 0 / 0 here: set, as all background, to 0.
            probs.masked_fill_(~torch.from_numpy(brain).to(device), 0.0)
        return np.ascontiguousarray(probs[crop].cpu().numpy())
