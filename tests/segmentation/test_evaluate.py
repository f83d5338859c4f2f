"""Full-volume evaluation: metrics against a trivial predictor, the headline block with bootstrap
intervals, predictions that come from predict.predict_case and overlay on the raw images, the threshold
read from the checkpoint, the per-case table, and an MLflow run linked to its training run."""

import csv
import json

import h5py
import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch

from medflow import tracking
from medflow.errors import InputError
from medflow.evaluation.headline import Bootstrap, headline_block, mean_metric
from medflow.segmentation import metrics, predict, regions
from medflow.segmentation.evaluate import EvalParams, evaluate, headline
from medflow.segmentation.train import UNetParams, train
from medflow.train import Job, load_checkpoint
from tests.segmentation.fakes import KEPT, ORIGINAL_ZYX, affine_for

CPU = torch.device("cpu")
BOOT = {"bootstrap_samples": 200, "confidence": 0.9}


def outputs(out):
    return {
        "metrics": out / "metrics.json",
        "per_case": out / "per_case.csv",
        "predictions": out / "predictions",
        "overlays": out / "overlays",
    }


def inputs(dataset, checkpoint):
    return {"checkpoint": checkpoint, "stacks": dataset["stacks"], "split": dataset["split"]}


@pytest.fixture(scope="module")
def evaluated(dataset, tmp_path_factory):
    """Train (tracked in a scratch MLflow store), then evaluate on the two test cases."""
    out = tmp_path_factory.mktemp("seg")
    uri = f"sqlite:///{out}/mlflow.db"
    tracking.create_store(uri, ["brats_segmentation"])
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        train(
            {"patches": dataset["patches"], "split": dataset["split"]},
            {"checkpoint": out / "unet3d.pt"},
            UNetParams(depth=2, base_filters=4, batch_size=4, epochs=8, learning_rate=3e-3),
            Job(threads=1, seed=3, rule="brats_segmentation_train"),
            device=CPU,
        )
        result = evaluate(
            inputs(dataset, out / "unet3d.pt"),
            outputs(out),
            EvalParams(overlap=0.5, n_overlays=1, bootstrap=Bootstrap(**BOOT)),
            Job(threads=1, seed=5, rule="brats_segmentation_evaluate"),
            device=CPU,
        )
    finally:
        mp.undo()
    return {"out": out, "uri": uri, "result": result}


def test_metrics_file_has_regions_labels_and_baselines(evaluated, dataset):
    data = json.loads((evaluated["out"] / "metrics.json").read_text())
    assert data == json.loads(json.dumps(evaluated["result"]))
    assert sorted(data["per_case"]) == dataset["splits"]["test"]  # test cases only
    for name in ("WT", "TC", "ET", "label_1", "label_2", "label_4"):
        assert 0 <= data["mean"][name]["dice"] <= 1 and data["mean"][name]["hd95"] >= 0
    base = data["baselines"]
    assert base["all_background"]["mean"]["WT"]["dice"] == 0.0  # every test case has a tumour
    # The trained model beats both trivial predictors clearly.
    assert data["mean"]["WT"]["dice"] > base["all_foreground_in_brain"]["mean"]["WT"]["dice"] + 0.3
    assert data["params"]["threshold"] == 0.5 and data["params"]["bootstrap"] == BOOT  # threshold: training's


def test_headline_is_the_mean_over_test_cases_with_a_bootstrap_interval(evaluated, dataset):
    data = json.loads((evaluated["out"] / "metrics.json").read_text())
    head = headline_block(data["headline"])
    assert list(head) == ["dice_wt", "dice_tc", "dice_et", "hd95_wt"]
    per_case = [data["per_case"][c] for c in dataset["splits"]["test"]]
    for name, (structure, metric) in {
        "dice_wt": ("WT", "dice"),
        "dice_tc": ("TC", "dice"),
        "dice_et": ("ET", "dice"),
        "hd95_wt": ("WT", "hd95"),
    }.items():
        entry = head[name]
        by_hand = sum(r[structure][metric] for r in per_case) / len(per_case)
        assert entry["value"] == pytest.approx(by_hand, abs=1e-12) and entry["value"] == data["mean"][structure][metric]
        assert entry["n"] == len(dataset["splits"]["test"]) == 2
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
        # Two cases: every resample is one case twice or both, so the 90% interval spans the two cases' values.
        assert entry["ci_low"] == min(r[structure][metric] for r in per_case)
        assert entry["ci_high"] == max(r[structure][metric] for r in per_case)


def test_headline_bootstraps_cases_with_the_configured_samples_seed_and_confidence():
    rng = np.random.default_rng(0)
    per_case = {
        f"BraTS20_Training_{i:03d}": {
            s: {"dice": float(rng.uniform()), "hd95": float(rng.uniform(0, 9))} for s in regions.STRUCTURES
        }
        for i in range(12)
    }
    head = headline(per_case, Bootstrap(300, 0.8), seed=11)
    wt = [r["WT"]["hd95"] for r in per_case.values()]
    assert head["hd95_wt"] == mean_metric(wt, n_boot=300, seed=11, level=0.8)
    assert head["hd95_wt"]["n"] == 12 and head["hd95_wt"]["value"] == float(np.mean(wt))
    wider = headline(per_case, Bootstrap(300, 0.95), seed=11)["hd95_wt"]
    assert wider["ci_low"] < head["hd95_wt"]["ci_low"] < head["hd95_wt"]["ci_high"] < wider["ci_high"]
    assert headline(per_case, Bootstrap(300, 0.8), seed=12)["dice_et"] != head["dice_et"]


