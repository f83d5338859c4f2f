"""The 3D U-Net: shapes, sigmoid output, both up-sampling modes, rebuilding from a checkpoint's config,
building from hyperparameters and loading a trained one."""

import pytest
import torch

from medflow.errors import InputError
from medflow.segmentation.model import UNet3D, build, load_model, make_model
from medflow.segmentation.train import UNetParams


@pytest.mark.parametrize("upsampling", ["transpose", "upsample"])
@pytest.mark.parametrize("depth", [1, 3])
def test_output_shape_and_range(depth, upsampling):
    torch.manual_seed(0)
    model = UNet3D(depth=depth, base_filters=2, upsampling=upsampling).eval()
    x = torch.randn(2, 4, 8, 12, 16)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 3, 8, 12, 16)
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.allclose(y, torch.sigmoid(model.logits(x)))


def test_filters_follow_the_tutorial_pattern():
    model = UNet3D(depth=4, base_filters=32)
    convs = [m.out_channels for m in model.encoders.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs == [32, 64, 64, 128, 128, 256, 256, 512]
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in UNet3D(depth=2, batch_norm=False).modules())


def test_indivisible_input_is_a_clear_error():
    model = UNet3D(depth=3, base_filters=2)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*\\(depth-1\\) = 4"):
        model(torch.zeros(1, 4, 6, 8, 8))


def test_build_from_config_restores_the_model():
    torch.manual_seed(0)
    model = UNet3D(depth=2, base_filters=3, upsampling="upsample", batch_norm=False).eval()
    clone = build(model.config).eval()
    clone.load_state_dict(model.state_dict())
    x = torch.randn(1, 4, 4, 4, 4)
    with torch.no_grad():
        assert torch.equal(model(x), clone(x))


def test_make_model_takes_the_modalities_and_labels_and_keeps_values_channels_last():
    params = UNetParams(depth=2, base_filters=3, batch_norm=False, upsampling="upsample")
    torch.manual_seed(0)
    model = make_model(params)
    torch.manual_seed(0)
    plain = make_model(params, channels_last=False)
    assert model.config == {
        "in_channels": 4,
        "n_labels": 3,
        "depth": 2,
        "base_filters": 3,
        "batch_norm": False,
        "upsampling": "upsample",
    }
    assert model.encoders[0][0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not plain.encoders[0][0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = torch.randn(1, 4, 4, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), plain.eval()(x), rtol=1e-5, atol=1e-6)


def test_load_model_from_a_checkpoint_path_or_dict(tmp_path):
    torch.manual_seed(0)
    model = make_model(UNetParams(depth=2, base_filters=3)).eval()
    ckpt = {"state_dict": model.state_dict(), "epoch": 1, "meta": {"model": model.config}}
    torch.save(ckpt, tmp_path / "m.pt")
    x = torch.randn(2, 4, 4, 4, 4)
    with torch.no_grad():
        expected = model(x)
        for source in (tmp_path / "m.pt", ckpt):
            loaded = load_model(source)
            assert not loaded.training
            assert loaded.encoders[0][0].weight.is_contiguous(memory_format=torch.channels_last_3d)
            assert torch.equal(loaded(x), expected)


def test_load_model_refuses_a_checkpoint_that_is_not_a_unet(tmp_path):
    torch.save({"state_dict": {}, "meta": {}}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="other.pt: not a U-Net checkpoint"):
        load_model(tmp_path / "other.pt")
    model = UNet3D(depth=2, base_filters=3)
    wrong = {"state_dict": model.state_dict(), "meta": {"model": {**model.config, "base_filters": 4}}}
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(InputError, match="wrong.pt: weights do not fit meta.model"):
        load_model(tmp_path / "wrong.pt")
