"""ResNet18 for 4-channel MR slices (flair, t1, t1ce, t2) with a 2-way head (LGG, HGG).

torchvision's ResNet18 with ``conv1`` replaced by a 4-input-channel convolution. With ImageNet
weights the new ``conv1`` is initialised from the RGB filters (:func:`adapt_conv1`), the rest of
the network keeps them; ``fc`` is always new. :func:`load_model` rebuilds a trained one from its checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn
from torchvision import models

from medflow.train.device import fp32_head
from medflow.train.pretrained import imagenet_state_dict

CONV1_INIT = ("mean", "repeat")
CLASSES = ["LGG", "HGG"]  # output index = grade code of medflow.grade.slices.GRADES (1 = HGG, the positive class)


@torch.no_grad()
def adapt_conv1(conv: nn.Conv2d, in_channels: int, init: str = "mean") -> nn.Conv2d:
    """A copy of ``conv`` (RGB, weight (O, 3, kH, kW)) taking ``in_channels`` inputs.

    ``mean``: every input channel gets the mean of the RGB filters; ``repeat``: the RGB filters are
    tiled over the channels (R, G, B, R, ...). Both are scaled by 3 / ``in_channels`` so that an input
    with equal channels gives the same activation magnitude as the RGB original (``mean`` gives
    exactly the original response to a grey image repeated on every channel).
    """
    if init not in CONV1_INIT:
        raise ValueError(f"conv1 init must be one of {CONV1_INIT}, not {init!r}")
    w = conv.weight
    if init == "mean":
        new_w = w.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
    else:
        reps = -(-in_channels // w.shape[1])
        new_w = w.repeat(1, reps, 1, 1)[:, :in_channels]
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=conv.bias is not None,
    )
    new.weight.copy_(new_w * (w.shape[1] / in_channels))
    if conv.bias is not None:
        new.bias.copy_(conv.bias)
    return new


def build_resnet18(
    in_channels: int = 4, n_classes: int = 2, *, weights: str = "none", conv1_init: str = "mean"
) -> nn.Module:
    """ResNet18: (N, in_channels, H, W) standardised slices -> logits (N, n_classes).

    ``weights``: ``imagenet`` (torchvision IMAGENET1K_V1 from torch's cache, else an InputError
    naming the file) or ``none`` (random; conv1 then has torchvision's own initialisation).
    """
    model = models.resnet18(weights=None)
    if weights == "imagenet":
        model.load_state_dict(imagenet_state_dict(models.ResNet18_Weights.IMAGENET1K_V1))
        model.conv1 = adapt_conv1(model.conv1, in_channels, conv1_init)
    elif weights == "none":
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    else:
        raise ValueError(f"weights must be 'imagenet' or 'none', not {weights!r}")
    model.fc = fp32_head(nn.Linear(model.fc.in_features, n_classes))  # float32 logits under bf16 autocast
    return model


def load_model(checkpoint: Mapping | str | os.PathLike) -> nn.Module:
    """The trained ResNet18 of a checkpoint (a ``medflow.train.load_checkpoint`` dict or its path), in
    eval mode on the CPU: built with random init from the checkpoint's ``meta``, then the saved weights."""
    if not isinstance(checkpoint, Mapping):
        from medflow.train import load_checkpoint

        checkpoint = load_checkpoint(checkpoint)
    meta = checkpoint["meta"]
    model = build_resnet18(int(meta["in_channels"]), len(meta["classes"]), weights="none")
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
