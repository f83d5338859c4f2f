"""The whole-case prediction evaluation uses (predict_case; the sliding window itself:
test_sliding_window.py) and predictions written back in the raw geometry."""

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from medflow.preprocess.patches import PatchParams, sample_case, standardise
from medflow.segmentation import predict, regions
from tests.segmentation.fakes import KEPT, ORIGINAL_ZYX, affine_for, make_case, write_stack

CPU = torch.device("cpu")


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

    full = predict.uncrop(regions.to_brats(stacked), KEPT, ORIGINAL_ZYX)
    predict.write_nifti(full, affine, tmp_path / "pred.nii.gz")
    pred = nib.load(tmp_path / "pred.nii.gz")
    assert pred.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(pred.dataobj), raw_xyz)
    np.testing.assert_allclose(pred.affine, affine)
    assert pred.header.get_zooms() == pytest.approx((1.0, 1.0, 2.0))


class Recorder(torch.nn.Module):
    """Records what the network is fed; outputs a constant probability ``p`` for stored label 2."""

    def __init__(self, p=0.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.p = p
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.clone())
        out = torch.zeros(len(x), 3, *x.shape[2:]) + self.w
        out[:, 1] += self.p
        return out


def test_windows_get_the_standardisation_the_training_patches_got(tmp_path):
    """A window at a patch's place is fed to the network exactly as the patch sampler wrote the patch."""
    image, label = make_case(0)
    write_stack(tmp_path / "stack.h5", "BraTS20_Training_001", image, label)
    stacked = image[:, KEPT[0] : KEPT[1]]
    size = list(stacked.shape[1:])  # one patch = the whole stacked volume = one window
    params = PatchParams(patch_size=size, n_patches=1)
    assert sample_case(tmp_path / "stack.h5", tmp_path / "patches.h5", params, seed=0) == 1
    with h5py.File(tmp_path / "patches.h5") as f:
        patch = f["image"][0]
    model = Recorder()
    predict.predict_case(
        model, stacked, size, predict.PredictParams(standardise="window"), threshold=0.5, device=CPU, bf16=False
    )  # the default standardise is the patch sampler's
    assert len(model.inputs) == 1
    np.testing.assert_array_equal(model.inputs[0][0].numpy(), patch)
    # 'volume' standardises the whole volume's slices once, then cuts windows: here the same window.
    model.inputs.clear()
    predict.predict_case(
        model,
        stacked,
        size,
        predict.PredictParams(standardise="volume"),
        threshold=0.5,
        device=CPU,
        bf16=False,
        standardise=standardise,
    )
    np.testing.assert_array_equal(model.inputs[0][0].numpy(), patch)
    with pytest.raises(ValueError, match="standardise must be one of"):
        predict.predict_case(model, stacked, size, predict.PredictParams(standardise="slice"), threshold=0.5)


@pytest.mark.parametrize("threshold,label", [(0.5, 2), (0.59, 2), (0.61, 0)])
def test_predict_case_labels_at_the_given_threshold(threshold, label):
    image = np.random.default_rng(3).standard_normal((4, 8, 16, 16)).astype(np.float32)
    pred = predict.predict_case(
        Recorder(p=0.6), image, (8, 16, 16), predict.PredictParams(), threshold=threshold, device=CPU
    )
    assert pred.dtype == np.uint8 and pred.shape == (8, 16, 16)
    assert (pred == label).all()
