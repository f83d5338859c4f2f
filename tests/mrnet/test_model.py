"""MRNet on packed batches gives what the tutorial's one-exam-at-a-time network gives."""

import pytest
import torch

from medflow.errors import InputError
from medflow.mrnet.model import MRNet, segment_max


def _exams(counts, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (c, size, size), dtype=torch.uint8, generator=g) for c in counts]


def test_segment_max_takes_the_max_within_each_exam():
    v = torch.tensor([[1.0, 5.0], [3.0, 2.0], [0.0, 0.0], [-1.0, 7.0], [4.0, -2.0], [2.0, 2.0]])
    assert torch.equal(segment_max(v, torch.tensor([2, 1, 3])), torch.tensor([[3.0, 5.0], [0.0, 0.0], [4.0, 7.0]]))
    with pytest.raises(ValueError):
        segment_max(v, [2, 2])
    with pytest.raises(ValueError):
        segment_max(v, [6, 0])


def test_segment_max_never_reads_counts_on_the_host():
    """On the meta device no value can be read (as a GPU tensor's would need a sync): the segment max
    still runs, so it needs no host round trip. Gradients go to each exam's maximum, ties shared evenly
    as amax per exam shares them."""
    meta = torch.device("meta")
    out = segment_max(torch.empty(10, 256, device=meta), torch.tensor([3, 7], device=meta))
    assert out.shape == (2, 256) and out.device == meta
    v = torch.tensor([[2.0], [2.0], [1.0], [0.0], [0.0]], requires_grad=True)
    segment_max(v, [3, 2]).sum().backward()
    assert v.grad.flatten().tolist() == [0.5, 0.5, 0.0, 0.5, 0.5]


def test_logits_are_float32_under_bf16_autocast():
    """CPU bf16 autocast stands in for CUDA's: the features run in bf16, the max over slices and the
    head in float32 (probabilities without bf16's coarse steps); without autocast nothing changes."""
    torch.manual_seed(0)
    model = MRNet().eval()
    x, counts = torch.cat(_exams([2, 3])), torch.tensor([2, 3])
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = model.slice_features(x)
            logits = model(x, counts)
        ref = model.classifier(segment_max(features.float(), counts)).squeeze(1)
        plain = model(x, counts)
    assert features.dtype == torch.bfloat16 and logits.dtype == torch.float32
    assert torch.equal(logits, ref)
    assert plain.dtype == torch.float32


def test_packed_batch_equals_one_exam_at_a_time():
    torch.manual_seed(0)
    model = MRNet().eval()
    counts = [3, 7, 1, 5]
    exams = _exams(counts)
    with torch.no_grad():
        packed = model(torch.cat(exams), torch.tensor(counts))
        single = torch.cat([model(x, [len(x)]) for x in exams])
        # The tutorial's reference: features per slice, then max over its slices, then the linear layer.
        ref = torch.stack([model.classifier(model.slice_features(x).max(0).values)[0] for x in exams])
    assert packed.shape == (4,)
    torch.testing.assert_close(packed, single, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(packed, ref, rtol=1e-4, atol=1e-5)
    # Packing order does not matter: each exam's output depends on its own slices only.
    order = [2, 0, 3, 1]
    with torch.no_grad():
        shuffled = model(torch.cat([exams[i] for i in order]), torch.tensor([counts[i] for i in order]))
    torch.testing.assert_close(shuffled, packed[order], rtol=1e-4, atol=1e-5)


def test_packed_gradients_equal_summed_single_exam_gradients():
    torch.manual_seed(1)
    model = MRNet()
    counts = [2, 4, 3]
    exams = _exams(counts, seed=1)
    model(torch.cat(exams), counts).sum().backward()
    packed = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for x in exams:
        model(x, [len(x)]).sum().backward()
    for a, p in zip(packed, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-3, atol=1e-5)


def test_input_contract():
    model = MRNet()
    assert sum(p.numel() for p in model.features.parameters()) == 2469696, "torchvision AlexNet features"
    with pytest.raises(ValueError, match="minimum"):
        model(torch.zeros(2, 32, 32, dtype=torch.uint8), [2])
    with pytest.raises(ValueError, match="weights"):
        MRNet("imagenet21k")


def test_imagenet_weights_fail_clearly_when_not_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(InputError, match="ImageNet weights not cached") as err:
        MRNet("imagenet")
    assert "alexnet" in err.value.path


def test_load_model_gives_the_saved_model_in_eval_mode(tmp_path):
    """From the checkpoint dict or its path (as medflow.train.fit writes it): the same outputs, no
    pretrained weights needed; the meta gives the model settings back."""
    from medflow.mrnet.model import ModelConfig, build_model, checkpoint_params, load_model

    torch.manual_seed(3)
    model = build_model(ModelConfig(weights="none", image_size=64)).eval()
    ckpt = {"state_dict": model.state_dict(), "meta": {"weights": "imagenet", "image_size": 64}}
    torch.save(ckpt, tmp_path / "model.pt")
    x, counts = torch.cat(_exams([2, 3])), [2, 3]
    with torch.no_grad():
        want = model(x, counts)
        for loaded in (load_model(ckpt), load_model(tmp_path / "model.pt")):
            assert not loaded.training
            torch.testing.assert_close(loaded(x, counts), want, rtol=0, atol=0)
    assert checkpoint_params(ckpt) == ModelConfig(weights="imagenet", image_size=64)
    torch.save({"state_dict": {"features.0.weight": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not an MRNet checkpoint") as err:
        load_model(tmp_path / "other.pt")
    assert err.value.path == str(tmp_path / "other.pt")
