"""4-channel ResNet18: conv1 surgery, initialisation from the RGB filters, ImageNet weights from the cache."""

import pytest
import torch
from torch import nn
from torchvision import models

from medflow.errors import InputError
from medflow.grade.model import adapt_conv1, build_resnet18, load_model


@pytest.fixture
def rgb_conv():
    torch.manual_seed(0)
    return nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)


def test_mean_init_reproduces_the_rgb_response_to_a_grey_image(rgb_conv):
    conv4 = adapt_conv1(rgb_conv, 4, "mean")
    assert conv4.weight.shape == (64, 4, 7, 7) and conv4.stride == (2, 2) and conv4.padding == (3, 3)
    grey = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(conv4(grey.repeat(1, 4, 1, 1)), rgb_conv(grey.repeat(1, 3, 1, 1)), atol=1e-5)
    expected = rgb_conv.weight.mean(1) * 3 / 4
    for c in range(4):
        assert torch.allclose(conv4.weight[:, c], expected)


def test_repeat_init_tiles_rgb_and_scales(rgb_conv):
    conv4 = adapt_conv1(rgb_conv, 4, "repeat")
    w = rgb_conv.weight
    assert torch.allclose(conv4.weight[:, :3], w * 3 / 4)
    assert torch.allclose(conv4.weight[:, 3], w[:, 0] * 3 / 4)
    with torch.no_grad():  # same total weight per filter as RGB + R, so equal channels give a comparable magnitude
        assert torch.allclose(conv4.weight.sum(1), (w.sum(1) + w[:, 0]) * 3 / 4)


def test_bias_is_copied_and_unknown_init_rejected():
    conv = nn.Conv2d(3, 8, 3, bias=True)
    assert torch.equal(adapt_conv1(conv, 4).bias, conv.bias)
    with pytest.raises(ValueError):
        adapt_conv1(conv, 4, "zeros")


def test_random_init_model_takes_four_channels_and_outputs_two_logits():
    torch.manual_seed(0)
    m = build_resnet18(4, 2, weights="none")
    assert m.conv1.in_channels == 4 and m.fc.out_features == 2
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(3, 4, 64, 64)).shape == (3, 2)


@pytest.fixture
def fake_imagenet_cache(tmp_path, monkeypatch):
    """A stand-in for torchvision's cached resnet18-f37072fd.pth (random weights, same keys)."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    torch.manual_seed(1)
    state = models.resnet18(weights=None).state_dict()
    (tmp_path / "checkpoints").mkdir()
    torch.save(state, tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    return state


@pytest.mark.parametrize("init", ["mean", "repeat"])
def test_imagenet_weights_initialise_conv1_from_rgb_and_keep_the_rest(fake_imagenet_cache, init):
    state = fake_imagenet_cache
    m = build_resnet18(4, 2, weights="imagenet", conv1_init=init)
    rgb = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    rgb.weight.data = state["conv1.weight"]
    assert torch.equal(m.conv1.weight, adapt_conv1(rgb, 4, init).weight)
    assert torch.equal(m.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert torch.equal(m.bn1.running_mean, state["bn1.running_mean"])
    assert m.fc.weight.shape == (2, 512)


def test_imagenet_weights_fail_clearly_when_not_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(InputError, match="not cached") as e:
        build_resnet18(weights="imagenet")
    assert e.value.path.endswith("checkpoints/resnet18-f37072fd.pth")


def test_load_model_rebuilds_the_trained_network_from_a_checkpoint_or_its_path(tmp_path):
    torch.manual_seed(0)
    trained = build_resnet18(4, 2, weights="none")
    with torch.no_grad():
        trained.fc.bias.fill_(0.3)  # a weight random init would not give
    ckpt = {"state_dict": trained.state_dict(), "epoch": 1, "meta": {"in_channels": 4, "classes": ["LGG", "HGG"]}}
    torch.save(ckpt, tmp_path / "model.pt")
    x = torch.randn(2, 4, 32, 32)
    trained.eval()
    for source in (ckpt, tmp_path / "model.pt", str(tmp_path / "model.pt")):
        m = load_model(source)
        assert not m.training
        with torch.no_grad():
            assert torch.equal(m(x), trained(x))
