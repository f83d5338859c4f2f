"""The 3D U-Net: shapes, sigmoid output, both up-sampling modes, rebuilding from a checkpoint's config."""

import pytest
import torch

from medflow.segmentation.model import UNet3D, build


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
