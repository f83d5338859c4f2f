"""Exam augmentation as in the MRNet tutorial, with torchvision transforms v2 (not torchsample).

One random rotation (within +-``rotation_deg``), shift (within +-``shift_px`` pixels of the original
256-pixel slice) and horizontal flip (probability ``hflip_p``) is drawn per exam and applied to every
slice alike, so the slices of an exam stay aligned: the exam ``(S, H, W)`` is handed to torchvision as
one image with S channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from medflow.ingest.mrnet import IN_PLANE


@dataclass(frozen=True)
class AugmentConfig:
    """``mrnet.train.augment``: rotation within +-``rotation_deg`` degrees, shift within +-``shift_px``
    pixels of the 256-pixel slice, horizontal flip with probability ``hflip_p``."""

    rotation_deg: float
    shift_px: float
    hflip_p: float


class ExamAugmentation:
    def __init__(
        self, rotation_deg: float = 25.0, shift_px: float = 25.0, hflip_p: float = 0.5, in_plane: int = IN_PLANE
    ):
        # A shift in pixels of the original slice is the same fraction of the image after any resize.
        shift = float(shift_px) / in_plane
        self.transform = v2.Compose(
            [
                v2.RandomAffine(
                    degrees=float(rotation_deg),
                    translate=(shift, shift),
                    interpolation=v2.InterpolationMode.BILINEAR,
                    fill=0,
                ),
                v2.RandomHorizontalFlip(p=float(hflip_p)),
            ]
        )

    @classmethod
    def from_params(cls, params: AugmentConfig | None) -> ExamAugmentation | None:
        """The augmentation ``params`` describe; None (no augmentation) for None."""
        if params is None:
            return None
        return cls(params.rotation_deg, params.shift_px, params.hflip_p)

    def __call__(self, exam: torch.Tensor) -> torch.Tensor:
        """(S, H, W) -> (S, H, W), same dtype; one draw of the random parameters for all S slices."""
        if exam.ndim != 3:
            raise ValueError(f"expected an exam (slices, H, W), got shape {tuple(exam.shape)}")
        return self.transform(tv_tensors.Image(exam)).as_subclass(torch.Tensor)
