"""MRNet (Bien et al. 2018, as in the MRNet tutorial), taking packed batches of exams.

Every slice goes through torchvision's AlexNet ``features`` (greyscale copied to three channels,
ImageNet normalisation), global average pooling gives 256 values per slice, the maximum over an
exam's slices gives 256 values per exam, and a linear layer gives one logit per exam.

The tutorial runs one exam per forward pass. Here several exams' slices are concatenated into one
batch ``(N, H, W)`` with ``counts`` (slices per exam, summing to N); the max is taken per exam
(a segment max). AlexNet's features have no batch statistics, so packing changes nothing but speed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medflow.errors import InputError
from medflow.train import load_checkpoint

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURES = 256  # AlexNet's last conv layer
MIN_SIZE = 63  # smallest in-plane size AlexNet's features (three stride-2 pools) accept


@dataclass(frozen=True)
class ModelConfig:
    """``mrnet.train.model``: ``weights`` ``none`` (random initialisation) or ``imagenet`` (the cached
    torchvision AlexNet weights); ``image_size``: in-plane size in pixels the slices are resized to."""

    weights: str
    image_size: int


def alexnet_features(weights: str = "none") -> nn.Sequential:
    """torchvision AlexNet ``features``; ``imagenet`` loads the cached ImageNet weights (never downloads)."""
    from torchvision.models import AlexNet_Weights, alexnet

    net = alexnet(weights=None)
    if weights == "imagenet":
        from medflow.train.pretrained import imagenet_state_dict

        state = imagenet_state_dict(AlexNet_Weights.IMAGENET1K_V1)
        net.load_state_dict(state)
        log.info("AlexNet features: ImageNet weights")
    elif weights != "none":
        raise ValueError(f"weights must be 'none' or 'imagenet', got {weights!r}")
    return net.features


def segment_max(values: torch.Tensor, counts: torch.Tensor | list[int]) -> torch.Tensor:
    """Max over consecutive segments: ``values`` (N, F), ``counts`` (B,) summing to N -> (B, F).

    One ``scatter_reduce`` on ``values``' device: no host round trip for ``counts`` and no Python loop
    over exams, so a GPU step never waits for the host. Exact (a max rounds nothing); gradients go to
    each segment's maximum (shared evenly between ties), as ``amax`` per segment gives them. ``counts``
    on the CPU (a list, or the loader's tensor) are checked; on a GPU the check would need a sync.
    """
    if not torch.is_tensor(counts):
        counts = torch.tensor(list(counts), dtype=torch.int64)
    n = values.shape[0]
    if counts.device.type == "cpu" and (counts.numel() == 0 or int(counts.sum()) != n or int(counts.min()) < 1):
        raise ValueError(f"counts {counts.tolist()} do not split {n} slices into non-empty exams")
    counts = counts.to(values.device, non_blocking=True)
    # output_size: the exam index of every slice without the sync that sizing the output would need
    exam = torch.repeat_interleave(torch.arange(len(counts), device=values.device), counts, output_size=n)
    # -inf, not 0: the backward shares a maximum's gradient with every equal value, the initial ones included
    out = values.new_full((len(counts), values.shape[1]), float("-inf"))
    return out.scatter_reduce(0, exam[:, None].expand_as(values), values, reduce="amax", include_self=False)


class MRNet(nn.Module):
    def __init__(self, weights: str = "none"):
        super().__init__()
        self.features = alexnet_features(weights)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(FEATURES, 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def slice_features(self, slices: torch.Tensor) -> torch.Tensor:
        """(N, H, W) uint8 grey levels (or floats in 0-255) -> (N, 256) pooled AlexNet features."""
        if slices.shape[-1] < MIN_SIZE or slices.shape[-2] < MIN_SIZE:
            raise ValueError(f"slices of {tuple(slices.shape[-2:])} are smaller than AlexNet's minimum {MIN_SIZE}")
        x = slices.unsqueeze(1).to(self.mean.dtype) / 255.0
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        return self.pool(self.features(x)).flatten(1)

    def forward(self, slices: torch.Tensor, counts: torch.Tensor | list[int]) -> torch.Tensor:
        """Packed exams: ``slices`` (N, H, W), ``counts`` (B,) -> float32 logits (B,).

        The features run under the caller's autocast (bf16 on CUDA); the max over slices and the
        linear head run in float32, so logits and the probabilities taken from them keep full precision."""
        features = self.slice_features(slices)
        with torch.autocast(features.device.type, enabled=False):
            return self.classifier(segment_max(features.float(), counts)).squeeze(1)


def build_model(params: ModelConfig) -> MRNet:
    """A new MRNet with ``params.weights`` (random initialisation draws from torch's global generator)."""
    return MRNet(params.weights)


def load_model(checkpoint: Mapping[str, Any] | str | os.PathLike) -> MRNet:
    """The trained MRNet of a checkpoint (a dict from ``medflow.train.load_checkpoint`` or its path), on the
    CPU, in eval mode. Built without pretrained weights: the checkpoint holds every trained parameter."""
    where = "checkpoint" if isinstance(checkpoint, Mapping) else checkpoint
    ckpt = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint)
    model = MRNet("none")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, RuntimeError) as e:
        raise InputError(where, f"not an MRNet checkpoint ({e.__class__.__name__}: {str(e).splitlines()[0]})") from None
    return model.eval()


def checkpoint_params(checkpoint: Mapping[str, Any]) -> ModelConfig:
    """The model settings a checkpoint was trained with (its ``meta``): new exams are resized to its
    ``image_size``."""
    meta = checkpoint.get("meta", {})
    return ModelConfig(weights=str(meta["weights"]), image_size=int(meta["image_size"]))
