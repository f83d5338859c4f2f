"""VGG16 transfer model: what is frozen, what trains, the parameter counts, LogSoftmax output,
frozen layers staying in eval mode, ImageNet weights only from the cache, and loading a checkpoint."""

import pytest
import torch

from medflow.errors import InputError
from medflow.oct.model import build_vgg16, load_model, parameter_counts

FEATURES = 14_714_688  # VGG16's 13 convolutions (torchvision: 138,357,544 with the 1000-class classifier)
FC67 = (25088 * 4096 + 4096) + (4096 * 4096 + 4096)


def head(n_in, hidden=256, n_classes=4, bn=True):
    return (2 * n_in if bn else 0) + (n_in * hidden + hidden) + (hidden * n_classes + n_classes)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_vgg16(4, weights="none")


def test_new_classifier_on_frozen_features_counts(model):
    counts = parameter_counts(model)
    assert counts["trainable"] == head(25088)
    assert counts["frozen"] == FEATURES
    assert counts["total"] == FEATURES + head(25088)
    assert not any(p.requires_grad for p in model.features.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
    assert [type(m).__name__ for m in model.classifier] == [
        "BatchNorm1d",
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
        "LogSoftmax",
    ]


def test_last_layer_head_freezes_fc6_fc7_as_the_tutorial():
    with torch.device("meta"):  # shapes and flags only: no memory, no random init
        m = build_vgg16(4, weights="none", head="last_layer", head_batchnorm=False)
    counts = parameter_counts(m)
    assert counts["trainable"] == head(4096, bn=False) == 4096 * 256 + 256 + 256 * 4 + 4
    assert counts["frozen"] == FEATURES + FC67
    assert not any(p.requires_grad for p in m.classifier[:6].parameters())
    assert [type(layer).__name__ for layer in m.classifier[6]] == ["Linear", "ReLU", "Dropout", "Linear", "LogSoftmax"]


def test_output_is_log_probabilities_and_gradients_reach_only_the_head(model):
    model.train()
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 4)
    assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)
    torch.nn.functional.nll_loss(out, torch.tensor([0, 1, 3])).backward()
    assert all(p.grad is None for p in model.features.parameters())
    assert all(p.grad is not None for p in model.classifier.parameters())
    model.zero_grad(set_to_none=True)


def test_frozen_layers_stay_in_eval_mode_while_the_head_trains():
    torch.manual_seed(0)
    m = build_vgg16(4, weights="none", head="last_layer", hidden=8)
    m.train()
    assert not m.features.training and not m.classifier[2].training and not m.classifier[5].training
    assert m.classifier[6].training and m.classifier[6][3].training  # the head's own dropout is on
    with torch.no_grad():
        f = m.avgpool(m.features(torch.randn(2, 3, 32, 32))).flatten(1)
        assert torch.equal(m.classifier[:6](f), m.classifier[:6](f)), "frozen dropout is off"
    m.eval()
    assert not m.classifier[6].training


def test_imagenet_weights_fail_clearly_when_not_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(InputError, match="not cached") as e:
        build_vgg16(4, weights="imagenet")
    assert e.value.path == str(tmp_path / "checkpoints" / "vgg16-397923af.pth")


def test_unknown_options_are_rejected():
    with pytest.raises(ValueError):
        build_vgg16(4, weights="random")
    with pytest.raises(ValueError):
        build_vgg16(4, head="nothing")


def test_load_model_rebuilds_the_checkpoint_from_a_dict_or_a_path(tmp_path):
    torch.manual_seed(1)
    arch = {"hidden": 8, "dropout": 0.4, "head": "classifier", "head_batchnorm": True}
    trained = build_vgg16(4, weights="none", **arch)
    with torch.no_grad():
        trained.classifier[0].running_mean.uniform_()  # a buffer too, not only parameters
    ckpt = {
        "meta": {"class_to_idx": {"CNV": 0, "DME": 1, "DRUSEN": 2, "NORMAL": 3}, "model": arch},
        "state_dict": trained.state_dict(),
        "epoch": 1,
    }
    torch.save(ckpt, tmp_path / "model.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = trained.eval()(x)
        for source in (ckpt, tmp_path / "model.pt", str(tmp_path / "model.pt")):
            model = load_model(source)
            assert not model.training and not any(p.requires_grad for p in model.features.parameters())
            assert torch.equal(model(x), expected)
