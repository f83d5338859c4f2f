"""Sliding-window inference: the window grid, Gaussian blending, every batch through the shared predict,
background windows skipped without changing the brain's labels, and MONAI's implementation as reference."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medflow.preprocess.patches import standardise
from medflow.segmentation import predict, regions, sliding_window
from medflow.segmentation.model import make_model
from medflow.segmentation.train import UNetParams

CPU = torch.device("cpu")


@pytest.mark.parametrize("size,window,overlap", [(20, 8, 0.5), (16, 8, 0.0), (17, 8, 0.25), (5, 8, 0.5), (8, 8, 0.5)])
def test_windows_cover_the_volume_with_the_overlap(size, window, overlap):
    starts = sliding_window.window_starts(size, window, overlap)
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
    starts = sliding_window.window_starts(size, window, overlap)
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
        sliding_window.window_starts(10, 4, overlap)


def test_the_old_module_re_exports_the_sliding_window():
    for name in ("sliding_window", "window_starts", "importance_map", "BLENDS"):
        assert getattr(predict, name) is getattr(sliding_window, name)


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
    probs = sliding_window.sliding_window(model, image, (8, 16, 16), overlap=0.5, batch_size=3, blend=blend, device=CPU)
    with torch.no_grad():
        direct = model(torch.from_numpy(image)[None])[0].numpy()
    assert probs.shape == (3, *shape)
    np.testing.assert_allclose(probs, direct, atol=1e-5)


@settings(deadline=None)
@given(
    st.tuples(*[st.integers(1, 9)] * 3),
    st.tuples(*[st.integers(1, 6)] * 3),
    st.sampled_from([0.0, 0.3, 0.5, 0.8]),
    st.integers(1, 4),
    st.sampled_from(sliding_window.BLENDS),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_sliding_window_of_a_voxelwise_model_is_its_voxelwise_output(
    shape, window, overlap, batch_size, blend, skip, seed
):
    """Any volume (also thinner than the window), window, overlap and batch: a voxel-wise model's
    blended windows give back exactly its output on the whole volume, shape (L, Z, Y, X); with skipping,
    on every voxel with signal, and 0 where every channel is 0 (zeroed voxels are background)."""
    model = Pointwise().eval()
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((4, *shape)).astype(np.float32)
    image[:, rng.random(shape) < 0.3] = 0
    probs = sliding_window.sliding_window(
        model,
        image,
        window,
        overlap=overlap,
        batch_size=batch_size,
        blend=blend,
        device=CPU,
        bf16=False,
        skip_background=skip,
    )
    with torch.no_grad():
        direct = model(torch.from_numpy(image)[None])[0].numpy()
    if skip:
        direct[:, ~np.any(image != 0, axis=0)] = 0
    assert probs.shape == (3, *shape) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, direct, atol=1e-5)


def test_transform_is_applied_to_every_window():
    model = Pointwise().eval()
    image = np.random.default_rng(1).standard_normal((4, 10, 20, 20)).astype(np.float32)
    probs = sliding_window.sliding_window(
        model, image, (8, 16, 16), overlap=0.25, transform=lambda w: 2 * w + 1, device=CPU
    )
    with torch.no_grad():
        direct = model(torch.from_numpy(2 * image + 1)[None])[0].numpy()
    np.testing.assert_allclose(probs, direct, atol=1e-5)


class Counting(torch.nn.Module):
    """Runs ``net`` (default: a Pointwise model), recording every batch and the modes it ran in."""

    def __init__(self, net=None):
        super().__init__()
        self.net = net or Pointwise()
        self.inputs, self.modes = [], []

    def forward(self, x):
        self.inputs.append(x.clone())
        self.modes.append((torch.is_inference_mode_enabled(), self.training))
        return self.net(x)


def test_every_batch_of_windows_goes_through_one_shared_predict_call(monkeypatch):
    """One medflow.train.predict call per volume feeds every batch of windows (eval and inference mode);
    the result is that of a plain loop over the windows, unchanged by the spy."""
    image = np.random.default_rng(2).standard_normal((4, 10, 20, 20)).astype(np.float32)
    expected = sliding_window.sliding_window(Pointwise().eval(), image, (8, 16, 16), overlap=0.5, batch_size=3)
    calls = []
    real = sliding_window.predict_batches
    monkeypatch.setattr(sliding_window, "predict_batches", lambda *a, **kw: calls.append(a[2]) or real(*a, **kw))
    model = Counting().train()
    probs = sliding_window.sliding_window(model, image, (8, 16, 16), overlap=0.5, batch_size=3, device=CPU)
    n_windows = len(sliding_window.window_starts(10, 8, 0.5)) * len(sliding_window.window_starts(20, 16, 0.5)) ** 2
    assert calls == [CPU]
    assert n_windows == 8 and [len(x) for x in model.inputs] == [3, 3, 2]  # 2 * 2 * 2 windows, 3 per batch
    assert model.modes == [(True, False)] * 3
    assert np.array_equal(probs, expected)


def brain_case(shape=(24, 48, 40), seed=0):
    """(4, Z, Y, X) float32: noise inside an off-centre ellipsoid 'brain', exactly 0 outside it."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    brain = ((z - 10) / 8) ** 2 + ((y - 18) / 14) ** 2 + ((x - 16) / 12) ** 2 < 1
    rng = np.random.default_rng(seed)
    return np.where(brain, rng.standard_normal((4, *shape)) + 1, 0).astype(np.float32), brain


