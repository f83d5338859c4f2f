"""Class-activation maps of MRNet: per plane, the slices that drive the max over slices, and where in them.

An exam's logit is linear in the maximum over its slices of 256 pooled AlexNet features, so each feature of
the exam comes from one slice: the slice that wins the most features drives the prediction most (the MRNet
tutorial's CAM viewer shows the same). Per plane this module counts the features each slice wins, takes the
top slice(s), and draws Grad-CAM (MONAI's, through ``medflow.evaluation.cam``) at AlexNet's last conv layer
for the exam's logit: computed on the whole exam, whose gradient reaches a slice only through the features
it wins, so a map shows where in its slice the evidence for the finding lies. One PNG per exam and task holds
the three planes. Evaluation (valid exams) and prediction (new exams) both call ``save_exam_cams``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medflow.mrnet.data import ExamDataset, load_series
from medflow.mrnet.model import FEATURES, MRNet

# AlexNet's last conv layer, inside ``_ExamLogit`` (whose ReLUs are not in place: Grad-CAM's hooks refuse
# a layer output that the next ReLU overwrites).
CAM_LAYER = "mrnet.features.10"


class _ExamLogit(nn.Module):
    """One exam's slices (S, 1, H, W) grey levels -> (1, 2) scores ``[-logit, logit]``: column 1 the finding,
    column 0 its absence, the shape Grad-CAM expects. A copy of the model with ReLUs out of place (the same
    values)."""

    def __init__(self, model: MRNet):
        super().__init__()
        self.mrnet = copy.deepcopy(model).eval()
        for m in self.mrnet.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.mrnet(x[:, 0], [x.shape[0]]).view(1, 1)
        return torch.cat([-z, z], dim=1)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def winning_counts(model: MRNet, slices: torch.Tensor) -> np.ndarray:
    """(S, H, W) uint8 slices of one exam -> (S,) int: how many of the 256 features each slice wins in the max
    over slices (the first slice wins a tie, as ``argmax`` does). A feature that is 0 in every slice (its
    channel silent after the ReLU) is nobody's: it gives the exam nothing."""
    model.eval()
    with torch.no_grad():
        feats = model.slice_features(slices.to(_device(model)))
    live = feats.amax(0) > 0
    return torch.bincount(feats.argmax(0)[live], minlength=slices.shape[0]).cpu().numpy()


def slice_maps(model: MRNet, slices: torch.Tensor, positive: bool = True) -> np.ndarray:
    """Grad-CAM at ``CAM_LAYER`` for every slice of one exam, of the evidence for the finding (``positive``) or
    for its absence: (S, H, W) uint8 -> (S, H, W) in [0, 1], each slice's map scaled on its own; a slice that
    wins no feature, or holds no such evidence, is 0."""
    from medflow.evaluation.cam import grad_cam

    wrapper = _ExamLogit(model)
    x = slices.to(_device(model)).unsqueeze(1).float()
    return grad_cam(wrapper, x, CAM_LAYER, class_idx=int(positive))


@dataclass(frozen=True)
class PlaneCam:
    """One drawn slice: ``plane``, its index ``slice`` of ``n_slices``, ``wins`` (features of 256 it gives the
    exam), ``prob`` (the plane model's P(finding) for the exam), ``positive`` (whether the map shows evidence
    for the finding, the model's call at 0.5, or against it), ``image`` (H0, W0) the slice as stored and
    ``cam`` (H0, W0) in [0, 1], the map upsampled to it."""

    plane: str
    slice: int
    n_slices: int
    wins: int
    prob: float
    positive: bool
    image: np.ndarray
    cam: np.ndarray

    @property
    def title(self) -> str:
        side = "for" if self.positive else "against"
        return (
            f"{self.plane} {self.slice + 1}/{self.n_slices} ({self.wins}/{FEATURES} features)\n"
            f"P {self.prob:.2f}, map: evidence {side}"
        )


def plane_cams(model: MRNet, path: str | os.PathLike, plane: str, size: int, top: int = 1) -> list[PlaneCam]:
    """The ``top`` slices (most features won first) of one series file, the model's input read and resized as
    in training and prediction (``ExamDataset``: ``size`` pixels), with their maps at the file's resolution.
    The maps explain the plane model's own call: evidence for the finding where its P >= 0.5, against it
    otherwise (a map of evidence for a finding the model does not see would mostly be blank)."""
    slices, _ = ExamDataset("", plane, ["exam"], [""], [0], size, paths=[path])[0]
    counts = winning_counts(model, slices)
    with torch.no_grad():
        prob = float(torch.sigmoid(model(slices.to(_device(model)), [len(slices)])).item())
    maps = torch.from_numpy(slice_maps(model, slices, positive=prob >= 0.5))
    stored = load_series(Path(path))
    order = np.argsort(-counts, kind="stable")[: max(int(top), 1)]
    out = []
    for k in order.tolist():
        cam = F.interpolate(maps[k][None, None], size=stored.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        out.append(
            PlaneCam(plane, k, len(counts), int(counts[k]), prob, prob >= 0.5, stored[k], cam.clamp(0, 1).numpy())
        )
    return out


def save_exam_cams(
    models: Mapping[str, MRNet],
    sizes: Mapping[str, int],
    paths: Mapping[str, str | os.PathLike],
    out: str | os.PathLike,
    *,
    title: str,
    top: int = 1,
) -> list[PlaneCam]:
    """One PNG at ``out`` for one exam and task: per plane (``models``: plane -> that task's model, ``sizes``:
    its input size, ``paths``: the exam's series file) the ``top`` slices with their maps, side by side under
    ``title``. Returns the panels drawn."""
    from medflow.evaluation.cam import save_overlay

    panels = [c for plane, model in models.items() for c in plane_cams(model, paths[plane], plane, sizes[plane], top)]
    save_overlay(
        [c.image for c in panels], [c.cam for c in panels], out, titles=[c.title for c in panels], suptitle=title
    )
    return panels
