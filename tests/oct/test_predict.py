"""Per-image log-probabilities come from one function, used by fit's validation and by the evaluation with the
job's bf16."""

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from medflow.oct.data import OctImages, eval_transform, split_table
from medflow.oct.model import load_model
from medflow.oct.predict import predict_log_proba


def test_validation_and_evaluation_predict_through_medflow_train_predict_with_the_jobs_bf16(run):
    calls = run["calls"]
    assert [c["stage"] for c in calls] == ["train", "train", "evaluate"]  # one validation per epoch, one test pass
    assert all(c["bf16"] is False for c in calls)  # the job's flag, not predict's default (True)
    out = calls[-1]["out"]
    preds = pd.read_csv(run["tmp"] / "predictions.csv", dtype={"patient": str, "id": str})
    classes = ["CNV", "DME", "DRUSEN", "NORMAL"]
    # The CSV holds what predict returned, in its order.
    assert np.allclose(preds[[f"p_{c}" for c in classes]].to_numpy(), np.exp(out["log_proba"]), atol=1e-6)
    assert (preds["label"] == [classes[t] for t in out["target"]]).all()
    # The val metrics of the last epoch are those of the last validation call.
    last = calls[1]["out"]
    loss = float(torch.nn.functional.nll_loss(torch.from_numpy(last["log_proba"]), torch.from_numpy(last["target"])))
    assert run["result"].history[-1]["val_loss"] == loss


def test_predict_log_proba_equals_a_plain_loop_in_loader_order(run):
    model = load_model(run["tmp"] / "model.pt")
    table, c2i = split_table(run["tmp"] / "split.csv", "test")
    ds = OctImages(run["root"], table, c2i, eval_transform(32, 36))
    out = predict_log_proba(model, DataLoader(ds, batch_size=4, shuffle=False), torch.device("cpu"))
    with torch.no_grad():
        expected = model(torch.stack([ds[i][0] for i in range(len(ds))])).numpy()
    assert out["log_proba"].dtype == np.float32 and out["log_proba"].shape == (len(ds), 4)
    assert np.allclose(out["log_proba"], expected, atol=1e-5)
    assert out["target"].tolist() == ds.targets


class _Tiny(nn.Module):
    """A stand-in with the VGG16's output contract: (N, 3, S, S) -> log-probabilities (N, 4)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 4), nn.Dropout(0.5), nn.LogSoftmax(dim=1))

    def forward(self, x):
        return self.net(x)


def test_unlabelled_batches_give_log_proba_only_and_the_model_is_left_in_eval_mode():
    torch.manual_seed(0)
    model = _Tiny().train()
    x = torch.randn(5, 3, 4, 4)
    out = predict_log_proba(model, [x[:2], x[2:]], torch.device("cpu"))
    assert set(out) == {"log_proba"} and not model.training
    with torch.no_grad():
        ref = model(x).numpy()  # eval mode: dropout off, so the batches match the whole
    assert np.allclose(out["log_proba"], ref, atol=1e-6)
    assert np.allclose(np.exp(out["log_proba"]).sum(1), 1, atol=1e-6)
