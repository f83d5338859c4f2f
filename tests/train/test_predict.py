"""medflow.train.predict: the shared inference loop (exact on the CPU, structured outputs, eval mode,
no autograd, bf16 on CUDA, usable inside fit's validation)."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from medflow.train import FitConfig, fit, predict

torch.set_num_threads(1)
CPU = torch.device("cpu")


def make_model():
    # BatchNorm and Dropout behave differently in train mode, so a loop that forgets eval() differs.
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 3)
    )


def make_loader(n=37, batch_size=8):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y, torch.arange(n)), batch_size=batch_size)


def hand_loop(model, loader):
    model.eval()
    out = []
    with torch.no_grad():
        for x, *_ in loader:
            out.append(model(x).float().cpu())
    return torch.cat(out).numpy()


def test_equals_a_hand_loop_exactly_on_the_cpu():
    model, loader = make_model(), make_loader()
    expected = hand_loop(make_model(), loader)
    model.train()  # predict must switch to eval itself
    got = predict(model, loader, CPU)
    assert got.dtype == np.float32 and got.shape == (37, 3)
    np.testing.assert_array_equal(got, expected)
    # A plain list of batches works the same as a DataLoader.
    np.testing.assert_array_equal(predict(model, list(loader), CPU), expected)


def test_tuple_and_dict_outputs_keep_their_structure_and_dtypes():
    model, loader = make_model(), make_loader()
    logits = hand_loop(make_model(), loader)

    def as_tuple(m, batch):
        x, y, i = batch
        return torch.softmax(m(x).double(), 1)[:, 1], y, i  # float64 comes back float32; ids stay int64

    prob, y, idx = predict(model, loader, CPU, forward=as_tuple)
    assert prob.dtype == np.float32 and y.dtype == np.int64 and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, np.arange(37))
    np.testing.assert_array_equal(y, torch.cat([b[1] for b in loader]).numpy())
    np.testing.assert_allclose(
        prob, torch.softmax(torch.from_numpy(logits).double(), 1)[:, 1].float().numpy(), rtol=1e-6
    )

    out = predict(model, loader, CPU, forward=lambda m, b: {"logits": m(b[0]), "target": b[1]})
    assert isinstance(out, dict) and list(out) == ["logits", "target"]
    np.testing.assert_array_equal(out["logits"], logits)
    assert out["target"].shape == (37,)


def test_dict_batches_go_whole_to_the_model():
    class DictModel(torch.nn.Module):
        def forward(self, batch):
            return batch["a"] * 2 + batch["b"]

    batches = [{"a": torch.ones(2, 3), "b": torch.zeros(2, 3)}, {"a": torch.zeros(1, 3), "b": torch.ones(1, 3)}]
    got = predict(DictModel(), batches, CPU)
    np.testing.assert_array_equal(got, np.array([[2.0] * 3] * 2 + [[1.0] * 3], dtype=np.float32))


def test_batches_are_moved_to_the_device():
    # The meta device stands in for a GPU: moving there is visible, and forward returns CPU tensors.
    seen = []

    def forward(m, batch):
        seen.append({t.device.type for t in batch})
        return torch.zeros(len(batch[0]))

    assert predict(make_model(), make_loader(), torch.device("meta"), forward=forward).shape == (37,)
    assert seen and all(s == {"meta"} for s in seen)


def test_model_left_in_eval_mode_and_no_autograd_recorded():
    model, loader = make_model(), make_loader()
    seen = []

    def forward(m, batch):
        out = m(batch[0])
        seen.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled(), out.requires_grad))
        return out

    model.train()
    predict(model, loader, CPU, forward=forward)
    assert not model.training and not any(mod.training for mod in model.modules())
    assert seen and all(s == (False, True, False) for s in seen)
    assert all(p.grad is None for p in model.parameters())
    # Running statistics are not updated by inference.
    ref = make_model()
    for a, b in zip(model[1].buffers(), ref[1].buffers()):
        assert torch.equal(a, b)


def test_empty_loader_and_bad_outputs_raise():
    with pytest.raises(ValueError, match="no batches"):
        predict(make_model(), [], CPU)
    with pytest.raises(TypeError, match="tensor"):
        predict(make_model(), make_loader(), CPU, forward=lambda m, b: [m(b[0]).sum().item()])


def test_works_inside_fits_validation(tmp_path):
    """fit wraps evaluate in no_grad + autocast + eval; predict nests in it and training goes on after it."""
    train = DataLoader(make_loader(48).dataset, batch_size=8, shuffle=True)
    val = make_loader(20)

    def train_step(m, batch):
        x, y, _ = batch
        return torch.nn.functional.cross_entropy(m(x), y)

    def eval_hand(m, loader):
        logits = torch.from_numpy(hand_loop(m, loader))
        return {"loss": float(torch.nn.functional.cross_entropy(logits, torch.cat([b[1] for b in loader])))}

    def eval_predict(m, loader):
        logits, y = predict(m, loader, CPU, forward=lambda mm, b: (mm(b[0]), b[1]))
        return {"loss": float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)))}

    results = []
    for name, ev in (("hand", eval_hand), ("predict", eval_predict)):
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        cfg = FitConfig(epochs=3, monitor="val_loss", mode="min", seed=5)
        res = fit(
            model,
            opt,
            train,
            val,
            train_step=train_step,
            evaluate=ev,
            cfg=cfg,
            device=CPU,
            checkpoint_path=tmp_path / f"{name}.pt",
        )
        results.append((res.history, model.state_dict()))
    (h_hand, w_hand), (h_pred, w_pred) = results
    assert [r["val_loss"] for r in h_hand] == [r["val_loss"] for r in h_pred]
    assert [r["train_loss"] for r in h_hand] == [r["train_loss"] for r in h_pred]
    assert len({r["val_loss"] for r in h_pred}) == 3, "the model trained between validations"
    for k in w_hand:
        assert torch.equal(w_hand[k], w_pred[k])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_is_active_on_cuda():
    cuda = torch.device("cuda")
    model, loader = make_model().to(cuda), make_loader()
    seen = []

    def forward(m, batch):
        assert batch[0].device.type == "cuda", "batches are moved to the device"
        out = m(batch[0])
        seen.append(out.dtype)
        return out

    got = predict(model, loader, cuda, forward=forward)
    assert got.dtype == np.float32 and got.shape == (37, 3)
    expected_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    assert set(seen) == {expected_dtype}
    seen.clear()
    predict(model, loader, cuda, bf16=False, forward=forward)
    assert set(seen) == {torch.float32}
    np.testing.assert_allclose(got, predict(model, loader, cuda, bf16=False), atol=0.1)


def test_a_gpu_run_waits_for_the_device_once_not_per_batch(monkeypatch):
    """Outputs are copied to the host without blocking and the device synchronised once at the end.
    torch.cuda is mocked: the model runs on the CPU, predict is told the device is CUDA (an sm_75 GPU,
    so autocast stays off)."""
    import importlib

    predict_mod = importlib.import_module("medflow.train.predict")  # the module, not the function
    syncs, copies = [], []
    monkeypatch.setattr(predict_mod, "to_device", lambda batch, device: batch)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake T4")
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        copies.append(kwargs.get("non_blocking", False))
        return real_to(self, *args, **kwargs)

    model, loader = make_model(), make_loader()
    want = hand_loop(model, loader)
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.Tensor, "to", to)
    got = predict(model, loader, cuda)
    monkeypatch.undo()
    assert syncs == [cuda]
    assert len(copies) == 5 and all(copies), "one non-blocking copy per batch (37 items, 8 per batch)"
    np.testing.assert_array_equal(got, want)
