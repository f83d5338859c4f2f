"""Slice P(HGG) come from one function, used by fit's validation and by the evaluation with the job's bf16."""

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from medflow.grade.data import GradeSlices
from medflow.grade.model import build_resnet18, load_model
from medflow.grade.predict import predict_slices


def test_validation_and_evaluation_predict_through_medflow_train_predict_with_the_jobs_bf16(run):
    calls = run["calls"]
    assert [c["stage"] for c in calls] == ["train", "train", "evaluate"]  # one validation per epoch, one test pass
    assert all(c["bf16"] is False for c in calls)  # the job's flag, not predict's default (True)
    prob, y, idx = calls[-1]["out"]
    slices = pd.read_csv(run["tmp"] / "slice_predictions.csv")
    assert np.allclose(slices["prob_hgg"], prob, atol=1e-6)  # the CSV holds what predict returned, in its order
    assert (slices["grade"] == np.where(y == 1, "HGG", "LGG")).all()


def test_predict_slices_equals_a_plain_loop_in_loader_order(run):
    model = load_model(run["tmp"] / "model.pt")
    ds = GradeSlices(run["tmp"] / "slices.h5", "val")
    loader = DataLoader(ds, batch_size=4, shuffle=False)
    prob, y, idx = predict_slices(model, loader, torch.device("cpu"))
    with torch.no_grad():
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        expected = torch.softmax(model(x), dim=1)[:, 1].numpy()
    assert prob.dtype == np.float32 and prob.shape == (len(ds),)
    assert np.allclose(prob, expected, atol=1e-6)
    assert idx.tolist() == list(range(len(ds))) and y.tolist() == ds.targets.tolist()


def test_predict_slices_keeps_each_probability_with_its_slice():
    torch.manual_seed(0)
    model = build_resnet18(4, 2)
    x = torch.randn(5, 4, 32, 32)
    batches = [
        (x[[3, 1]], torch.tensor([1, 0]), torch.tensor([3, 1])),
        (x[[0, 4, 2]], torch.tensor([0, 1, 1]), torch.tensor([0, 4, 2])),
    ]
    prob, y, idx = predict_slices(model, batches, torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        ref = torch.softmax(model(x), dim=1)[:, 1].numpy()
    assert idx.tolist() == [3, 1, 0, 4, 2] and y.tolist() == [1, 0, 0, 1, 1]
    assert np.allclose(prob, ref[idx], atol=1e-5)
