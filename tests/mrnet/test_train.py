"""One task end to end in process: synthetic download -> ingest -> fold and all-train models (the
shared loop, MLflow) -> out-of-fold stacking and evaluation linked to the training runs."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from medflow import io, tracking
from medflow.ingest import mrnet as ingest
from medflow.mrnet import evaluate as ev
from medflow.mrnet import predict as predict_mod
from medflow.mrnet import train as train_mod
from medflow.mrnet.data import ExamDataset, exam_table
from medflow.mrnet.model import load_model
from medflow.mrnet.train import TrainParams, train
from medflow.params import from_config
from medflow.synthetic import mrnet as synthetic
from medflow.train import Job, load_checkpoint, select_device

TRAIN = {
    "model": {"weights": "none", "image_size": 64},
    "epochs": 2,
    "batch_slices": 16,
    "lr": 5e-4,
    "weight_decay": 0.0,
    "patience": 2,
    "scheduler": {"factor": 0.3, "patience": 1},
    "val_fraction": 0.25,
    "augment": {"rotation_deg": 25, "shift_px": 25, "hflip_p": 0.5},
}
OUTPUTS = {"checkpoint": "model.pt", "predictions": "predictions.csv", "summary": "train.json", "curves": "curves.png"}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    d = tmp_path_factory.mktemp("mrnet_e2e")
    root = d / "MRNet-v1.0"
    synthetic.generate({"n_train": 20, "n_valid": 6, "slices": [3, 4]}, root, seed=0)
    ingest.ingest(root, d / "manifest.csv", d / "folds.csv", k=2, seed=0)
    uri = tracking.resolve_uri("", str(d))
    tracking.create_store(uri)
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    seen, spy = {}, _TrainingSpy()
    job = Job(threads=1, seed=0, bf16=False, rule="mrnet_train")
    with pytest.MonkeyPatch.context() as spies:
        spies.setattr(train_mod, "fit", spy.fit)
        spies.setattr(predict_mod, "infer", spy.infer)
        spies.setattr(ExamDataset, "__getitem__", lambda ds, i: spy.getitem(ds, i))  # a function, so it binds
        results, preds = {}, {}
        for fold in ("0", "1", "all"):
            out = {k: d / f"fold_{fold}" / name for k, name in OUTPUTS.items()}
            params = from_config(
                TrainParams, {"train": TRAIN, "task": "abnormal", "plane": "sagittal", "fold": fold, "root": str(root)}
            )
            results[fold] = train({"manifest": d / "manifest.csv", "folds": d / "folds.csv"}, out, params, job)
            preds[fold] = out["predictions"]
            seen[fold] = spy.take()
    summaries = {f: io.read_json(d / f"fold_{f}" / "train.json") for f in results}
    yield {"dir": d, "root": root, "uri": uri, "results": results, "summaries": summaries, "preds": preds, "seen": seen}
    mp.undo()


class _TrainingSpy:
    """Records, per training job, the exams the training loop really read while it ran, by loader:
    ``fit`` (the shuffled training loader, gradients) and ``monitor`` (early stopping and the best
    checkpoint), and every run of the model through ``medflow.mrnet.predict``: the exams it scored and
    whether it ran inside ``fit``. Wraps the real ``fit``, ``ExamDataset.__getitem__`` and
    ``medflow.train.predict`` (threads=1: no loader workers, so every read happens in this process)."""

    def __init__(self):
        self._real_fit, self._real_getitem, self._real_infer = train_mod.fit, ExamDataset.__getitem__, predict_mod.infer
        self._reads, self._loaders, self._active, self._infer = [], {}, False, []

    def fit(self, model, optimizer, train_loader, val_loader, **kwargs):
        self._loaders = {"fit": train_loader.dataset, "monitor": val_loader.dataset}
        self._active = True
        try:
            return self._real_fit(model, optimizer, train_loader, val_loader, **kwargs)
        finally:
            self._active = False

    def getitem(self, ds, i):
        if self._active:
            self._reads.append((ds, ds.ids[i]))
        return self._real_getitem(ds, i)

    def infer(self, model, loader, device, **kwargs):
        out = self._real_infer(model, loader, device, **kwargs)
        self._infer.append(
            {
                "in_fit": self._active,
                "dataset": loader.dataset,
                "ids": list(loader.dataset.ids),
                "prob": out["prob"].copy(),
            }
        )
        return out

    def take(self) -> dict:
        """{"fit", "monitor", "other"} -> exam ids read during the last fit, and "infer": the predict
        calls of the last job; resets."""
        by = {role: {e for d, e in self._reads if d is ds} for role, ds in self._loaders.items()}
        by["other"] = {e for d, e in self._reads if all(d is not ds for ds in self._loaders.values())}
        by["infer"] = [{**call, "monitor": call["dataset"] is self._loaders.get("monitor")} for call in self._infer]
        self._reads, self._loaders, self._infer = [], {}, []
        return by


def test_training_outputs(pipeline):
    d, folds = pipeline["dir"], ingest.read_folds(pipeline["dir"] / "folds.csv")
    for fold, summary in pipeline["summaries"].items():
        ckpt = load_checkpoint(d / f"fold_{fold}" / "model.pt")  # weights_only
        assert ckpt["meta"]["fold"] == fold and ckpt["meta"]["image_size"] == 64
        # What the predict stage reads: whose checkpoint, for what, and what shaped its input.
        meta = ckpt["meta"]
        assert (meta["pipeline"], meta["task"], meta["plane"]) == ("mrnet", "abnormal", "sagittal")
        assert meta["preprocessing"] == {"in_plane": 256, "image_size": 64}
        assert ckpt["mlflow_run_id"] == summary["mlflow_run_id"] == pipeline["results"][fold].run_id != ""
        assert summary["best_epoch"] == pipeline["results"][fold].best_epoch >= 1
        assert (d / f"fold_{fold}" / "curves.png").exists()
        assert not (d / f"fold_{fold}" / "model.pt.resume").exists()
        pred = pd.read_csv(pipeline["preds"][fold], dtype={"id": str})
        assert pred["prob"].between(0, 1).all()
        if fold == "all":
            assert set(pred["role"]) == {"valid", "in_sample"}
            assert sorted(pred.loc[pred["role"] == "valid", "id"]) == [f"{i:04d}" for i in range(20, 26)]
        else:
            # The held-out fold exactly, which this model never trained on.
            assert set(pred["role"]) == {"heldout"}
            assert set(pred["id"]) == set(folds.loc[folds["fold"] == fold, "id"])
    client = mlflow.MlflowClient(pipeline["uri"])
    run = client.get_run(pipeline["summaries"]["0"]["mlflow_run_id"])
    assert run.info.run_name == "mrnet_train/abnormal/sagittal/fold_0"
    assert run.data.params["task"] == "abnormal" and run.data.params["train.lr"] == "0.0005"
    assert run.data.params["model.image_size"] == "64" and "train.task" not in run.data.params
    assert run.data.tags["snakemake_rule"] == "mrnet_train"
    assert {"train_loss", "val_auc", "val_loss"} <= set(run.data.metrics)


def test_fold_models_never_train_or_monitor_on_the_exams_they_predict(pipeline):
    """Out-of-fold stacking is only out of fold if fold f's model neither fitted on nor early-stopped
    on fold f: fit and monitor sets are disjoint, together exactly the other folds' train exams, and
    disjoint from the exams the model predicts. The all-train model uses every train exam, no valid one."""
    folds = ingest.read_folds(pipeline["dir"] / "folds.csv")
    train_exams = folds[folds["split"] == "train"]
    for fold, seen in pipeline["seen"].items():
        fit, monitor = seen["fit"], seen["monitor"]
        pred = pd.read_csv(pipeline["preds"][fold], dtype={"id": str})
        assert fit and monitor and not seen["other"], fold
        assert not fit & monitor, fold
        if fold == "all":
            predicted = set(pred.loc[pred["role"] == "valid", "id"])
            assert fit | monitor == set(train_exams["id"])
        else:
            predicted = set(pred["id"])
            assert fit | monitor == set(train_exams.loc[train_exams["fold"] != fold, "id"]), fold
        assert predicted and not (fit | monitor) & predicted, fold
        summary = pipeline["summaries"][fold]
        assert (summary["n_train"], summary["n_monitor"]) == (len(fit), len(monitor))


def test_validation_and_written_predictions_come_from_predict(pipeline):
    """Every model output goes through medflow.mrnet.predict: the monitor AUC of each epoch inside
    fit (the monitor exams, once per epoch) and, after fit, one run per predicted role whose
    probabilities are the ones written; predicting again from the saved checkpoint gives them too."""
    d = pipeline["dir"]
    manifest = ingest.read_manifest(d / "manifest.csv")
    for fold, seen in pipeline["seen"].items():
        calls = seen["infer"]
        in_fit = [c for c in calls if c["in_fit"]]
        assert len(in_fit) == pipeline["summaries"][fold]["epochs_run"] and all(c["monitor"] for c in in_fit), fold
        after = [c for c in calls if not c["in_fit"]]
        pred = pd.read_csv(pipeline["preds"][fold], dtype={"id": str})
        assert [c["ids"] for c in after] == [pred.loc[pred["role"] == r, "id"].tolist() for r in pred["role"].unique()]
        np.testing.assert_allclose(
            np.concatenate([c["prob"] for c in after]), pred["prob"], atol=5e-7
        )  # CSV: 6 decimals
        model = load_model(d / f"fold_{fold}" / "model.pt")
        first = pred[pred["role"] == pred["role"].iloc[0]]
        again = predict_mod.predict_exams(
            model,
            pipeline["root"],
            "sagittal",
            exam_table(manifest, first["id"], "abnormal", "sagittal"),
            size=64,
            batch_slices=16,
            device=select_device(1),
            threads=1,
            bf16=False,
        )
        np.testing.assert_array_equal(again, after[0]["prob"])


def test_evaluation_run_is_linked_to_the_plane_runs(pipeline):
    d = pipeline["dir"]
    out = {
        "metrics": d / "metrics.json",
        "predictions": d / "pred.csv",
        "roc": d / "roc.png",
        "stacker": d / "stacker.json",
    }
    folds = ["0", "1", "all"]
    inputs = {
        "folds": d / "folds.csv",
        "predictions": [pipeline["preds"][f] for f in folds],
        "summaries": [d / f"fold_{f}" / "train.json" for f in folds],
    }
    params = from_config(
        ev.EvaluateParams,
        {
            "task": "abnormal",
            "planes": ["sagittal"],
            "folds": folds,
            "evaluate": {},
            "bootstrap": {"bootstrap_samples": 200, "confidence": 0.95},
        },
    )
    m = ev.evaluate(inputs, out, params, Job(seed=0, rule="mrnet_evaluate"))
    assert m["n_valid"] == 6 and 0 <= m["stacked"]["auc"] <= 1
    assert json.loads((d / "metrics.json").read_text())["headline"]["auc"]["n"] == 6
    client = mlflow.MlflowClient(pipeline["uri"])
    exp = client.get_experiment_by_name("mrnet")
    (run,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'mrnet_evaluate/abnormal'")
    assert run.data.tags["training_run_id"] == pipeline["summaries"]["all"]["mlflow_run_id"]
    assert run.data.tags["training_run_id.sagittal.fold_0"] == pipeline["summaries"]["0"]["mlflow_run_id"]
    assert run.data.tags["snakemake_rule"] == "mrnet_evaluate"
    assert run.data.metrics["test_auc"] == m["headline"]["auc"]["value"]
    assert {"test_auc_sagittal", "test_accuracy_stacked", "test_stack_coef_sagittal"} <= set(run.data.metrics)
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert logged == {f"evaluation/{name}" for name in ("metrics.json", "roc.png", "stacker.json", "pred.csv")}