def unet():
    torch.manual_seed(0)
    return make_model(UNetParams(depth=2, base_filters=4)).eval()


@pytest.mark.parametrize("batch_size", [1, 4])
def test_skipping_background_windows_keeps_the_brain_and_labels_the_rest_background(batch_size):
    """A U-Net (receptive field across windows) over a brain in a sea of zeros, each window standardised
    as in evaluation: skipping runs only the windows holding brain, fed exactly as in the full pass; the
    brain's probabilities and labels are the full pass's, every other voxel is background."""
    image, brain = brain_case()
    window = (8, 16, 16)
    # fold_bn off: a folded copy would record the spies' inputs in the copy, not in the models given.
    kw = {"overlap": 0.5, "batch_size": batch_size, "device": CPU, "bf16": False, "transform": standardise}
    kw["fold_bn"] = False
    full_model, skip_model = Counting(unet()), Counting(unet())
    full = sliding_window.sliding_window(full_model, image, window, skip_background=False, **kw)
    skipped = sliding_window.sliding_window(skip_model, image, window, **kw)

    run = torch.cat(skip_model.inputs)
    everything = torch.cat(full_model.inputs)
    occupied = everything.flatten(1).ne(0).any(1)
    assert 0 < len(run) < len(everything) and len(run) == int(occupied.sum())
    assert torch.equal(run, everything[occupied]), "the windows that run are fed exactly as in the full pass"

    np.testing.assert_allclose(skipped[:, brain], full[:, brain], rtol=0, atol=1e-6)
    labels_full = regions.probabilities_to_labels(full, 0.5)
    labels_skip = regions.probabilities_to_labels(skipped, 0.5)
    assert np.array_equal(labels_skip[brain], labels_full[brain])
    assert not skipped[:, ~brain].any() and not labels_skip[~brain].any()
    assert labels_full[~brain].any(), "the full pass labels voxels outside the brain: skipping is seen"


def test_predict_case_skips_with_the_raw_images_brain_in_both_standardisations():
    """'volume' standardises the whole volume first (its background is no longer 0): the brain still
    comes from the stored image, so the labels match the unskipped pass inside it, background outside."""
    image, brain = brain_case(seed=1)
    model = unet()
    for mode in ("window", "volume"):
        labels = {
            skip: predict.predict_case(
                model,
                image,
                (8, 16, 16),
                predict.PredictParams(standardise=mode, batch_size=4, skip_background=skip),
                threshold=0.5,
                device=CPU,
            )
            for skip in (False, True)
        }
        assert np.array_equal(labels[True][brain], labels[False][brain]), mode
        assert not labels[True][~brain].any() and labels[False][~brain].any(), mode


