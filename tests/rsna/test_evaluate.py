"""Evaluating both variants on the held-out patients: metrics, headline block, predictions, MLflow."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from medflow.errors import InputError
from medflow.evaluation.headline import bootstrap_metric, headline_block
from medflow.params import from_config
from medflow.rsna import evaluate as ev
from medflow.train import Job
from tests.rsna.conftest import VARIANTS

N_BOOT, LEVEL, SEED = 200, 0.8, 5  # not the defaults, so the plumbing of each one is checked
CAMS = 2


def _params(threshold=0.5, cams=0):
    return from_config(
        ev.EvaluateParams,
        {
            "evaluate": {"threshold": threshold, "batch_size": 4},
            "bootstrap": {"bootstrap_samples": N_BOOT, "confidence": LEVEL},
            "cams": cams,
        },
    )


def _outputs(d, cams=False):
    out = {"metrics": d / "metrics.json", "roc": d / "roc.png", "predictions": d / "predictions.csv"}
    return {**out, "cams": d / "cams"} if cams else out


def _inputs(prepared, checkpoints):
    return {"h5": prepared / "images.h5", "split": prepared / "split.csv", "checkpoints": checkpoints}


@pytest.fixture(scope="module")
def evaluated(prepared, trained, tmp_path_factory):
    """A tracked evaluation, with predict spied on: {"dir", "metrics", "predicted"}."""
    d = tmp_path_factory.mktemp("rsna_evaluate")
    predicted = []
    real = ev.predict

    def spy(model, loader, device, *, bf16=True):
        out = real(model, loader, device, bf16=bf16)
        predicted.append((model.use_meta, out))
        return out

    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    mp.setattr(ev, "predict", spy)
    try:
        # the image-only checkpoint first: the metrics keep their own order whatever the input order
        ckpts = [str(trained["checkpoints"][v]) for v in reversed(VARIANTS)]
        metrics = ev.evaluate(
            _inputs(prepared, ckpts),
            _outputs(d, cams=True),
            _params(cams=CAMS),
            Job(threads=1, seed=SEED, rule="rsna_evaluate"),
        )
    finally:
        mp.undo()
    return {"dir": d, "metrics": metrics, "predicted": predicted}


def test_metrics_file_rows_and_predictions(evaluated, prepared):
    d, metrics = evaluated["dir"], evaluated["metrics"]
    assert json.loads((d / "metrics.json").read_text()) == metrics
    split = pd.read_csv(prepared / "split.csv", dtype={"patientId": str})
    test_ids = sorted(split.loc[split["split"] == "test", "patientId"])
    assert [k for k in metrics if k in VARIANTS] == list(VARIANTS)
    assert metrics["n_patients"] == len(test_ids) == 6 and metrics["n_excluded"] == 0
    preds = pd.read_csv(d / "predictions.csv", dtype={"patientId": str})
    assert sorted(preds["patientId"]) == test_ids
    assert list(preds.columns) == ["patientId", "target", "prob_with_metadata", "prob_image_only"]
    truth = dict(zip(split["patientId"], split["target"]))
    assert [truth[p] for p in preds["patientId"]] == preds["target"].tolist()
    for variant in VARIANTS:
        rep, p = metrics[variant], preds[f"prob_{variant}"]
        assert rep["n"] == 6 and rep["n_positive"] == preds["target"].sum() and p.between(0, 1).all()
        assert rep["accuracy"] == np.mean((p >= 0.5) == preds["target"])
    assert (d / "roc.png").stat().st_size > 0


def test_outputs_come_from_predict(evaluated):
    d, predicted = evaluated["dir"], evaluated["predicted"]
    preds = pd.read_csv(d / "predictions.csv")
    assert [use_meta for use_meta, _ in predicted] == [True, False]  # with_metadata, then image_only
    for variant, (_, out) in zip(VARIANTS, predicted):
        np.testing.assert_array_equal(preds[f"prob_{variant}"].to_numpy(np.float32), out["prob"])
        np.testing.assert_array_equal(preds["target"], out["target"])


def test_headline_is_the_auc_per_variant_with_a_patient_bootstrap(evaluated):
    metrics = evaluated["metrics"]
    head = metrics["headline"]
    assert headline_block(head) == head and set(head) == {"auc_with_metadata", "auc_image_only"}
    preds = pd.read_csv(evaluated["dir"] / "predictions.csv")
    y = preds["target"].to_numpy()
    for variant in VARIANTS:
        entry, p = head[f"auc_{variant}"], preds[f"prob_{variant}"].to_numpy(np.float64)
        assert entry["value"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert entry["value"] == metrics[variant]["auc"]
        assert entry["n"] == metrics["n_patients"] == 6
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
        # the documented resampling: one patient per row, job.seed, bootstrap_samples and confidence
        ref = bootstrap_metric(roc_auc_score, y, p, n_boot=N_BOOT, seed=SEED, level=LEVEL)
        assert (entry["ci_low"], entry["ci_high"]) == pytest.approx((ref["ci_low"], ref["ci_high"]), abs=1e-12)


def test_one_mlflow_run_links_both_training_runs(evaluated, trained):
    metrics = evaluated["metrics"]
    client = mlflow.MlflowClient(trained["uri"])
    run = client.get_run(metrics["mlflow_run_id"])
    train_ids = [trained["results"][v].run_id for v in VARIANTS]
    assert run.info.run_name == "rsna_evaluate" and run.data.tags["snakemake_rule"] == "rsna_evaluate"
    assert run.data.tags["training_run_id"] == ",".join(train_ids)
    assert [metrics[v]["training_run_id"] for v in VARIANTS] == train_ids
    for variant in VARIANTS:
        assert run.data.metrics[f"test_auc_{variant}"] == pytest.approx(metrics["headline"][f"auc_{variant}"]["value"])
        balanced = run.data.metrics[f"test_{variant}_balanced_accuracy"]
        assert balanced == pytest.approx(metrics[variant]["balanced_accuracy"])
    assert {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")} == {
        "evaluation/roc.png",
        "evaluation/predictions.csv",
    }


def test_cams_of_the_two_input_model_for_its_highest_scored_test_images_leave_the_metrics_alone(
    evaluated, prepared, trained, tmp_path
):
    d, metrics = evaluated["dir"], evaluated["metrics"]
    preds = pd.read_csv(d / "predictions.csv", dtype={"patientId": str})
    top = preds.sort_values("prob_with_metadata", ascending=False, kind="stable")["patientId"].iloc[:CAMS]
    assert sorted(p.name for p in (d / "cams").iterdir()) == sorted(f"{p}.png" for p in top)
    for p in (d / "cams").iterdir():
        assert np.asarray(Image.open(p).convert("L")).std() > 10, "an image with its map, not a blank PNG"
    plain = ev.evaluate(
        _inputs(prepared, [str(trained["checkpoints"][v]) for v in VARIANTS]),
        _outputs(tmp_path),
        _params(),
        Job(threads=1, seed=SEED, track=False),
    )
    assert {k: v for k, v in metrics.items() if k != "mlflow_run_id"} == plain
    assert (tmp_path / "predictions.csv").read_text() == (d / "predictions.csv").read_text()


def test_a_checkpoint_trained_on_other_features_is_an_input_error(prepared, trained, tmp_path):
    ckpt = torch.load(trained["checkpoints"]["with_metadata"], weights_only=True)
    ckpt["meta"]["meta_features"] = list(reversed(ckpt["meta"]["meta_features"]))  # same count, other order
    torch.save(ckpt, tmp_path / "reordered.pt")
    with pytest.raises(InputError, match="reordered.pt: trained on features"):
        ev.evaluate(
            _inputs(prepared, [tmp_path / "reordered.pt"]), _outputs(tmp_path), _params(), Job(threads=1, track=False)
        )
    assert not (tmp_path / "metrics.json").exists()


def test_two_checkpoints_of_one_variant_are_an_input_error(prepared, trained, tmp_path):
    path = trained["checkpoints"]["image_only"]
    with pytest.raises(InputError, match="a second checkpoint of variant image_only"):
        ev.evaluate(_inputs(prepared, [path, path]), _outputs(tmp_path), _params(), Job(threads=1, track=False))
