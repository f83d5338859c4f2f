"""Slice P(HGG) come from one function, used by fit's validation, the evaluation and prediction on new cases."""

import hashlib
import json
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from medflow.errors import InputError
from medflow.grade.data import GradeSlices
from medflow.grade.model import build_resnet18, load_model
from medflow.grade.predict import (
    PredictParams,
    cam_layer,
    pair_cases,
    predict_case,
    predict_new,
    predict_slices,
    save_case_cam,
)
from medflow.grade.slices import SliceParams
from medflow.ingest import releases
from medflow.preprocess.stack import read_stack
from medflow.segmentation.predict import predicted_labels, uncrop, write_nifti
from medflow.train import Job, load_checkpoint
from tests.grade.conftest import STACK_PREP


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


# --- prediction on new cases (brats_grade_predict) --------------------------------------------------------------

SEG_META = {"pipeline": "brats_segmentation", "preprocessing": {**STACK_PREP, "patches": {"size": [8, 16, 16]}}}


def _seg_checkpoint(path, meta=SEG_META):
    torch.save({"state_dict": {}, "epoch": 1, "meta": meta, "mlflow_run_id": "seg-run"}, path)
    return path


def _submission(stack_path, out, label=None):
    """The segmentation predict stage's output for a stacked case: ``label`` (stored, stack grid; default the
    case's true label) in the raw grid and the release's labels (4 for the enhancing tumour)."""
    stack = read_stack(stack_path)
    stored = stack.label if label is None else label
    raw = releases.get(stack.release).from_stored(uncrop(stored, stack.kept_z_range, stack.original_shape_zyx))
    write_nifti(raw, stack.affine, out)
    return out


def _evaluation_slices(run):
    """Evaluation's slice P(HGG) as predict returned them (float32, not the CSV's 6 decimals), per case."""
    prob, _, _ = run["calls"][-1]["out"]
    table = pd.read_csv(run["tmp"] / "slice_predictions.csv")
    return {case: (rows["z"].to_numpy(), prob[rows.index.to_numpy()]) for case, rows in table.groupby("id")}


@pytest.fixture(scope="module")
def predicted(run, cases, tmp_path_factory):
    """brats_grade_predict over the test cases, each with its TRUE label as the "predicted" segmentation, plus
    one case whose segmentation has the wrong grid and one with no tumour predicted; MLflow on."""
    import mlflow  # noqa: F401

    stacks, _ = cases
    tmp = tmp_path_factory.mktemp("gradepredict")
    test_ids = sorted(run["split"].query("split == 'test'")["id"])
    (tmp / "stack").mkdir()
    (tmp / "seg").mkdir()
    stack_files, segs = [], []
    for case in test_ids:
        stack_files.append(stacks[case])
        segs.append(_submission(stacks[case], tmp / "seg" / f"{case}.nii.gz"))
    train_id = sorted(run["split"].query("split == 'train'")["id"])[0]
    for name, label in (("New_001", "empty"), ("New_002", "bad_grid")):
        stack_files.append(shutil.copy(stacks[train_id], tmp / "stack" / f"{name}.h5"))
        lab = np.zeros_like(read_stack(stacks[train_id]).label)
        if label == "empty":
            segs.append(_submission(stack_files[-1], tmp / "seg" / f"{name}.nii.gz", lab))
        else:
            write_nifti(lab[:, :-2], np.eye(4), tmp / "seg" / f"{name}.nii.gz")
            segs.append(tmp / "seg" / f"{name}.nii.gz")
    inputs = {
        "stacks": stack_files,
        "segmentations": segs,
        "checkpoint": run["tmp"] / "model.pt",
        "segmentation_checkpoint": _seg_checkpoint(tmp / "seg.pt"),
    }
    outputs = {k: tmp / "out" / v for k, v in OUTPUTS.items()}
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", run["uri"])
    try:
        summary = predict_new(inputs, outputs, PARAMS, Job(threads=1, bf16=False, rule="brats_grade_predict"))
    finally:
        mp.undo()
    return {"inputs": inputs, "outputs": outputs, "summary": summary, "test_ids": test_ids, "tmp": tmp}


OUTPUTS = {
    "predictions": "predictions.csv",
    "excluded": "excluded.csv",
    "cams": "cams",
    "summary": "summary.json",
    "lineage": "lineage.json",
}
PARAMS = PredictParams(aggregate="max", threshold=0.5, batch_size=5, cams=2)  # the run fixture evaluates with max


