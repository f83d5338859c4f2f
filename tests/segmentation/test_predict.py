"""Sliding-window inference over whole volumes through medflow.train.predict, the whole-case
prediction evaluation uses, and predictions written back in the raw geometry."""

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from medflow.preprocess.patches import PatchParams, sample_case, standardise
from medflow.segmentation import predict, regions
from tests.segmentation.fakes import KEPT, ORIGINAL_ZYX, affine_for, make_case, write_stack

CPU = torch.device("cpu")


@pytest.mark.parametrize("size,window,overlap", [(20, 8, 0.5), (16, 8, 0.0), (17, 8, 0.25), (5, 8, 0.5), (8, 8, 0.5)])
def test_windows_cover_the_volume_with_the_overlap(size, window, overlap):
    starts = predict.window_starts(size, window, overlap)
    covered = np.zeros(max(size, window), bool)
    for s in starts:
        covered[s : s + window] = True
    assert covered[:size].all() and starts[0] == 0
    assert starts[-1] + window == max(size, window)
    steps = np.diff(starts)
    assert (steps <= window * (1 - overlap) + 1e-9).all() and (steps > 0).all()


@given(st.integers(1, 60), st.integers(1, 20), st.floats(0.0, 0.95) | st.sampled_from([0.0, 0.25, 0.5, 0.75]))
def test_windows_cover_every_voxel_for_any_size_window_and_overlap(size, window, overlap):
    """Windows start at 0, stay inside the (padded) axis, end at its border, cover every voxel and
    overlap their neighbours by at least ``overlap`` of the window (at most window - 1 voxels can)."""
    padded = max(size, window)
    starts = predict.window_starts(size, window, overlap)
    assert starts == sorted(set(starts)), "distinct, in order"
    assert starts[0] == 0 and starts[-1] + window == padded
    assert all(0 <= s and s + window <= padded for s in starts)
    covered = np.zeros(padded, bool)
    for s in starts:
        covered[s : s + window] = True
    assert covered.all()
    shared = window - np.diff(starts)  # voxels two neighbours have in common
    assert (shared >= min(overlap * window, window - 1) - 1e-9).all(), (starts, shared)


@pytest.mark.parametrize("overlap", [-0.1, 1.0])
def test_overlap_outside_zero_one_is_refused(overlap):
    with pytest.raises(ValueError, match="overlap"):
        predict.window_starts(10, 4, overlap)


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
    probs = predict.sliding_window(model, image, (8, 16, 16), overlap=0.5, batch_size=3, blend=blend, device=CPU)
    with torch.no_grad():
        direct = model(torch.from_numpy(image)[None])[0].numpy()
    assert probs.shape == (3, *shape)
    np.testing.assert_allclose(probs, direct, atol=1e-5)


@given(
    st.tuples(*[st.integers(1, 9)] * 3),
    st.tuples(*[st.integers(1, 6)] * 3),
    st.sampled_from([0.0, 0.3, 0.5, 0.8]),
    st.integers(1, 4),
    st.sampled_from(predict.BLENDS),
    st.integers(0, 2**16),
)
def test_sliding_window_of_a_voxelwise_model_is_its_voxelwise_output(shape, window, overlap, batch_size, blend, seed):
    """Any volume (also thinner than the window), window, overlap and batch: a voxel-wise model's
    blended windows give back exactly its output on the whole volume, shape (L, Z, Y, X)."""
    model = Pointwise().eval()
    image = np.random.default_rng(seed).standard_normal((4, *shape)).astype(np.float32)
    probs = predict.sliding_window(
        model,
        image,
        window,
        overlap=overlap,
        batch_size=batch_size,
        blend=blend,
        device=torch.device("cpu"),
        bf16=False,
    )
    with torch.no_grad():
        direct = model(torch.from_numpy(image)[None])[0].numpy()
    assert probs.shape == (3, *shape) and probs.dtype == np.float32
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

    full = predict.uncrop(regions.to_brats(stacked), KEPT, ORIGINAL_ZYX)
    predict.write_nifti(full, affine, tmp_path / "pred.nii.gz")
    pred = nib.load(tmp_path / "pred.nii.gz")
    assert pred.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(pred.dataobj), raw_xyz)
    np.testing.assert_allclose(pred.affine, affine)
    assert pred.header.get_zooms() == pytest.approx((1.0, 1.0, 2.0))


def test_transform_is_applied_to_every_window():
    model = Pointwise().eval()
    image = np.random.default_rng(1).standard_normal((4, 10, 20, 20)).astype(np.float32)
    probs = predict.sliding_window(
        model, image, (8, 16, 16), overlap=0.25, transform=lambda w: 2 * w + 1, device=torch.device("cpu")
    )
    with torch.no_grad():
        direct = model(torch.from_numpy(2 * image + 1)[None])[0].numpy()
    np.testing.assert_allclose(probs, direct, atol=1e-5)


def test_every_batch_of_windows_goes_through_the_shared_predict(monkeypatch):
    """One medflow.train.predict call per batch of windows, the model in eval and inference mode; the
    result is unchanged by the spy."""
    model = Pointwise().train()
    image = np.random.default_rng(2).standard_normal((4, 10, 20, 20)).astype(np.float32)
    expected = predict.sliding_window(Pointwise().eval(), image, (8, 16, 16), overlap=0.5, batch_size=3, device=CPU)
    calls, modes = [], []
    real = predict.predict_batches
    monkeypatch.setattr(predict, "predict_batches", lambda *a, **kw: calls.append(a[2]) or real(*a, **kw))
    forward = model.forward
    model.forward = lambda x: modes.append((torch.is_inference_mode_enabled(), model.training)) or forward(x)
    probs = predict.sliding_window(model, image, (8, 16, 16), overlap=0.5, batch_size=3, device=CPU)
    n_windows = len(predict.window_starts(10, 8, 0.5)) * len(predict.window_starts(20, 16, 0.5)) ** 2  # 3 * 2 * 2
    assert calls == [CPU] * -(-n_windows // 3) and modes == [(True, False)] * len(calls)
    assert np.array_equal(probs, expected)


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
