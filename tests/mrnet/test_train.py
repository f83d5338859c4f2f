"""One task end to end in process: synthetic download -> ingest -> fold and all-train models (the
shared loop, MLflow) -> out-of-fold stacking and evaluation linked to the training runs."""

import json

import mlflow
import pandas as pd
import pytest

from medflow import tracking
from medflow.ingest import mrnet as ingest
from medflow.mrnet import evaluation as ev
from medflow.mrnet import train as train_mod
from medflow.mrnet.data import ExamDataset
from medflow.mrnet.train import Outputs, train_plane
from medflow.synthetic import mrnet as synthetic
from medflow.train import load_checkpoint

MODEL = {"weights": "none", "image_size": 64}
TRAIN = {"epochs": 2, "batch_slices": 16, "lr": 5e-4, "weight_decay": 0.0, "patience": 2,
         "scheduler": {"factor": 0.3, "patience": 1}, "val_fraction": 0.25,
         "augment": {"rotation_deg": 25, "shift_px": 25, "hflip_p": 0.5}}


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
    with pytest.MonkeyPatch.context() as spies:
        spies.setattr(train_mod, "fit", spy.fit)
        spies.setattr(ExamDataset, "__getitem__", lambda ds, i: spy.getitem(ds, i))  # a function, so it binds
        summaries, preds = {}, {}
        for fold in ("0", "1", "all"):
            out = Outputs(*(d / f"fold_{fold}" / n for n in ("model.pt", "predictions.csv", "train.json", "curves.png")))
            summaries[fold] = train_plane(d / "manifest.csv", d / "folds.csv", root, task="abnormal", plane="sagittal", fold=fold,
                                          model_cfg=MODEL, train_cfg=TRAIN, seed=0, threads=1, bf16=False, outputs=out)
            preds[fold] = out.predictions
            seen[fold] = spy.take()
    yield {"dir": d, "uri": uri, "summaries": summaries, "preds": preds, "seen": seen}
    mp.undo()


class _TrainingSpy:
    """Records, per training job, the exams the training loop really read while it ran, by loader:
    ``fit`` (the shuffled training loader, gradients) and ``monitor`` (early stopping and the best
    checkpoint). Wraps the real ``fit`` and ``ExamDataset.__getitem__`` (threads=1: no loader workers,
    so every read happens in this process)."""

    def __init__(self):
        self._real_fit, self._real_getitem = train_mod.fit, ExamDataset.__getitem__
        self._reads, self._loaders, self._active = [], {}, False

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

    def take(self) -> dict[str, set[str]]:
        """{"fit", "monitor", "other"} -> exam ids read during the last fit; resets."""
        by = {role: {e for d, e in self._reads if d is ds} for role, ds in self._loaders.items()}
        by["other"] = {e for d, e in self._reads if all(d is not ds for ds in self._loaders.values())}
        self._reads, self._loaders = [], {}
        return by


def test_training_outputs(pipeline):
    d, folds = pipeline["dir"], ingest.read_folds(pipeline["dir"] / "folds.csv")
    for fold, summary in pipeline["summaries"].items():
        ckpt = load_checkpoint(d / f"fold_{fold}" / "model.pt")  # weights_only
        assert ckpt["meta"]["fold"] == fold and ckpt["meta"]["image_size"] == 64
        assert ckpt["mlflow_run_id"] == summary["mlflow_run_id"] != ""
        assert json.loads((d / f"fold_{fold}" / "train.json").read_text())["best_epoch"] >= 1
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
    assert run.data.params["task"] == "abnormal" and run.data.params["train.lr"] == "0.0005"
    assert run.data.tags["snakemake_rule"] == "mrnet_train"
    assert {"train_loss", "val_auc", "val_loss"} <= set(run.data.metrics)


def test_fold_models_never_train_or_monitor_on_the_exams_they_predict(pipeline):
    """Out-of-fold stacking is only out of fold if fold f's model neither fitted on nor early-stopped
    on fold f: fit and monitor sets are disjoint, together exactly the other folds' train exams, and
    disjoint from the exams the model predicts. The all-train model uses every train exam, no valid one."""
    folds = ingest.read_folds(pipeline["dir"] / "folds.csv")
    train = folds[folds["split"] == "train"]
    for fold, seen in pipeline["seen"].items():
        fit, monitor = seen["fit"], seen["monitor"]
        pred = pd.read_csv(pipeline["preds"][fold], dtype={"id": str})
        assert fit and monitor and not seen["other"], fold
        assert not fit & monitor, fold
        if fold == "all":
            predicted = set(pred.loc[pred["role"] == "valid", "id"])
            assert fit | monitor == set(train["id"])
        else:
            predicted = set(pred["id"])
            assert fit | monitor == set(train.loc[train["fold"] != fold, "id"]), fold
        assert predicted and not (fit | monitor) & predicted, fold
        summary = pipeline["summaries"][fold]
        assert (summary["n_train"], summary["n_monitor"]) == (len(fit), len(monitor))


def test_stacking_run_is_linked_to_the_plane_runs(pipeline):
    d = pipeline["dir"]
    out = ev.Outputs(d / "metrics.json", d / "pred.csv", d / "roc.png", d / "stacker.json")
    run_ids = {"sagittal": {f: s["mlflow_run_id"] for f, s in pipeline["summaries"].items()}}
    m = ev.evaluate_task("abnormal", {"sagittal": pipeline["preds"]}, d / "folds.csv", out, run_ids=run_ids)
    assert m["n_valid"] == 6 and 0 <= m["stacked"]["auc"] <= 1
    client = mlflow.MlflowClient(pipeline["uri"])
    exp = client.get_experiment_by_name("mrnet")
    (run,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'abnormal-stack'")
    assert run.data.tags["training_run_id"] == pipeline["summaries"]["all"]["mlflow_run_id"]
    assert run.data.tags["training_run_id.sagittal.fold_0"] == pipeline["summaries"]["0"]["mlflow_run_id"]
    assert "valid_auc_stacked" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics", "plots", "stacker", "predictions"}


def test_rank_auc_equals_scikit_learn():
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from medflow.mrnet.train import rank_auc

    rng = np.random.default_rng(0)
    for n in (5, 40, 300):
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        p = np.round(rng.random(n), 1)  # many ties
        assert rank_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert np.isnan(rank_auc([1, 1], [0.2, 0.4]))
