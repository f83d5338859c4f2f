"""Grad-CAM maps (MONAI's GradCAM) of a classifier: they point at the evidence, for frozen backbones too."""

import numpy as np
import torch
from PIL import Image

from medflow.evaluation.cam import grad_cam, save_overlay


class Spot(torch.nn.Module):
    """Logit = mean of a conv response that fires on bright pixels: the evidence is where the image is bright."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU())
        with torch.no_grad():
            self.features[0].weight.zero_()
            self.features[0].weight[:, 0, 1, 1] = 1.0
            self.features[0].bias.fill_(-0.5)
        self.head = torch.nn.Linear(2, 1)
        with torch.no_grad():
            self.head.weight.fill_(1.0)

    def forward(self, x, scale=1.0):
        return self.head(self.features(x).mean((2, 3))) * scale


def _image():
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 2:6, 9:13] = 1.0  # the bright spot
    return x


def test_map_is_high_on_the_evidence_and_low_elsewhere():
    cam = grad_cam(Spot(), _image(), "features.1", class_idx=0)
    assert cam.shape == (1, 16, 16) and cam.dtype == np.float32
    assert cam.max() == 1.0 and cam[0, 3, 10] > 0.9 and cam[0, 12, 3] < 0.1


def test_frozen_backbone_and_forward_kwargs():
    model = Spot()
    for p in model.parameters():
        p.requires_grad_(False)  # OCT: frozen VGG16 features
    cam = grad_cam(model, _image(), "features.1", class_idx=0, scale=2.0)
    assert cam.std() > 0.1
    assert model.training  # mode restored


def test_overlay_png_is_written(tmp_path):
    image = _image()[0, 0].numpy()
    cam = grad_cam(Spot(), _image(), "features.1")[0]
    save_overlay([image, image], [cam, cam], tmp_path / "cam.png", titles=["a", "b"], suptitle="P 0.9")
    pixels = np.asarray(Image.open(tmp_path / "cam.png"))
    assert pixels.std() > 0
