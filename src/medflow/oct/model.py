"""VGG16 transfer model for OCT: pretrained layers frozen, a new classifier ending in LogSoftmax.

The new head is ``[BatchNorm1d] -> Linear(n_in, hidden) -> ReLU -> Dropout -> Linear(hidden,
n_classes) -> LogSoftmax``; the model outputs log-probabilities (N, n_classes): train with NLL loss.
Where it goes (``head``):

- ``classifier``: the convolutional features are frozen and the whole VGG16 classifier (fc6, fc7,
  fc8) is replaced by the head on the 25,088 pooled features: 14.7 M frozen parameters, a checkpoint
  of about 85 MB for ``hidden`` 256.
- ``last_layer`` (the transfer-learning tutorial's): every VGG16 layer, fc6 and fc7 included, is
  frozen and only ``classifier[6]`` (fc8) is replaced by the head on fc7's 4,096 outputs: 134 M
  frozen parameters, a checkpoint of about 540 MB.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from torch import nn
from torchvision import models

from medflow.train import load_checkpoint
from medflow.train.device import fp32_head
from medflow.train.pretrained import imagenet_state_dict

HEADS = ("classifier", "last_layer")


class TransferVGG16(models.VGG):
    """torchvision's VGG16 (its layer names, so ImageNet weights load) whose frozen part stays in eval
    mode: it is a fixed feature extractor, and the dropout inside a frozen fc6/fc7 would only add
    noise to the features the new head learns from (with random weights it drowns them)."""

    def __init__(self, head: str, init_weights: bool = True):
        super().__init__(models.vgg.make_layers(models.vgg.cfgs["D"]), init_weights=init_weights)
        self.head = head

    def frozen_modules(self) -> list[nn.Module]:
        if self.head == "classifier":
            return [self.features, self.avgpool]
        return [self.features, self.avgpool, *list(self.classifier)[:6]]

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        return self


def build_vgg16(
    n_classes: int,
    *,
    weights: str = "none",
    head: str = "classifier",
    hidden: int = 256,
    dropout: float = 0.4,
    head_batchnorm: bool = True,
) -> TransferVGG16:
    """VGG16 (input (N, 3, H, W), ImageNet-normalised, H and W >= 32) -> log-probabilities (N, n_classes).

    ``weights``: ``imagenet`` (torchvision's IMAGENET1K_V1, from the local cache; an
    :class:`~medflow.errors.InputError` naming the file if it is not there) or ``none`` (random).
    ``head_batchnorm`` starts the head with ``BatchNorm1d``: it standardises the frozen features,
    whose scale differs between layers and between ImageNet and random weights.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, not {head!r}")
    if weights not in ("imagenet", "none"):
        raise ValueError(f"weights must be 'imagenet' or 'none', not {weights!r}")
    state = imagenet_state_dict(models.VGG16_Weights.IMAGENET1K_V1) if weights == "imagenet" else None
    model = TransferVGG16(head, init_weights=False)
    if state is not None:
        model.load_state_dict(state)
    else:  # torchvision's initialisation, only for the layers that are kept (fc6 alone has 103 M weights)
        _init_like_torchvision(model.frozen_modules())
    for m in model.frozen_modules():
        for p in m.parameters():
            p.requires_grad = False
    n_inputs = model.classifier[0].in_features if head == "classifier" else model.classifier[6].in_features
    layers = [nn.BatchNorm1d(n_inputs)] if head_batchnorm else []
    layers += [
        nn.Linear(n_inputs, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        fp32_head(nn.Linear(hidden, n_classes)),  # float32 logits and log-probabilities under bf16 autocast
        nn.LogSoftmax(dim=1),
    ]
    if head == "classifier":
        model.classifier = nn.Sequential(*layers)
    else:
        model.classifier[6] = nn.Sequential(*layers)
    return model


def load_model(checkpoint: Mapping | str | os.PathLike) -> TransferVGG16:
    """The trained VGG16 of a checkpoint (the dict ``medflow.train.fit`` writes, or its path), in eval
    mode on the CPU. The architecture comes from ``meta`` (``class_to_idx``, ``model``), the weights from
    ``state_dict``: the ImageNet file is not needed."""
    if not isinstance(checkpoint, Mapping):
        checkpoint = load_checkpoint(checkpoint)
    meta = checkpoint["meta"]
    model = build_vgg16(len(meta["class_to_idx"]), weights="none", **meta["model"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def _init_like_torchvision(modules) -> None:
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total and trainable (``requires_grad``) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": int(total), "trainable": int(trainable), "frozen": int(total - trainable)}
