"""Training both variants through medflow.train.fit and evaluating them on the held-out patients."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from medflow.ingest import rsna as ingest
from medflow.rsna import metadata
from medflow.rsna import preprocess as pp
from medflow.rsna import train as tr
from medflow.rsna.evaluate import evaluate
from medflow.train import load_checkpoint

PARAMS = {"backbone": "simple", "weights": "none", "channels": [4, 8], "meta_hidden": 4, "dropout": 0.1, "epochs": 2,
          "patience": 0, "batch_size": 8, "lr": 0.01, "weight_decay": 0.0,
          "augment": {"translate": 0.05, "rotate_deg": 5, "scale": 0.05, "hflip": True}}


@pytest.fixture(scope="module")
def prepared(rsna_raw, tmp_path_factory):
    d = tmp_path_factory.mktemp("rsna_train")
    manifest = ingest.ingest(rsna_raw, d / "manifest.csv", d / "split.csv", {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0)
    table, _ = metadata.build_table(manifest)
    pp.write_hdf5(table, manifest, d / "images.h5", pp.PreprocessConfig(size=24))
    return d


def test_split_indices_follow_the_patient_split(prepared):
    idx = tr.split_indices(prepared / "images.h5", prepared / "split.csv")
    split = pd.read_csv(prepared / "split.csv")
    assert {k: len(v) for k, v in idx.items()} == split["split"].value_counts().to_dict()
    assert sorted(np.concatenate(list(idx.values()))) == list(range(len(split)))


def test_augment_is_seeded_and_keeps_the_shape():
    x = torch.randn(4, 1, 16, 16)
    torch.manual_seed(1)
    a = tr.augment(x, 0.1, 10, 0.1, True)
    torch.manual_seed(1)
    b = tr.augment(x, 0.1, 10, 0.1, True)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert torch.equal(tr.augment(x, 0, 0, 0, False), x)


def test_train_both_variants_and_evaluate(prepared, tmp_path):
    ckpts = {}
    for variant in ("with_metadata", "image_only"):
        ckpts[variant] = tmp_path / f"{variant}.pt"
        result = tr.train(prepared / "images.h5", prepared / "split.csv", variant, ckpts[variant], tmp_path / f"{variant}.png",
                          PARAMS, threads=1, seed=0, track=False)
        assert len(result.history) == 2 and "val_auc" in result.history[0]
        ckpt = load_checkpoint(ckpts[variant])  # weights_only=True
        assert ckpt["meta"]["variant"] == variant and ckpt["meta"]["use_meta"] == (variant == "with_metadata")
        assert ckpt["meta"]["meta_features"][-1] == "view_PA" and ckpt["monitor"] == "val_auc"
        assert (tmp_path / f"{variant}.png").stat().st_size > 0
        assert not (tmp_path / f"{variant}.pt.resume").exists()
    out = {k: tmp_path / k for k in ("metrics.json", "roc.png", "predictions.csv")}
    metrics = evaluate(prepared / "images.h5", prepared / "split.csv", ckpts, out["metrics.json"], out["roc.png"],
                       out["predictions.csv"], track=False)
    assert json.loads(out["metrics.json"].read_text()) == metrics
    split = pd.read_csv(prepared / "split.csv", dtype={"patientId": str})
    test_ids = sorted(split.loc[split["split"] == "test", "patientId"])
    assert metrics["headline"]["model"] == "with_metadata" and metrics["headline"]["value"] == metrics["with_metadata"]["auc"]
    assert metrics["n_patients"] == len(test_ids) and metrics["n_excluded"] == 0
    for rep in (metrics["with_metadata"], metrics["image_only"]):
        assert 0 <= rep["auc"] <= 1 and rep["n"] == len(test_ids)
    preds = pd.read_csv(out["predictions.csv"], dtype={"patientId": str})
    assert sorted(preds["patientId"]) == test_ids and preds[["prob_with_metadata", "prob_image_only"]].stack().between(0, 1).all()
    assert out["roc.png"].stat().st_size > 0
