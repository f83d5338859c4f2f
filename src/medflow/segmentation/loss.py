"""Soft Dice loss as the tutorial defines it: squares in the denominator, a smoothing epsilon,
averaged over classes.

    dice_c = (2 * sum(p_c * t_c) + eps) / (sum(p_c^2) + sum(t_c^2) + eps)
    loss   = 1 - mean_c dice_c

Sums run over the batch and all spatial voxels of each class, so a class absent from one patch
does not dominate the batch; a perfect prediction gives exactly 0 (even for an absent class,
where the ratio is eps / eps).
"""

from __future__ import annotations

import torch


def soft_dice(probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-class soft Dice coefficient, shape (C,).

    ``probs``: (B, C, Z, Y, X) sigmoid outputs in [0, 1]; ``target``: same shape, one-hot in {0, 1}.
    Computed in float32 whatever the autocast dtype of ``probs``.
    """
    if probs.shape != target.shape:
        raise ValueError(f"probs {tuple(probs.shape)} and target {tuple(target.shape)} differ")
    p, t = probs.float(), target.float()
    dims = (0, *range(2, p.ndim))
    numerator = 2.0 * (p * t).sum(dims) + eps
    denominator = (p * p).sum(dims) + (t * t).sum(dims) + eps
    return numerator / denominator


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 - soft Dice averaged over classes (a scalar); see :func:`soft_dice` for shapes."""
    return 1.0 - soft_dice(probs, target, eps).mean()


class SoftDiceLoss(torch.nn.Module):
    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_dice_loss(probs, target, self.eps)
