"""The tutorial's 3D U-Net (Cicek et al. 2016, as in the Keras ``unet3d`` the tutorial builds on).

Encoder level ``l`` (0-based) has two 3x3x3 convolutions with ``base * 2**l`` and ``base * 2**(l+1)``
filters, each followed by batch normalisation (optional) and ReLU, then 2x max pooling (not after the
deepest level). Each decoder level up-samples by 2 (transposed convolution or trilinear
up-sampling), concatenates the encoder features of the same level and applies two convolutions
with ``base * 2**(l+1)`` filters. A 1x1x1 convolution gives one channel per tumour label and a
sigmoid turns it into independent per-label probabilities.

Tensors are channels first: input (B, C_in, Z, Y, X) -> output (B, n_labels, Z, Y, X); every spatial
size must be divisible by ``2 ** (depth - 1)``. ``make_model`` builds the pipeline's network from its
hyperparameters, ``load_model`` a trained one from a checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medflow.errors import InputError
from medflow.segmentation.data import N_LABELS, N_MODALITIES
from medflow.train import load_checkpoint
from medflow.train.device import fp32_head

UPSAMPLING = ("transpose", "upsample")


def _conv_block(c_in: int, c_out: int, batch_norm: bool) -> list[nn.Module]:
    # No conv bias in front of batch norm: the norm's shift makes it redundant.
    layers: list[nn.Module] = [nn.Conv3d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm3d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


class UNet3D(nn.Module):
    def __init__(
        self,
        in_channels: int = 4,
        n_labels: int = 3,
        depth: int = 4,
        base_filters: int = 32,
        batch_norm: bool = True,
        upsampling: str = "transpose",
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if upsampling not in UPSAMPLING:
            raise ValueError(f"upsampling must be one of {UPSAMPLING}, got {upsampling!r}")
        self.config = {
            "in_channels": in_channels,
            "n_labels": n_labels,
            "depth": depth,
            "base_filters": base_filters,
            "batch_norm": batch_norm,
            "upsampling": upsampling,
        }
        self.depth = depth
        self.encoders = nn.ModuleList()
        c = in_channels
        for level in range(depth):
            mid, out = base_filters * 2**level, base_filters * 2 ** (level + 1)
            self.encoders.append(nn.Sequential(*_conv_block(c, mid, batch_norm), *_conv_block(mid, out, batch_norm)))
            c = out
        self.pool = nn.MaxPool3d(2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth - 1)):
            skip = base_filters * 2 ** (level + 1)
            if upsampling == "transpose":
                self.ups.append(nn.ConvTranspose3d(c, c, kernel_size=2, stride=2))
            else:
                self.ups.append(nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False))
            self.decoders.append(
                nn.Sequential(*_conv_block(c + skip, skip, batch_norm), *_conv_block(skip, skip, batch_norm))
            )
            c = skip
        # float32 logits under bf16 autocast: the 0.5 threshold of the sigmoid is not moved by bf16 rounding.
        self.head = fp32_head(nn.Conv3d(c, n_labels, kernel_size=1))

    @property
    def divisor(self) -> int:
        """Every spatial input size must be a multiple of this."""
        return 2 ** (self.depth - 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, Z, Y, X) -> pre-sigmoid scores (B, n_labels, Z, Y, X)."""
        bad = [n for n in x.shape[2:] if n % self.divisor]
        if bad:
            raise ValueError(f"spatial size {tuple(x.shape[2:])} is not divisible by 2**(depth-1) = {self.divisor}")
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x)
            if level < self.depth - 1:
                skips.append(x)
                x = self.pool(x)
        for up, decoder in zip(self.ups, self.decoders):
            x = decoder(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, Z, Y, X) -> per-label probabilities (B, n_labels, Z, Y, X)."""
        return torch.sigmoid(self.logits(x))


def build(config: Mapping[str, Any]) -> UNet3D:
    """A U-Net from the plain-data ``config`` stored in a checkpoint's meta (``UNet3D.config``)."""
    return UNet3D(**dict(config))


def make_model(params, channels_last: bool = True) -> UNet3D:
    """The U-Net of ``params`` (anything with ``depth``, ``base_filters``, ``batch_norm``, ``upsampling``,
    e.g. ``medflow.segmentation.train.UNetParams``): the 4 modalities in, the 3 stored labels out.

    Channels-last 3D weights select oneDNN's / cuDNN's faster convolution kernels (about 1.8x on the CPU
    for the demo model, benchmarks/bench_unet3d.py); the values, and so the checkpoint, are the same.
    """
    model = UNet3D(
        in_channels=N_MODALITIES,
        n_labels=N_LABELS,
        depth=params.depth,
        base_filters=params.base_filters,
        batch_norm=params.batch_norm,
        upsampling=params.upsampling,
    )
    return model.to(memory_format=torch.channels_last_3d) if channels_last else model


def load_model(
    checkpoint: str | os.PathLike | Mapping[str, Any], device: torch.device | None = None, channels_last: bool = True
) -> UNet3D:
    """The trained U-Net of a checkpoint (a path, or the dict ``medflow.train.load_checkpoint`` returns),
    in eval mode on ``device`` (the CPU by default), channels-last as in training.

    Rebuilt from ``meta["model"]`` (``UNet3D.config``); a checkpoint without it, or whose weights do not
    fit it, raises ``InputError`` naming the file.
    """
    where = "<checkpoint dict>" if isinstance(checkpoint, Mapping) else checkpoint
    ckpt = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint)
    config = ckpt.get("meta", {}).get("model")
    if not isinstance(config, Mapping) or "state_dict" not in ckpt:
        raise InputError(where, "not a U-Net checkpoint of brats_segmentation_train (no meta.model or state_dict)")
    model = build(config)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise InputError(where, f"weights do not fit meta.model {dict(config)} ({str(exc).splitlines()[0]})") from None
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    return model.to(device or torch.device("cpu")).eval()
