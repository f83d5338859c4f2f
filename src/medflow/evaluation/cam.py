"""Class-activation maps of the 2D classifiers (BraTS grade, MRNet, RSNA, OCT), from MONAI's ``GradCAM``.

``grad_cam`` gives one map per input image, scaled to [0, 1] and upsampled to the image; ``save_overlay``
draws it over the image as a PNG. The evaluate and predict stages of each classifier call both for up to
``cams`` items (config ``evaluation.cams``, ``predict.cams``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch


def grad_cam(
    model: torch.nn.Module, x: torch.Tensor, target_layer: str, class_idx: int = 0, **forward_kwargs
) -> np.ndarray:
    """Grad-CAM of ``model`` for class (logit column) ``class_idx`` at the module named ``target_layer``
    (a name of ``model.named_modules()``, e.g. ``"features.28"``): (B, C, H, W) -> (B, H, W) in [0, 1].

    Runs in float32 with gradients (never under ``inference_mode`` or autocast); the input is made to
    require gradients, so maps exist for frozen backbones too (OCT's VGG16 features). ``forward_kwargs``
    go to ``model(x, **forward_kwargs)`` (RSNA's metadata). The model's train/eval mode is restored.
    A map that is 0 everywhere (no positive evidence) stays 0.
    """
    from monai.visualize import GradCAM

    x = x.detach().float().clone().requires_grad_(True)
    with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        # MONAI's default normaliser maps (min, max) to (1, 0): high evidence would draw as low.
        cam = GradCAM(nn_module=model, target_layers=target_layer, postprocessing=_min_max)
        maps = cam(x, class_idx=class_idx, **forward_kwargs)
    return maps.detach().float().cpu().numpy()[:, 0]


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    """Each map of (B, 1, ...) scaled to [0, 1] (min -> 0, max -> 1); a constant map -> 0."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    shape = (-1, *[1] * (maps.dim() - 1))
    return torch.where((hi > lo).view(shape), (maps - lo.view(shape)) / span.view(shape), torch.zeros_like(maps))


def _grey(image: np.ndarray) -> np.ndarray:
    """Any (H, W) image -> [0, 1] for display (min-max; a constant image is 0)."""
    image = np.asarray(image, dtype=np.float64)
    lo, hi = np.nanmin(image), np.nanmax(image)
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def save_overlay(
    images: np.ndarray | Sequence[np.ndarray],
    cams: np.ndarray | Sequence[np.ndarray],
    path: str | os.PathLike,
    *,
    titles: Sequence[str] | None = None,
    suptitle: str | None = None,
    alpha: float = 0.4,
) -> None:
    """One PNG of each (H, W) image in grey with its (H, W) map in 'jet' over it, side by side.

    ``images``/``cams``: one pair, or sequences of pairs (MRNet: the slices that drive the max-pool).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medflow.io import save_figure

    if isinstance(images, np.ndarray) and images.ndim == 2:
        images, cams = [images], [cams]
    if len(images) != len(cams) or not len(images):
        raise ValueError(f"save_overlay: {len(images)} images, {len(cams)} maps")
    fig, axes = plt.subplots(1, len(images), figsize=(3 * len(images), 3.3), squeeze=False)
    for i, (ax, image, cam) in enumerate(zip(axes[0], images, cams)):
        if np.shape(image) != np.shape(cam):
            raise ValueError(f"save_overlay: image {np.shape(image)} and map {np.shape(cam)} differ in shape")
        ax.imshow(_grey(image), cmap="gray", vmin=0, vmax=1)
        ax.imshow(np.asarray(cam, dtype=np.float64), cmap="jet", alpha=alpha, vmin=0, vmax=1)
        ax.set_axis_off()
        if titles:
            ax.set_title(titles[i], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    save_figure(fig, path)
