"""Per-exam P(positive) through medflow.train.predict: packed batches in, one probability per exam out."""

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from medflow.mrnet import predict as predict_mod
from medflow.mrnet.data import collate_packed
from medflow.mrnet.model import MRNet

CPU = torch.device("cpu")


def _batches(counts_per_batch, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    batches, label = [], 0
    for counts in counts_per_batch:
        items = []
        for c in counts:
            items.append((torch.randint(0, 256, (c, size, size), dtype=torch.uint8, generator=g), float(label % 2)))
            label += 1
        batches.append(collate_packed(items))
    return batches


def test_probabilities_labels_and_per_batch_loss_are_the_models_own():
    torch.manual_seed(0)
    model = MRNet()
    batches = _batches([[3, 2], [4], [1, 2, 2]])
    pw = torch.tensor(2.0)
    out = predict_mod.score_exams(
        model,
        batches,
        CPU,
        bf16=False,
        loss=lambda z, y: F.binary_cross_entropy_with_logits(z, y, pos_weight=pw, reduction="sum"),
    )
    assert not model.training and out["prob"].shape == (6,) and out["prob"].dtype == np.float32
    with torch.no_grad():
        logits = [model(b["slices"], b["counts"]) for b in batches]
    np.testing.assert_array_equal(out["prob"], torch.sigmoid(torch.cat(logits)).numpy())
    np.testing.assert_array_equal(out["label"], [0, 1, 0, 1, 0, 1])
    want = [
        float(F.binary_cross_entropy_with_logits(z, b["label"], pos_weight=pw, reduction="sum"))
        for z, b in zip(logits, batches)
    ]
    np.testing.assert_array_equal(out["loss"], np.float32(want))
    np.testing.assert_array_equal(predict_mod.predict_probabilities(model, batches, CPU, bf16=False), out["prob"])
    assert "loss" not in predict_mod.score_exams(model, batches, CPU, bf16=False)


def test_predict_runs_through_the_shared_inference_loop(monkeypatch):
    calls = []

    def spy(model, loader, device, **kw):
        calls.append(kw)
        return real(model, loader, device, **kw)

    real = predict_mod.infer
    monkeypatch.setattr(predict_mod, "infer", spy)
    torch.manual_seed(0)
    predict_mod.predict_probabilities(MRNet(), _batches([[2]]), CPU, bf16=True)
    assert len(calls) == 1 and calls[0]["bf16"] is True and callable(calls[0]["forward"])


def test_predict_exams_follows_the_exam_table_order(tmp_path):
    """Exams from disk, packed several per batch: one probability per row of the table, in its order,
    each what the exam alone gives."""
    rng = np.random.default_rng(0)
    rows = []
    for i, (split, slices) in enumerate([("train", 3), ("valid", 2), ("train", 5), ("valid", 1)]):
        (tmp_path / split / "coronal").mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / split / "coronal" / f"{i:04d}.npy", rng.integers(0, 256, (slices, 64, 64), dtype=np.uint8))
        rows.append({"id": f"{i:04d}", "split": split, "label": 0, "slices": slices})
    exams = pd.DataFrame(rows).iloc[[2, 0, 3, 1]].reset_index(drop=True)
    torch.manual_seed(0)
    model = MRNet().eval()
    prob = predict_mod.predict_exams(
        model, tmp_path, "coronal", exams, size=64, batch_slices=6, device=CPU, threads=1, bf16=False
    )
    with torch.no_grad():
        alone = [
            torch.sigmoid(model(torch.from_numpy(np.load(tmp_path / s / "coronal" / f"{e}.npy")), [n])).item()
            for e, s, n in zip(exams["id"], exams["split"], exams["slices"])
        ]
    assert prob.shape == (4,)
    np.testing.assert_allclose(prob, alone, rtol=1e-5, atol=1e-6)
