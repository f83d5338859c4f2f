"""medflow.train.pretrained: ImageNet weights come from torch's cache only, with a clear error when absent."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torchvision.models import ResNet18_Weights

from medflow.errors import InputError
from medflow.train.pretrained import cached_weights_path, imagenet_state_dict

FAKE = SimpleNamespace(url="https://download.example.org/models/tiny-0123abcd.pth")


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """$TORCH_HOME in tmp_path; an earlier torch.hub.set_dir (which would win over it) is undone here and restored
    after the test."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def test_cached_path_is_torchvisions_checkpoint_under_torch_home(torch_home):
    expected = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert cached_weights_path(ResNet18_Weights.IMAGENET1K_V1) == expected
    assert cached_weights_path(FAKE) == torch_home / "hub" / "checkpoints" / "tiny-0123abcd.pth"


def test_cached_path_follows_torch_hub_set_dir(torch_home, tmp_path):
    torch.hub.set_dir(str(tmp_path / "elsewhere"))  # undone by the fixture's monkeypatch
    assert cached_weights_path(FAKE) == Path(torch.hub.get_dir()) / "checkpoints" / "tiny-0123abcd.pth"
    assert cached_weights_path(FAKE).parent == tmp_path / "elsewhere" / "checkpoints"


def test_missing_weights_name_the_expected_file_and_the_url(torch_home):
    with pytest.raises(InputError, match="ImageNet weights not cached") as e:
        imagenet_state_dict(FAKE)
    assert e.value.path == str(torch_home / "hub" / "checkpoints" / "tiny-0123abcd.pth")
    assert FAKE.url in e.value.problem, "the user is told what to download"


def test_cached_state_dict_is_loaded(torch_home):
    torch.manual_seed(0)
    state = torch.nn.Linear(3, 2).state_dict()
    path = cached_weights_path(FAKE)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    got = imagenet_state_dict(FAKE)
    assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_weights_saved_from_a_gpu_load_on_the_cpu(torch_home):
    """The model is built on the CPU and moved later, so a file written from GPU tensors must not land on a GPU."""
    state = {k: v.cuda() for k, v in torch.nn.Linear(3, 2).state_dict().items()}
    path = cached_weights_path(FAKE)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    assert {v.device.type for v in imagenet_state_dict(FAKE).values()} == {"cpu"}