def test_predictions_overlay_on_the_raw_geometry_and_match_the_metrics(evaluated, dataset):
    out, data = evaluated["out"], evaluated["result"]
    for case in dataset["splits"]["test"]:
        img = nib.load(out / "predictions" / f"{case}.nii.gz")
        pred_xyz = np.asarray(img.dataobj)
        assert pred_xyz.shape == ORIGINAL_ZYX[::-1] and img.get_data_dtype() == np.uint8
        np.testing.assert_allclose(img.affine, affine_for())
        assert set(np.unique(pred_xyz)) <= {0, 1, 2, 4}
        pred_zyx = pred_xyz.transpose(2, 1, 0)
        assert not pred_zyx[: KEPT[0]].any() and not pred_zyx[KEPT[1] :].any()
        with h5py.File(dataset["stacks"][case]) as f:
            truth = f["label"][()]
        stored = regions.to_stored(pred_zyx[KEPT[0] : KEPT[1]])
        wt = metrics.dice(regions.masks(stored)["WT"], truth > 0)
        assert wt == pytest.approx(data["per_case"][case]["WT"]["dice"])


def test_predictions_come_from_predict_case_with_the_checkpoint_threshold(evaluated, dataset, tmp_path, monkeypatch):
    """Evaluation predicts every test case through predict.predict_case with the checkpoint's window and
    threshold (none is configured for evaluation), and what it returns is what is scored and written."""
    ckpt = load_checkpoint(evaluated["out"] / "unet3d.pt")
    ckpt["meta"]["threshold"] = 0.7
    torch.save(ckpt, tmp_path / "t07.pt")
    calls = []
    real = predict.predict_case

    def spy(model, image, window, params, **kw):
        pred = real(model, image, window, params, **kw)
        calls.append((window, kw["threshold"], pred))
        return pred

    monkeypatch.setattr(predict, "predict_case", spy)
    result = evaluate(
        inputs(dataset, tmp_path / "t07.pt"),
        outputs(tmp_path),
        EvalParams(n_overlays=0, bootstrap=Bootstrap(**BOOT)),
        Job(threads=1, track=False),
        device=CPU,
    )
    assert [(w, t) for w, t, _ in calls] == [([8, 16, 16], 0.7)] * 2 and result["params"]["threshold"] == 0.7
    for case, (_, _, pred) in zip(dataset["splits"]["test"], calls):
        written = np.asarray(nib.load(tmp_path / "predictions" / f"{case}.nii.gz").dataobj).transpose(2, 1, 0)
        assert np.array_equal(regions.to_stored(written[KEPT[0] : KEPT[1]]), pred)
        with h5py.File(dataset["stacks"][case]) as f:
            truth = f["label"][()]
        assert result["per_case"][case]["ET"]["dice"] == metrics.dice(pred == 3, truth == 3)
    # A higher threshold labels fewer voxels than training's 0.5 did.
    assert sum((p > 0).sum() for _, _, p in calls) < sum(
        (regions.to_stored(np.asarray(nib.load(evaluated["out"] / "predictions" / f"{c}.nii.gz").dataobj)) > 0).sum()
        for c in dataset["splits"]["test"]
    )


def test_checkpoint_without_a_threshold_is_refused(evaluated, dataset, tmp_path):
    ckpt = load_checkpoint(evaluated["out"] / "unet3d.pt")
    del ckpt["meta"]["threshold"]
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(InputError, match="old.pt: not a U-Net checkpoint .*meta lacks threshold"):
        evaluate(inputs(dataset, tmp_path / "old.pt"), outputs(tmp_path), EvalParams(), Job(track=False), device=CPU)


def test_per_case_table_and_overlays(evaluated, dataset):
    out = evaluated["out"]
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    assert [r["case"] for r in rows] == dataset["splits"]["test"]
    assert {"WT_dice", "WT_hd95", "ET_hd95", "label_2_dice", "baseline_all_foreground_in_brain_WT_dice"} <= set(rows[0])
    assert float(rows[0]["WT_dice"]) == pytest.approx(evaluated["result"]["per_case"][rows[0]["case"]]["WT"]["dice"])
    pngs = list((out / "overlays").glob("*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:4] == b"\x89PNG"


def test_mlflow_evaluation_run_is_linked_to_the_training_run(evaluated):
    client = mlflow.MlflowClient(evaluated["uri"])
    exp = client.get_experiment_by_name("brats_segmentation")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    train_run, ev = runs["brats_segmentation_train"], runs["brats_segmentation_evaluate"]
    ckpt = load_checkpoint(evaluated["out"] / "unet3d.pt")
    assert ev.data.tags["training_run_id"] == train_run.info.run_id == ckpt["mlflow_run_id"]
    hyper = {"depth", "base_filters", "learning_rate", "batch_size", "epochs", "dice_epsilon", "patch_size"}
    assert hyper <= set(train_run.data.params)
    assert len(client.get_metric_history(train_run.info.run_id, "val_dice")) == 8
    result = evaluated["result"]
    assert ev.data.metrics["test_dice_wt"] == pytest.approx(result["headline"]["dice_wt"]["value"])
    assert ev.data.metrics["test_hd95_wt_ci_high"] == pytest.approx(result["headline"]["hd95_wt"]["ci_high"])
    assert ev.data.metrics["test_WT_dice"] == pytest.approx(result["mean"]["WT"]["dice"])
    assert ev.data.metrics["test_baseline_all_background_WT_dice"] == 0.0
    assert ev.data.params["threshold"] == "0.5"
    assert ev.data.tags["snakemake_rule"] == "brats_segmentation_evaluate"
    arts = {a.path for a in client.list_artifacts(ev.info.run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/per_case.csv", "evaluation/overlays"} <= arts
