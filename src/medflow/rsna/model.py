"""The RSNA two-input network: a CNN branch on the image and a dense branch on the metadata features,
concatenated before a one-logit head (BCE). ``use_meta=False`` gives the image-only comparison model
with the same image branch and head. ``load_model`` rebuilds a trained one from its checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from medflow.errors import InputError
from medflow.train.device import fp32_head

BACKBONES = ("simple", "resnet18")
# Greyscale ImageNet statistics (mean of the RGB channel statistics): the input normalisation.
GREY_MEAN, GREY_STD = 0.449, 0.226


@dataclass
class ModelConfig:
    backbone: str = "simple"  # "simple" (a small CNN) or "resnet18" (torchvision, 1-channel first conv)
    weights: str = "none"  # "none" or "imagenet" (resnet18 only; must be in torch's cache)
    channels: Sequence[int] = field(default_factory=lambda: [16, 32, 64])  # simple: one conv block each
    meta_hidden: int = 16
    dropout: float = 0.2

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.weights not in ("none", "imagenet"):
            raise ValueError(f"weights must be 'none' or 'imagenet', got {self.weights!r}")
        if self.weights == "imagenet" and self.backbone != "resnet18":
            raise ValueError("ImageNet weights exist for backbone resnet18 only")
        self.channels = [int(c) for c in self.channels]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _simple_cnn(channels: Sequence[int]) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = []
    prev = 1
    for c in channels:
        layers += [
            nn.Conv2d(prev, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        prev = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), prev


def _resnet18(weights: str) -> tuple[nn.Module, int]:
    from torchvision.models import ResNet18_Weights, resnet18

    from medflow.train.pretrained import imagenet_state_dict

    net = resnet18(weights=None)
    if weights == "imagenet":  # from torch's cache only; a clear InputError when it is not there
        net.load_state_dict(imagenet_state_dict(ResNet18_Weights.IMAGENET1K_V1))
    rgb = net.conv1.weight.data
    # One input channel: a grey image is R = G = B, so summing the RGB filters keeps the response.
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.conv1.weight.data = rgb.sum(dim=1, keepdim=True)
    n = net.fc.in_features
    net.fc = nn.Identity()
    return net, n


class TwoInputNet(nn.Module):
    """image (B, 1, H, W) normalised, meta (B, F) in {0, 1} -> logits (B,)."""

    def __init__(self, n_meta: int, cfg: ModelConfig, use_meta: bool = True):
        super().__init__()
        self.use_meta = bool(use_meta)
        if cfg.backbone == "simple":
            self.image_branch, n_img = _simple_cnn(cfg.channels)
        else:
            self.image_branch, n_img = _resnet18(cfg.weights)
        self.meta_branch = (
            nn.Sequential(nn.Linear(n_meta, cfg.meta_hidden), nn.ReLU(inplace=True)) if use_meta else None
        )
        n_head = n_img + (cfg.meta_hidden if use_meta else 0)
        self.head = fp32_head(nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(n_head, 1)))  # float32 logits

    def forward(self, image: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        z = self.image_branch(image)
        if self.meta_branch is not None:
            if meta is None:
                raise ValueError("this model takes metadata features")
            z = torch.cat([z, self.meta_branch(meta)], dim=1)
        return self.head(z).squeeze(1)


def cam_layer(model: TwoInputNet) -> str:
    """Name (in ``model.named_modules()``) of the image branch's last convolution: where Grad-CAM looks."""
    convs = [f"image_branch.{n}" for n, m in model.image_branch.named_modules() if isinstance(m, nn.Conv2d)]
    return convs[-1]


def normalise(image_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, H, W) -> float (B, 1, H, W) with greyscale ImageNet statistics."""
    return ((image_uint8.float() / 255.0 - GREY_MEAN) / GREY_STD).unsqueeze(1)


def load_model(checkpoint: Mapping[str, Any] | str | os.PathLike, device: torch.device | str = "cpu") -> TwoInputNet:
    """A trained model in eval mode on ``device``, from a checkpoint of ``rsna.train`` (its dict or its path).

    The architecture comes from the checkpoint's ``meta`` (``model``, ``meta_features``, ``use_meta``); the
    backbone is built without pretrained weights, since the checkpoint's state dict replaces them all.
    """
    from medflow.train import load_checkpoint

    ckpt = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint, map_location=device)
    meta = ckpt.get("meta", {})
    missing = [k for k in ("model", "meta_features", "use_meta") if k not in meta]
    if missing:
        where = "checkpoint" if isinstance(checkpoint, Mapping) else checkpoint
        raise InputError(where, f"not an RSNA checkpoint: its meta lacks {', '.join(missing)}")
    model = TwoInputNet(
        len(meta["meta_features"]), ModelConfig(**{**meta["model"], "weights": "none"}), use_meta=meta["use_meta"]
    )
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()
