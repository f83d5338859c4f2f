import pytest
import torch

torch.set_num_threads(1)  # the test machine is shared

PLANES = ("axial", "coronal", "sagittal")
TRAIN = {
    "model": {"weights": "none", "image_size": 64},
    "epochs": 1,
    "batch_slices": 32,
    "lr": 5e-4,
    "weight_decay": 0.0,
    "patience": 1,
    "scheduler": {"factor": 0.3, "patience": 1},
    "val_fraction": 0.25,
    "augment": None,
}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The ACL task as the workflow runs it, without MLflow: a small synthetic download, ingest, the three
    all-train plane models (mrnet_train), in-sample stacking and evaluation on the 6 valid exams with
    class-activation maps of 2 of them (mrnet_evaluate), in the results/mrnet layout under ``dir``."""
    from medflow.ingest import mrnet as ingest
    from medflow.mrnet import evaluate as ev
    from medflow.mrnet.train import TrainParams, train
    from medflow.params import from_config
    from medflow.synthetic import mrnet as synthetic
    from medflow.train import Job

    d = tmp_path_factory.mktemp("mrnet_trained")
    root = d / "MRNet-v1.0"
    synthetic.generate({"n_train": 16, "n_valid": 6, "slices": [3, 4]}, root, seed=0)
    ingest.ingest(root, d / "manifest.csv", d / "folds.csv", k=2, seed=0)
    job = Job(threads=1, seed=0, bf16=False, track=False)
    jobs = {}
    for plane in PLANES:
        out = d / "train" / "acl" / plane / "fold_all"
        jobs[plane] = {
            k: out / name
            for k, name in [
                ("checkpoint", "model.pt"),
                ("predictions", "predictions.csv"),
                ("summary", "train.json"),
                ("curves", "curves.png"),
            ]
        }
        params = from_config(
            TrainParams, {"train": TRAIN, "task": "acl", "plane": plane, "fold": "all", "root": str(root)}
        )
        train({"manifest": d / "manifest.csv", "folds": d / "folds.csv"}, jobs[plane], params, job)
    evaluate = d / "evaluate" / "acl"
    outputs = {
        k: evaluate / name
        for k, name in [
            ("metrics", "metrics.json"),
            ("predictions", "predictions.csv"),
            ("roc", "roc.png"),
            ("stacker", "stacker.json"),
            ("cams", "cams"),
        ]
    }
    inputs = {
        "folds": d / "folds.csv",
        "predictions": [jobs[p]["predictions"] for p in PLANES],
        "summaries": [jobs[p]["summary"] for p in PLANES],
        "checkpoints": [jobs[p]["checkpoint"] for p in PLANES],
    }
    params = from_config(
        ev.EvaluateParams,
        {
            "task": "acl",
            "planes": PLANES,
            "folds": ["all"],
            "evaluate": {"fit_on": "in_sample"},
            "bootstrap": {"bootstrap_samples": 100, "confidence": 0.95},
            "root": str(root),
            "cams": 2,
        },
    )
    metrics = ev.evaluate(inputs, outputs, params, job)
    return {
        "dir": d,
        "root": root,
        "checkpoints": inputs["checkpoints"],
        "evaluate": outputs,
        "metrics": metrics,
    }
