"""ImageNet weights for torchvision models, from the local cache only.

Jobs never download: on a cluster node or an offline workstation a download would hang or fail with
a network error deep inside torchvision. A user who wants ``weights: imagenet`` puts the file in
torch's cache once (``torch.hub.get_dir()/checkpoints``, or ``$TORCH_HOME``), on any machine with
internet access, e.g. ``python -c "import torchvision; torchvision.models.vgg16(weights='DEFAULT')"``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from medflow.errors import InputError


def cached_weights_path(weights) -> Path:
    """Where torchvision keeps the file of a ``torchvision.models.*_Weights`` entry."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def imagenet_state_dict(weights) -> dict[str, torch.Tensor]:
    """The state dict of ``weights`` (e.g. ``VGG16_Weights.IMAGENET1K_V1``) read from the cache.

    Raises :class:`InputError` naming the expected file when it is not cached.
    """
    path = cached_weights_path(weights)
    if not path.is_file():
        raise InputError(
            path,
            f"ImageNet weights not cached; download {weights.url} to this path on a machine with internet "
            "access (or set the model's weights to none)",
        )
    return torch.load(path, map_location="cpu", weights_only=True)
