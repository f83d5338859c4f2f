"""Full-volume evaluation: metrics against a trivial predictor, predictions that overlay on the raw
images, the per-case table, and an MLflow run linked to its training run."""

import csv
import json

import h5py
import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch

from medflow import tracking
from medflow.segmentation import metrics, regions
from medflow.preprocess.patches import PatchParams, sample_case, standardize
from medflow.segmentation.evaluate import EvalParams, evaluate_unet3d, predict_case
from medflow.segmentation.train import UNetParams, train_unet3d
from medflow.train import load_checkpoint
from tests.segmentation.fakes import KEPT, ORIGINAL_ZYX, affine_for, make_case, write_stack

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def evaluated(dataset, tmp_path_factory):
    """Train (tracked in a scratch MLflow store), then evaluate on the two test cases."""
    out = tmp_path_factory.mktemp("seg")
    uri = f"sqlite:///{out}/mlflow.db"
    tracking.create_store(uri, ["brats_segmentation"])
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        train_unet3d(dataset["patches"], dataset["split"], out / "unet3d.pt", seed=3, threads=1, device=CPU,
                     params=UNetParams(depth=2, base_filters=4, batch_size=4, epochs=8, learning_rate=3e-3))
        result = evaluate_unet3d(out / "unet3d.pt", dataset["stacks"], dataset["split"], metrics_json=out / "metrics.json",
                                 per_case_csv=out / "per_case.csv", predictions_dir=out / "predictions",
                                 overlays_dir=out / "overlays", params=EvalParams(overlap=0.5, n_overlays=1),
                                 device=CPU)
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
        assert metrics.dice(regions.masks(stored)["WT"], truth > 0) == pytest.approx(data["per_case"][case]["WT"]["dice"])


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
    train, ev = runs["train_unet3d"], runs["evaluate_unet3d"]
    assert ev.data.tags["training_run_id"] == train.info.run_id == load_checkpoint(evaluated["out"] / "unet3d.pt")["mlflow_run_id"]
    assert {"depth", "base_filters", "learning_rate", "batch_size", "epochs", "dice_epsilon", "patch_size"} <= set(train.data.params)
    assert len(client.get_metric_history(train.info.run_id, "val_dice")) == 8
    assert ev.data.metrics["test_WT_dice"] == pytest.approx(evaluated["result"]["mean"]["WT"]["dice"])
    assert ev.data.tags["snakemake_rule"] == "evaluate_unet3d"
    arts = {a.path for a in client.list_artifacts(ev.info.run_id)}
    assert {"metrics.json", "per_case.csv", "overlays"} <= arts


class Recorder(torch.nn.Module):
    """Records what the network is fed; predicts nothing."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.clone())
        return torch.zeros(len(x), 3, *x.shape[2:]) + self.w


def test_windows_get_the_standardisation_the_training_patches_got(tmp_path):
    """A window at a patch's place is fed to the network exactly as the patch sampler wrote the patch."""
    image, label = make_case(0)
    write_stack(tmp_path / "stack.h5", "BraTS20_Training_001", image, label)
    stacked = image[:, KEPT[0] : KEPT[1]]
    size = list(stacked.shape[1:])  # one patch = the whole stacked volume = one window
    assert sample_case(tmp_path / "stack.h5", tmp_path / "patches.h5", PatchParams(patch_size=size, n_patches=1), seed=0) == 1
    with h5py.File(tmp_path / "patches.h5") as f:
        patch = f["image"][0]
    model = Recorder()
    predict_case(model, stacked, size, EvalParams(standardise="window"), CPU, bf16=False, standardize=standardize)
    assert len(model.inputs) == 1
    np.testing.assert_array_equal(model.inputs[0][0].numpy(), patch)
    # 'volume' standardises the whole volume's slices once, then cuts windows: here the same window.
    model.inputs.clear()
    predict_case(model, stacked, size, EvalParams(standardise="volume"), CPU, bf16=False, standardize=standardize)
    np.testing.assert_array_equal(model.inputs[0][0].numpy(), patch)
