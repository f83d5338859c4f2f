"""Sliding-window inference over whole volumes, and predictions written back in the raw geometry."""

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.segmentation.fakes import KEPT, ORIGINAL_ZYX, affine_for
from medflow.segmentation import inference, regions


@pytest.mark.parametrize("size,window,overlap", [(20, 8, 0.5), (16, 8, 0.0), (17, 8, 0.25), (5, 8, 0.5), (8, 8, 0.5)])
def test_windows_cover_the_volume_with_the_overlap(size, window, overlap):
    starts = inference.window_starts(size, window, overlap)
    covered = np.zeros(max(size, window), bool)
    for s in starts:
        covered[s : s + window] = True
    assert covered[:size].all() and starts[0] == 0
    assert starts[-1] + window == max(size, window)
    steps = np.diff(starts)
    assert (steps <= window * (1 - overlap) + 1e-9).all() and (steps > 0).all()


class Pointwise(torch.nn.Module):
    """A voxel-wise model: its full-volume output is known exactly, whatever the windows."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(4, 3, 1)

    def forward(self, x):
        return torch.sigmoid(self.conv(x))


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("shape", [(13, 21, 18), (6, 10, 40)])  # the second is thinner than the window in z and y
def test_sliding_window_equals_whole_volume_prediction(blend, shape):
    model = Pointwise().eval()
    image = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
    probs = inference.sliding_window(model, image, (8, 16, 16), overlap=0.5, batch_size=3, blend=blend, device=torch.device("cpu"))
    with torch.no_grad():
        direct = model(torch.from_numpy(image)[None])[0].numpy()
    assert probs.shape == (3, *shape)
    np.testing.assert_allclose(probs, direct, atol=1e-5)


def test_prediction_overlays_on_the_raw_nifti(tmp_path):
    """A raw segmentation read as the stacking stage does ((X, Y, Z) -> (Z, Y, X), keep slices), then
    written back, must equal the raw file voxel for voxel with the same affine."""
    rng = np.random.default_rng(0)
    raw_xyz = np.zeros(ORIGINAL_ZYX[::-1], np.uint8)
    raw_xyz[5:15, 3:9, KEPT[0] + 1 : KEPT[1] - 1] = rng.choice([0, 1, 2, 4], size=(10, 6, KEPT[1] - KEPT[0] - 2))
    affine = affine_for()
    nib.save(nib.Nifti1Image(raw_xyz, affine), tmp_path / "seg.nii.gz")

    loaded = np.asarray(nib.load(tmp_path / "seg.nii.gz").dataobj)
    stacked = regions.to_stored(loaded.transpose(2, 1, 0)[KEPT[0] : KEPT[1]])  # the stacking contract

    full = inference.uncrop(regions.to_brats(stacked), KEPT, ORIGINAL_ZYX)
    inference.write_nifti(full, affine, tmp_path / "pred.nii.gz")
    pred = nib.load(tmp_path / "pred.nii.gz")
    assert pred.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(pred.dataobj), raw_xyz)
    np.testing.assert_allclose(pred.affine, affine)
    assert pred.header.get_zooms() == pytest.approx((1.0, 1.0, 2.0))


def test_transform_is_applied_to_every_window():
    model = Pointwise().eval()
    image = np.random.default_rng(1).standard_normal((4, 10, 20, 20)).astype(np.float32)
    probs = inference.sliding_window(model, image, (8, 16, 16), overlap=0.25, transform=lambda w: 2 * w + 1,
                                     device=torch.device("cpu"))
    with torch.no_grad():
        direct = model(torch.from_numpy(2 * image + 1)[None])[0].numpy()
    np.testing.assert_allclose(probs, direct, atol=1e-5)