def test_a_labelled_case_through_the_predict_path_gives_evaluations_slice_probabilities(run, cases):
    stacks, _ = cases
    ckpt = load_checkpoint(run["tmp"] / "model.pt")
    model = load_model(ckpt)
    params = SliceParams(**ckpt["meta"]["preprocessing"]["slices"])
    evaluated = _evaluation_slices(run)
    assert len(evaluated) == 6
    for case, (z, prob) in evaluated.items():
        stack = read_stack(stacks[case])
        # Another batch size than evaluation's 16: each slice's probability must not depend on its batch.
        pred = predict_case(model, stack.image, stack.label, params, torch.device("cpu"), batch_size=2, bf16=False)
        assert pred.z.tolist() == z.tolist()
        np.testing.assert_allclose(pred.prob, prob, rtol=0, atol=1e-6)


def test_predicting_with_the_true_label_reproduces_evaluations_patient_probabilities(run, predicted):
    patients = pd.read_csv(run["tmp"] / "patients.csv").set_index("id")
    out = pd.read_csv(predicted["outputs"]["predictions"]).set_index("case")
    assert out.index.tolist() == predicted["test_ids"] == patients.index.tolist()
    np.testing.assert_allclose(out["p_hgg"], patients["prob_hgg"], rtol=0, atol=1e-6)
    assert out["label"].tolist() == patients["pred"].tolist() and (out["n_slices"] == 3).all()


def test_bad_and_tumour_free_cases_are_excluded_with_their_reason(predicted):
    excluded = pd.read_csv(predicted["outputs"]["excluded"]).set_index("case")["reason"]
    assert excluded.index.tolist() == ["New_001", "New_002"]
    assert excluded["New_001"] == "no slice with >= 5 predicted tumour pixels"
    assert excluded["New_002"].startswith(str(predicted["tmp"] / "seg" / "New_002.nii.gz") + ": (Z, Y, X)")
    summary = json.loads(predicted["outputs"]["summary"].read_text())
    assert summary == predicted["summary"]
    assert summary["n_predicted"] == 6 and summary["n_excluded"] == 2
    out = pd.read_csv(predicted["outputs"]["predictions"])
    assert summary["class_mix"] == {c: int((out["label"] == c).sum()) for c in ("HGG", "LGG")}


def test_prediction_cams_lineage_and_mlflow_run(run, predicted):
    outputs, summary = predicted["outputs"], predicted["summary"]
    pngs = sorted(p.name for p in outputs["cams"].glob("*.png"))
    assert pngs == [f"{c}.png" for c in predicted["test_ids"][:2]]
    assert summary["figures"] == [str(outputs["cams"] / p) for p in pngs]
    lineage = json.loads(outputs["lineage"].read_text())
    models = {m["name"]: m for m in lineage["models"]}
    grade_path = predicted["inputs"]["checkpoint"]
    assert models["grade"]["sha256"] == hashlib.sha256(grade_path.read_bytes()).hexdigest()
    assert models["grade"]["training_run_id"] == load_checkpoint(grade_path)["mlflow_run_id"]
    assert models["segmentation"]["training_run_id"] == "seg-run" and lineage["rule"] == "brats_grade_predict"
    client = mlflow.MlflowClient(run["uri"])
    exp = client.get_experiment_by_name("brats_grade")
    (pr,) = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "brats_grade_predict"]
    assert pr.data.tags["training_run_id.grade"] == models["grade"]["training_run_id"]
    assert pr.data.tags["checkpoint_sha256.segmentation"] == models["segmentation"]["sha256"]
    assert pr.data.metrics["n_predicted"] == 6 and pr.data.metrics["n_excluded"] == 2