def test_a_volume_without_brain_is_background_after_one_window():
    model = Counting().eval()
    probs = sliding_window.sliding_window(model, np.zeros((4, 20, 40, 40), np.float32), (8, 16, 16), batch_size=4)
    assert probs.shape == (3, 20, 40, 40) and not probs.any()
    assert len(model.inputs) == 1 and len(model.inputs[0]) == 1


def test_a_brain_mask_of_another_shape_is_refused():
    with pytest.raises(ValueError, match="brain mask"):
        sliding_window.sliding_window(
            Pointwise(), np.ones((4, 8, 16, 16), np.float32), (8, 16, 16), brain=np.ones((8, 16, 15), bool)
        )


def monai_probs(model, image, window, batch_size, **kw):
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        return sliding_window_inference(torch.from_numpy(image)[None], window, batch_size, model, **kw)[0].numpy()


def test_monai_sliding_window_inference_agrees_without_skipping():
    """MONAI 1.6 as the independent reference, on a volume where both grids are the same (each axis
    minus the window a multiple of the step: MONAI steps by int(window x (1 - overlap)) and moves the last
    window back to the border, medflow spreads its windows evenly). With medflow's importance map both
    give the same probabilities; with MONAI's own Gaussian (the same sigma, window / 8, but floored at
    1e-3 before any scaling to a peak of 1, so it differs only near window corners) the labels agree."""
    image, _ = brain_case(shape=(24, 48, 40))
    image = standardise(image)
    window = (8, 16, 16)
    model = unet()
    ours = sliding_window.sliding_window(
        model, image, window, overlap=0.5, batch_size=4, device=CPU, skip_background=False
    )
    weight = torch.from_numpy(sliding_window.importance_map(window))
    ref = monai_probs(model, image, window, 4, overlap=0.5, mode="gaussian", roi_weight_map=weight)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    own = monai_probs(model, image, window, 4, overlap=0.5, mode="gaussian")
    assert np.abs(own - ours).max() < 1e-2
    labels_ours, labels_own = (regions.probabilities_to_labels(p, 0.5) for p in (ours, own))
    assert (labels_ours == labels_own).mean() > 0.999


def test_batch_norm_folded_into_the_convolutions_gives_the_same_probabilities():
    """Inference runs a copy with each batch norm folded into its convolution: no batch norm left, the
    same probabilities (float rounding) and labels over a whole volume, the caller's model untouched."""
    model = unet().train()
    with torch.no_grad():  # running statistics far from the initial (0, 1)
        for _ in range(5):
            model(torch.randn(2, 4, 8, 16, 16) * 3 + 2)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = sliding_window.fold_batch_norm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    conv = folded.encoders[0][0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d), "the fast memory format is kept"

    image, _ = brain_case()
    kw = {"overlap": 0.5, "batch_size": 4, "device": CPU, "bf16": False, "skip_background": False}
    plain = sliding_window.sliding_window(model, image, (8, 16, 16), fold_bn=False, **kw)
    fast = sliding_window.sliding_window(model, image, (8, 16, 16), **kw)
    np.testing.assert_allclose(fast, plain, rtol=0, atol=1e-5)
    assert np.abs(fast - plain).max() > 0, "the folded copy ran (rounding differs)"
    assert np.array_equal(regions.probabilities_to_labels(fast, 0.5), regions.probabilities_to_labels(plain, 0.5))


def test_a_model_without_batch_norm_is_run_as_it_is():
    torch.manual_seed(0)
    model = make_model(UNetParams(depth=2, base_filters=4, batch_norm=False)).eval()
    assert sliding_window.fold_batch_norm(model) is model
