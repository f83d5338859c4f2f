"""P(pneumonia) per image through medflow.train.predict."""

import numpy as np
import pytest
import torch

from medflow.rsna.data import eval_loader
from medflow.rsna.model import ModelConfig, TwoInputNet, normalise
from medflow.rsna.predict import predict

CPU = torch.device("cpu")


@pytest.mark.parametrize("use_meta", [True, False])
def test_predict_is_the_sigmoid_of_the_model_on_normalised_images(prepared, use_meta):
    torch.manual_seed(0)
    model = TwoInputNet(10, ModelConfig(channels=[4], meta_hidden=4), use_meta=use_meta)
    model.train()  # predict must switch to eval mode itself (dropout off, BatchNorm running statistics)
    rows = [0, 3, 7, 8, 20]
    loader = eval_loader(prepared / "images.h5", rows, batch_size=2, device=CPU, threads=1)
    out = predict(model, loader, CPU, bf16=True)
    assert not model.training and set(out) == {"prob", "target"}
    images, metas, targets = (torch.cat(parts) for parts in zip(*loader))
    model.eval()
    with torch.no_grad():
        expected = torch.sigmoid(model(normalise(images), metas if use_meta else None)).numpy()
    assert out["prob"].dtype == np.float32 and out["prob"].shape == (5,)
    np.testing.assert_allclose(out["prob"], expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out["target"], targets.numpy())


def test_batches_without_targets_give_probabilities_only():
    torch.manual_seed(0)
    model = TwoInputNet(3, ModelConfig(channels=[4], meta_hidden=4), use_meta=True)
    images = torch.randint(0, 256, (4, 16, 16), dtype=torch.uint8)
    meta = torch.eye(4, 3)
    out = predict(model, [(images[:3], meta[:3]), (images[3:], meta[3:])], CPU)
    assert set(out) == {"prob"} and out["prob"].shape == (4,) and ((out["prob"] > 0) & (out["prob"] < 1)).all()
    whole = predict(model, [(images, meta)], CPU)["prob"]
    np.testing.assert_allclose(out["prob"], whole, atol=1e-6)  # batching does not change a prediction