def test_cam_maps_of_the_trained_model_vary_over_the_slice(run, cases, tmp_path):
    stacks, _ = cases
    ckpt = load_checkpoint(run["tmp"] / "model.pt")
    model = load_model(ckpt)
    params = SliceParams(**ckpt["meta"]["preprocessing"]["slices"])
    case = sorted(run["split"].query("split == 'test' and grade == 'HGG'")["id"])[0]
    stack = read_stack(stacks[case])
    pred = predict_case(model, stack.image, stack.label, params, torch.device("cpu"), batch_size=4, bf16=False)
    maps = save_case_cam(model, pred.x, pred.prob, pred.z, tmp_path / "cam.png", title=case)
    assert maps.shape == (3, 64, 64) and (tmp_path / "cam.png").stat().st_size > 2000
    assert maps.min() >= 0 and maps.max() <= 1
    # MONAI scales each map to [0, 1], which turns float noise over a spatially constant map (a 1 x 1 layer) into
    # a plateau with a few 0/1 speckles: a real map varies over the slice as a whole (its interquartile range).
    for m in maps:
        iqr = np.percentile(m, 75) - np.percentile(m, 25)
        assert np.ptp(m) > 0.5 and iqr > 0.05, (np.ptp(m), iqr)


def test_a_segmentation_checkpoint_is_refused_as_the_grade_model(run, predicted, tmp_path):
    inputs = {**predicted["inputs"], "checkpoint": predicted["inputs"]["segmentation_checkpoint"]}
    outputs = {k: tmp_path / v for k, v in OUTPUTS.items()}
    with pytest.raises(InputError, match="checkpoint of pipeline 'brats_segmentation', not 'brats_grade'") as err:
        predict_new(inputs, outputs, PARAMS, Job(threads=1, bf16=False, track=False))
    assert err.value.path == str(inputs["checkpoint"]) and not outputs["predictions"].exists()
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(InputError, match="junk.pt: not a readable checkpoint"):
        predict_new({**inputs, "checkpoint": tmp_path / "junk.pt"}, outputs, PARAMS, Job(threads=1, track=False))


def test_stacks_made_with_other_preprocessing_are_refused_naming_the_difference(predicted, tmp_path):
    meta = {**SEG_META, "preprocessing": {**SEG_META["preprocessing"], "trim": {"margin": 2}}}
    inputs = {**predicted["inputs"], "segmentation_checkpoint": _seg_checkpoint(tmp_path / "seg.pt", meta)}
    with pytest.raises(InputError, match=r"stack\.trim\.margin: checkpoint 0, inputs 2"):
        predict_new(inputs, {k: tmp_path / v for k, v in OUTPUTS.items()}, PARAMS, Job(threads=1, track=False))


def test_no_readable_case_is_one_clear_error(predicted, tmp_path):
    bad = tmp_path / "New_009.h5"
    bad.write_text("not hdf5")
    seg = shutil.copy(predicted["inputs"]["segmentations"][0], tmp_path / "New_009.nii.gz")
    inputs = {**predicted["inputs"], "stacks": [bad], "segmentations": [seg]}
    with pytest.raises(InputError, match="no readable case: .*New_009.h5: cannot open as HDF5"):
        predict_new(inputs, {k: tmp_path / v for k, v in OUTPUTS.items()}, PARAMS, Job(threads=1, track=False))


def test_case_ids_that_cannot_name_a_file_are_refused(tmp_path):
    with pytest.raises(InputError, match="case id '.hidden' cannot name an output file"):
        pair_cases([tmp_path / ".hidden.h5"], [tmp_path / ".hidden.nii.gz"])
    with pytest.raises(InputError, match="New_002.nii.gz: is not the predicted segmentation of case New_001"):
        pair_cases([tmp_path / "New_001.h5"], [tmp_path / "New_002.nii.gz"])
    pairs = pair_cases([tmp_path / "B.h5", tmp_path / "A.h5"], [tmp_path / "B-seg.nii.gz", tmp_path / "A.nii"])
    assert pairs == {
        "A": (str(tmp_path / "A.h5"), str(tmp_path / "A.nii")),
        "B": (str(tmp_path / "B.h5"), str(tmp_path / "B-seg.nii.gz")),
    }


def test_the_submission_is_read_back_as_the_stacks_stored_label(cases, tmp_path):
    stacks, _ = cases
    path = next(iter(stacks.values()))
    stack = read_stack(path)
    assert stack.kept_z_range[0] > 0 and (stack.label == 3).any()  # the trim and the 4 <-> 3 mapping both matter
    back = predicted_labels(_submission(path, tmp_path / "seg.nii.gz"), stack)
    assert back.dtype == np.uint8 and np.array_equal(back, stack.label)


def test_cams_come_from_the_last_block_with_a_spatial_map():
    assert cam_layer(240) == cam_layer(64) == "layer4"  # 7 x 7 and 2 x 2
    assert cam_layer(63) == cam_layer(32) == "layer3" and cam_layer(16) == "layer2"
