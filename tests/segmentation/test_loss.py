"""Soft Dice loss (squares in the denominator, epsilon, mean over classes)."""

import pytest
import torch

from medflow.segmentation.loss import soft_dice, soft_dice_loss


def target(seed=0):
    g = torch.Generator().manual_seed(seed)
    t = (torch.rand(2, 3, 4, 6, 6, generator=g) > 0.7).float()
    t[:, 2] = 0  # one class absent from the whole batch
    return t


def test_perfect_overlap_gives_zero():
    t = target()
    assert float(soft_dice_loss(t.clone(), t)) == pytest.approx(0.0, abs=1e-7)


def test_hand_computed_value():
    p = torch.tensor([0.5, 1.0, 0.0, 0.25]).reshape(1, 1, 1, 1, 4)
    t = torch.tensor([1.0, 1.0, 0.0, 0.0]).reshape(1, 1, 1, 1, 4)
    eps = 1e-5
    num = 2 * (0.5 + 1.0) + eps
    den = (0.25 + 1.0 + 0.0625) + 2.0 + eps
    assert float(soft_dice(p, t, eps)[0]) == pytest.approx(num / den)
    assert float(soft_dice_loss(p, t, eps)) == pytest.approx(1 - num / den)


def test_gradient_raises_true_voxels_and_lowers_false_ones():
    t = target(1)
    p = torch.full_like(t, 0.5, requires_grad=True)
    soft_dice_loss(p, t).backward()
    grad = p.grad
    # Gradient descent moves p against the gradient: up where the label is 1, down where it is 0.
    assert (grad[t == 1] < 0).all()
    assert (grad[t == 0] > 0).all()
    with torch.no_grad():
        stepped = (p - 0.1 * grad / grad.abs().max()).clamp(0, 1)
    assert float(soft_dice_loss(stepped, t)) < float(soft_dice_loss(p.detach(), t))


def test_loss_grows_as_the_prediction_gets_worse():
    t = target(2)
    losses = [float(soft_dice_loss(t * (1 - a) + (1 - t) * a, t)) for a in (0.0, 0.2, 0.5, 0.8, 1.0)]
    assert losses == sorted(losses)
    assert losses[-1] == pytest.approx(1.0, abs=1e-6)  # every voxel wrong in every class


def test_shapes_must_match():
    with pytest.raises(ValueError):
        soft_dice_loss(torch.zeros(1, 3, 2, 2, 2), torch.zeros(1, 2, 2, 2, 2))
