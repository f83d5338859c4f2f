"""One tiny OCT2017 tree run end to end (ingest -> oct_train -> oct_evaluate with CAMs, MLflow on), shared by the
tests of train, evaluate and predict."""

import logging

import pandas as pd
import pytest

TRAIN = {
    "image_size": 32,
    "resize": 36,
    "augment": {"crop_scale": [0.8, 1.0], "rotation": 15, "brightness": 0.2, "contrast": 0.2, "hflip": True},
    "weights": "none",
    "head": "classifier",
    "head_batchnorm": True,
    "hidden": 16,
    "dropout": 0.4,
    "epochs": 2,
    "patience": 0,
    "monitor": "val_loss",
    "batch_size": 8,
    "lr": 0.001,
}
BOOTSTRAP = {"bootstrap_samples": 200, "confidence": 0.9}
EVAL_SEED = 3
EVAL_CAMS = 5  # more than the four classes: one class gets a second map


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    """The run's files under ``tmp``; ``calls`` records every ``medflow.train.predict`` call made through
    ``medflow.oct.predict`` (stage, bf16 flag, outputs). Both jobs run with bf16 False, so passing the job's
    flag is told apart from predict's default (True); ``log`` holds medflow.oct.train's log lines."""
    import torch

    from medflow import tracking
    from medflow.ingest.oct import ingest
    from medflow.oct import predict as oct_predict
    from medflow.oct.evaluate import EvaluateParams, evaluate
    from medflow.oct.train import TrainParams, train
    from medflow.params import from_config
    from medflow.synthetic.oct import generate
    from medflow.train import Job

    tmp = tmp_path_factory.mktemp("octrun")
    uri = tracking.resolve_uri("", str(tmp))
    tracking.create_store(uri)
    root = tmp / "OCT2017"
    # 3 test patients per class: enough for most patient resamples to hold every class (macro recall).
    generate(
        root,
        {
            "patients": {"train": 2, "val": 1, "test": 3},
            "images_per_patient": [1, 2],
            "height": [36, 48],
            "aspect": [1.0, 1.4],
        },
        seed=0,
    )
    ingest(root, tmp / "manifest.csv", tmp / "split.csv", val_source="folder", val_fraction=0.1, seed=0)

    calls, stage = [], {"name": None}
    real = oct_predict.predict

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append({"stage": stage["name"], "bf16": kwargs.get("bf16"), "out": out})
        return out

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("medflow.oct.train")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setattr(oct_predict, "predict", spy)
    torch.set_num_threads(1)
    try:
        stage["name"] = "train"
        result = train(
            {"split": tmp / "split.csv"},
            {"checkpoint": tmp / "model.pt", "curves": tmp / "curves.png"},
            from_config(TrainParams, {"root": str(root), "train": TRAIN}),
            Job(threads=1, seed=0, bf16=False, rule="oct_train"),
        )
        stage["name"] = "evaluate"
        outputs = {
            "metrics": tmp / "metrics.json",
            "predictions": tmp / "predictions.csv",
            "confusion": tmp / "confusion.png",
            "cams": tmp / "cams",
        }
        params = from_config(
            EvaluateParams,
            {"root": str(root), "evaluate": {"top_k": 2, "batch_size": 16}, "bootstrap": BOOTSTRAP, "cams": EVAL_CAMS},
        )
        report = evaluate(
            {"split": tmp / "split.csv", "checkpoint": tmp / "model.pt"},
            outputs,
            params,
            Job(threads=1, seed=EVAL_SEED, bf16=False, rule="oct_evaluate"),
        )
    finally:
        logger.removeHandler(handler)
        mp.undo()
    return {
        "tmp": tmp,
        "root": root,
        "uri": uri,
        "result": result,
        "report": report,
        "calls": calls,
        "split": pd.read_csv(tmp / "split.csv", dtype={"patient": str, "id": str}),
        "log": "\n".join(r.getMessage() for r in records),
    }
