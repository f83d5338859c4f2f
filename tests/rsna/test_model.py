"""The two-input network and its image-only twin."""

import pytest
import torch

from medflow.errors import InputError
from medflow.rsna.model import ModelConfig, TwoInputNet, cam_layer, load_model, normalise
from medflow.train import load_checkpoint


def test_two_input_model_uses_metadata_and_image_only_ignores_it():
    torch.manual_seed(0)
    image = normalise(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    assert image.shape == (3, 1, 32, 32)
    meta_a, meta_b = torch.zeros(3, 10), torch.ones(3, 10)
    two = TwoInputNet(10, ModelConfig(channels=[4, 8], meta_hidden=4), use_meta=True).eval()
    one = TwoInputNet(10, ModelConfig(channels=[4, 8], meta_hidden=4), use_meta=False).eval()
    assert two(image, meta_a).shape == (3,)
    assert not torch.allclose(two(image, meta_a), two(image, meta_b))
    torch.testing.assert_close(one(image, meta_a), one(image, meta_b))
    assert one.meta_branch is None and one.head[-1].in_features == 8
    with pytest.raises(ValueError, match="takes metadata"):
        two(image)


def test_resnet18_backbone_takes_one_channel():
    net = TwoInputNet(6, ModelConfig(backbone="resnet18", channels=[1]), use_meta=True).eval()
    assert net.image_branch.conv1.in_channels == 1
    assert net(torch.zeros(2, 1, 64, 64), torch.zeros(2, 6)).shape == (2,)


def test_imagenet_weights_fail_clearly_when_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(InputError, match="resnet18-f37072fd.pth: ImageNet weights not cached.*weights to none"):
        TwoInputNet(6, ModelConfig(backbone="resnet18", weights="imagenet"))


def test_imagenet_weights_are_loaded_from_the_cache_and_summed_to_grey(tmp_path, monkeypatch):
    from torchvision.models import ResNet18_Weights, resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    fake = resnet18(weights=None).state_dict()  # stands in for the real file, which cannot be downloaded here
    path = tmp_path / "hub" / "checkpoints" / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    path.parent.mkdir(parents=True)
    torch.save(fake, path)
    net = TwoInputNet(6, ModelConfig(backbone="resnet18", weights="imagenet"))
    torch.testing.assert_close(net.image_branch.conv1.weight, fake["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(net.image_branch.layer4[1].conv2.weight, fake["layer4.1.conv2.weight"])


def test_bad_config_values_are_rejected():
    with pytest.raises(ValueError, match="backbone"):
        ModelConfig(backbone="vgg")
    with pytest.raises(ValueError, match="resnet18 only"):
        ModelConfig(backbone="simple", weights="imagenet")


@pytest.mark.parametrize("variant", ["with_metadata", "image_only"])
def test_load_model_rebuilds_the_trained_network_from_a_path_or_a_dict(trained, variant):
    path = trained["checkpoints"][variant]
    ckpt = load_checkpoint(path)
    from_path, from_dict = load_model(path), load_model(ckpt)
    assert not from_path.training and from_path.use_meta == (variant == "with_metadata")
    for model in (from_path, from_dict):
        state = model.state_dict()
        assert state.keys() == ckpt["state_dict"].keys()
        assert all(torch.equal(state[k], ckpt["state_dict"][k]) for k in state)
    n_meta = len(ckpt["meta"]["meta_features"])
    image, meta = normalise(torch.randint(0, 256, (2, 24, 24), dtype=torch.uint8)), torch.ones(2, n_meta)
    torch.testing.assert_close(from_path(image, meta), from_dict(image, meta), rtol=0, atol=0)


def test_load_model_names_a_checkpoint_of_another_model(tmp_path):
    torch.save({"state_dict": {}, "meta": {"model": {}}}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="other.pt: not an RSNA checkpoint: its meta lacks meta_features, use_meta"):
        load_model(tmp_path / "other.pt")


@pytest.mark.parametrize("backbone, layer", [("simple", "image_branch.4"), ("resnet18", "image_branch.layer4.1.conv2")])
def test_cams_look_at_the_last_convolution_of_the_image_branch(backbone, layer):
    model = TwoInputNet(3, ModelConfig(backbone=backbone, channels=[4, 8]))
    assert cam_layer(model) == layer and isinstance(dict(model.named_modules())[layer], torch.nn.Conv2d)
