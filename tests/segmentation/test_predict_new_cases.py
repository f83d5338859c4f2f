"""Prediction on new, unlabeled BraTS cases: the training cases' preprocessing and evaluation's sliding window
(a labelled case gives evaluation's labels exactly), the submission format of each release, the volumes, the
refusal of a checkpoint of another pipeline or preprocessing, and one error naming the file of a bad case."""

from __future__ import annotations

import json
import shutil

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from medflow import tracking
from medflow.errors import InputError
from medflow.evaluation.headline import Bootstrap
from medflow.ingest import brats, releases
from medflow.preprocess.n4 import N4Params, correct_case
from medflow.preprocess.patches import PatchParams, sample_case
from medflow.preprocess.stack import StackParams, read_stack, stack_case
from medflow.preprocess.trim import trim_range
from medflow.segmentation import predict
from medflow.segmentation.evaluate import EvalParams, evaluate
from medflow.segmentation.model import make_model
from medflow.segmentation.train import UNetParams, train
from medflow.synthetic import brats as sb
from medflow.train import Job, load_checkpoint
from tests.segmentation.fakes import write_split

CPU = torch.device("cpu")
CFG = {"n_cases": 4, "shape_xyz": [32, 32, 24], "blank_slices": [1, 3], "predict": {"n_cases": 2}}
N4 = {"shrink_factor": 2, "iterations": [10, 10], "convergence_threshold": 0.001, "histogram_bins": 200,
      "otsu_bins": 200, "control_points": 4}  # fmt: skip
PRE = predict.preprocessing_record(N4, {"margin": 0})
WINDOW = predict.PredictParams(overlap=0.5, standardise="window", batch_size=2, blend="gaussian")
JOB = Job(threads=1, seed=0, track=False)
R2020 = releases.get("2020")


def preprocess_as_training(raw, case, out, release):
    """One labelled case through the training stages' functions, as brats.smk chains them."""
    info = brats.validate_case(raw, case, release=release)
    corrected = {m: str(out / f"{case}_{m}.nii.gz") for m in brats.MODALITIES}
    correct_case({m: info["files"][m] for m in brats.MODALITIES}, corrected, N4Params(**N4))
    trim = trim_range(list(corrected.values()), 0, label_path=info["files"]["seg"])
    stack = out / f"{case}.h5"
    stack_case(
        case,
        corrected,
        info["files"]["seg"],
        trim["kept_z_range"],
        stack,
        StackParams(),
        affine=info["affine"],
        source_files=[info["source_files"][k] for k in (*brats.MODALITIES, "seg")],
        release=release,
    )
    return stack


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Four synthetic 2020 training cases preprocessed as the workflow does, a U-Net trained on two of them
    (eight epochs: a mixed label map, with probabilities near the threshold) and evaluated on the test case."""
    root = tmp_path_factory.mktemp("predict")
    raw = root / "MICCAI_BraTS2020_TrainingData"
    sb.generate(CFG, raw, seed=11)
    cases = sb.case_ids(CFG)
    work = root / "work"
    work.mkdir()
    stacks, patches = {}, {}
    for case in cases:
        stacks[case] = preprocess_as_training(raw, case, work, releases.get("2020"))
        patches[case] = work / f"patches_{case}.h5"
        sample_case(stacks[case], patches[case], PatchParams(patch_size=[8, 16, 16], n_patches=4), seed=1)
    splits = {"train": cases[:2], "val": cases[2:3], "test": cases[3:]}
    write_split(root / "split.csv", splits)
    checkpoint = root / "model.pt"
    train(
        {"patches": {c: str(p) for c, p in patches.items()}, "split": root / "split.csv"},
        {"checkpoint": checkpoint},
        UNetParams(depth=2, base_filters=4, batch_size=4, epochs=8, learning_rate=3e-3),
        Job(threads=1, seed=3, track=False),
        device=CPU,
        preprocessing=PRE,
    )
    evaluated = root / "evaluate"
    evaluate(
        {"checkpoint": checkpoint, "stacks": {c: str(p) for c, p in stacks.items()}, "split": root / "split.csv"},
        {
            "metrics": evaluated / "metrics.json",
            "per_case": evaluated / "per_case.csv",
            "predictions": evaluated / "predictions",
            "overlays": evaluated / "overlays",
        },
        EvalParams(**vars(WINDOW), n_overlays=0, bootstrap=Bootstrap(bootstrap_samples=100)),
        Job(threads=1, seed=5, track=False),
        device=CPU,
    )
    return {"root": root, "raw": raw, "stacks": stacks, "test": cases[3], "checkpoint": checkpoint, "eval": evaluated}


def outputs(out, case, release):
    return {
        "submission": out / "submission" / f"{case}{release.submission_suffix}",
        "stack": out / "stack" / f"{case}.h5",
        "case": out / "cases" / f"{case}.json",
    }


def run_predict(input_dir, case, out, checkpoint, release=R2020, preprocessing=PRE):
    outs = outputs(out, case, release)
    doc = predict.predict_new_case(
        input_dir,
        case,
        outs,
        checkpoint=checkpoint,
        params=WINDOW,
        preprocessing=preprocessing,
        release=release,
        job=JOB,
        device=CPU,
    )
    return outs, doc


def test_training_records_the_pipeline_and_preprocessing(trained):
    meta = load_checkpoint(trained["checkpoint"])["meta"]
    assert meta["pipeline"] == "brats_segmentation"
    assert meta["preprocessing"] == PRE
    assert meta["preprocessing"]["n4"]["iterations"] == [10, 10] and meta["preprocessing"]["trim"] == {"margin": 0}


def test_labelled_case_through_the_predict_path_equals_evaluation(trained, tmp_path):
    """The test case, its seg ignored, gives evaluation's stack and evaluation's label map voxel for voxel."""
    case = trained["test"]
    outs, doc = run_predict(trained["raw"], case, tmp_path, trained["checkpoint"])
    ours, theirs = read_stack(outs["stack"], with_label=False), read_stack(trained["stacks"][case])
    assert np.array_equal(ours.image, theirs.image), "the same N4, trim and stack as training"
    assert ours.kept_z_range == theirs.kept_z_range and np.array_equal(ours.affine, theirs.affine)
    mine = np.asarray(nib.load(outs["submission"]).dataobj)
    evaluation = np.asarray(nib.load(trained["eval"] / "predictions" / f"{case}.nii.gz").dataobj)
    assert np.array_equal(mine, evaluation)
    assert len(np.unique(mine)) > 1, "a label map with tumour labels, not a trivially equal empty one"
    assert doc["kept_z_range"] == list(theirs.kept_z_range)
    # The stack and the written labels give back the stored map in the stack's grid (what the grade model reads).
    stored = predict.predicted_labels(outs["submission"], ours)
    assert np.array_equal(releases.get("2020").from_stored(stored), mine.transpose(2, 1, 0)[slice(*ours.kept_z_range)])


def constant_checkpoint(path, stored_label, preprocessing=PRE, pipeline="brats_segmentation"):
    """A U-Net whose every voxel is ``stored_label`` (1-3) with probability ~1: known outputs."""
    model = make_model(UNetParams(depth=2, base_filters=2), channels_last=False)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([-20.0, -20.0, -20.0]))
        model.head.bias[stored_label - 1] = 20.0
    meta = {"pipeline": pipeline, "model": model.config, "patch_size": [8, 16, 16], "threshold": 0.5}
    if preprocessing is not None:
        meta["preprocessing"] = preprocessing
    torch.save({"state_dict": model.state_dict(), "epoch": 1, "meta": meta, "mlflow_run_id": "run-xyz"}, path)
    return path


@pytest.fixture(scope="module")
def new_sets(tmp_path_factory):
    """The synthetic unlabeled set of 2020 and of 2023-GLI (two cases each)."""
    root = tmp_path_factory.mktemp("new")
    out = {}
    for name in ("2020", "2023-gli"):
        release = releases.get(name)
        folder = root / name / release.validation_subdir
        sb.generate_predict({**CFG, "release": name}, folder, seed=4)
        out[name] = folder
    return out


@pytest.mark.parametrize("name", ["2020", "2023-gli"])
def test_submission_is_in_the_raw_grid_header_and_release_labels(new_sets, tmp_path, name):
    """A model of enhancing tumour everywhere (stored 3): the file holds the release's ET value (2020: 4,
    2023-GLI: 3) in the brain and 0 elsewhere, uint8, with the raw flair's shape, affine and qform/sform codes."""
    release = releases.get(name)
    folder = new_sets[name]
    case = brats.discover_predict_cases(folder, release=release)[0]
    outs, doc = run_predict(folder, case, tmp_path, constant_checkpoint(tmp_path / "et.pt", 3), release)
    assert outs["submission"].name == f"{case}.nii.gz"
    raw = nib.load(folder / case / release.file_name(case, "flair"))
    sub = nib.load(outs["submission"])
    data = np.asarray(sub.dataobj)
    assert sub.get_data_dtype() == np.uint8 and data.dtype == np.uint8
    assert data.shape == raw.shape
    np.testing.assert_array_equal(sub.affine, raw.affine)
    for code in ("qform_code", "sform_code"):
        assert int(sub.header[code]) == int(raw.header[code])
    assert set(np.unique(data)) <= set(release.label_values)
    # Every brain voxel (signal in some modality) is ET, in the release's value; nothing else is labelled.
    et = release.labels["enhancing"]
    brain = np.any([np.asarray(nib.load(folder / case / release.file_name(case, m)).dataobj) != 0 for m in
                    brats.MODALITIES], axis=0)  # fmt: skip
    assert np.array_equal(data, np.where(brain, et, 0))
    start, stop = doc["kept_z_range"]
    assert not brain[:, :, :start].any() and not brain[:, :, stop:].any() and brain[:, :, start].any()
    assert 0 < start or stop < raw.shape[2], "the synthetic volumes have blank slices to trim"
    vol, n = doc["volumes"], int(brain.sum())
    assert vol["ET"]["voxels"] == vol["TC"]["voxels"] == vol["WT"]["voxels"] == n
    assert vol[f"label_{et}"] == {"part": "enhancing", "voxels": n, "mm3": n * 1.0, "ml": n / 1000}
    assert doc["labels"] == [0, et]


def test_label_volumes_in_mm3_and_ml_per_region_and_release_label():
    stored = np.zeros((4, 5, 6), np.uint8)
    stored[0, :2, :3] = 1  # 6 voxels necrotic
    stored[1, :, :] = 2  # 30 oedema
    stored[2, 0, :4] = 3  # 4 enhancing
    vol = predict.label_volumes(stored, (2.0, 1.0, 0.5), releases.get("2020"))  # 1 mm^3 voxels
    assert {k: v["voxels"] for k, v in vol.items()} == {
        "WT": 40,
        "TC": 10,
        "ET": 4,
        "label_1": 6,
        "label_2": 30,
        "label_4": 4,
    }
    assert vol["WT"]["mm3"] == 40.0 and vol["WT"]["ml"] == pytest.approx(0.04)
    gli = predict.label_volumes(stored, (1.0, 1.0, 1.0), releases.get("2023-gli"))
    assert gli["label_3"] == {"part": "enhancing", "voxels": 4, "mm3": 4.0, "ml": 0.004}


def test_checkpoint_of_another_pipeline_is_refused(tmp_path, new_sets):
    ckpt = constant_checkpoint(tmp_path / "grade.pt", 2, pipeline="brats_grade")
    with pytest.raises(InputError, match="pipeline 'brats_grade', not 'brats_segmentation'") as err:
        run_predict(new_sets["2020"], "BraTS20_Validation_001", tmp_path, ckpt)
    assert err.value.path == str(ckpt)
    assert not (tmp_path / "submission").exists()


@pytest.mark.parametrize(
    "change,difference",
    [
        ({"n4": {**N4, "shrink_factor": 4}}, "n4.shrink_factor: checkpoint 4, inputs 2"),
        ({"n4": {**N4, "iterations": [50, 50]}}, "n4.iterations: checkpoint [50, 50], inputs [10, 10]"),
        ({"trim": {"margin": 2}}, "trim.margin: checkpoint 2, inputs 0"),
    ],
)
def test_checkpoint_of_other_preprocessing_is_refused_naming_the_difference(tmp_path, change, difference):
    other = predict.preprocessing_record(**{"n4": N4, "trim": {"margin": 0}, **change})
    ckpt = constant_checkpoint(tmp_path / "other.pt", 2, preprocessing=other)
    with pytest.raises(InputError, match="preprocessing differs") as err:
        predict.load_unet_checkpoint(ckpt, preprocessing=PRE)
    assert difference in str(err.value) and str(err.value).count(": checkpoint ") == 1
    predict.load_unet_checkpoint(ckpt, preprocessing=other)  # its own preprocessing: accepted


def test_checkpoint_without_a_preprocessing_record_is_refused(tmp_path):
    ckpt = constant_checkpoint(tmp_path / "old.pt", 2, preprocessing=None)
    with pytest.raises(InputError, match="records no preprocessing"):
        predict.load_unet_checkpoint(ckpt, preprocessing=PRE)
    assert predict.load_unet_checkpoint(ckpt)["meta"]["threshold"] == 0.5  # evaluation does not ask for it


def test_a_case_missing_a_modality_fails_alone_naming_the_file(new_sets, tmp_path):
    folder = shutil.copytree(new_sets["2020"], tmp_path / "in")
    (folder / "BraTS20_Validation_001" / "BraTS20_Validation_001_t1ce.nii").unlink()
    ckpt = constant_checkpoint(tmp_path / "c.pt", 1)
    with pytest.raises(InputError) as err:
        run_predict(folder, "BraTS20_Validation_001", tmp_path / "a", ckpt)
    assert len(err.value.errors) == 1
    assert err.value.path.endswith("BraTS20_Validation_001_t1ce.nii") and "missing t1ce modality" in str(err.value)
    run_predict(folder, "BraTS20_Validation_002", tmp_path / "b", ckpt)  # the other case is untouched


def test_an_unreadable_modality_names_the_file(new_sets, tmp_path):
    folder = shutil.copytree(new_sets["2020"], tmp_path / "in")
    bad = folder / "BraTS20_Validation_002" / "BraTS20_Validation_002_flair.nii"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(InputError, match="not a readable NIfTI") as err:
        run_predict(folder, "BraTS20_Validation_002", tmp_path, constant_checkpoint(tmp_path / "c.pt", 1))
    assert len(err.value.errors) == 1 and err.value.path == str(bad)


@pytest.fixture(scope="module")
def predicted(new_sets, tmp_path_factory):
    """Both 2020 cases predicted with a constant-oedema model, then collected (MLflow in a scratch store)."""
    out = tmp_path_factory.mktemp("collected")
    ckpt = constant_checkpoint(out / "oedema.pt", 2)
    docs = [run_predict(new_sets["2020"], c, out / "predict", ckpt)[1] for c in sb.predict_case_ids(CFG)]
    cases = sorted((out / "predict" / "cases").glob("*.json"))
    uri = f"sqlite:///{out}/mlflow.db"
    tracking.create_store(uri, ["brats_segmentation"])
    collected = {
        "volumes": out / "volumes" / "volumes.csv",
        "summary": out / "volumes" / "summary.json",
        "lineage": out / "volumes" / "lineage.json",
        "figures": out / "volumes" / "figures",
    }
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        summary = predict.collect_volumes(
            {
                "cases": [str(p) for p in cases],
                "stacks": sorted(str(p) for p in (out / "predict" / "stack").glob("*.h5")),
                "submissions": sorted(str(p) for p in (out / "predict" / "submission").glob("*.nii.gz")),
            },
            collected,
            n_overlays=1,
            job=Job(threads=1, rule="brats_segmentation_volumes"),
        )
    finally:
        mp.undo()
    return {"out": out, "docs": docs, "summary": summary, "files": collected, "uri": uri, "ckpt": ckpt}


def test_volumes_table_has_one_row_per_case_in_ml(predicted):
    table = pd.read_csv(predicted["files"]["volumes"])
    assert list(table["case"]) == ["BraTS20_Validation_001", "BraTS20_Validation_002"]
    assert list(table.columns[:7]) == ["case", "wt_ml", "tc_ml", "et_ml", "label_1_ml", "label_2_ml", "label_4_ml"]
    for doc, (_, row) in zip(predicted["docs"], table.iterrows()):
        assert row["wt_ml"] == pytest.approx(doc["volumes"]["WT"]["ml"]) and row["wt_ml"] > 0
        assert row["label_2_ml"] == pytest.approx(row["wt_ml"]) and row["tc_ml"] == 0 and row["et_ml"] == 0
        assert [row["kept_z_start"], row["kept_z_stop"]] == doc["kept_z_range"]
        assert row["submission"] == f"{row['case']}.nii.gz"


def test_summary_follows_the_prediction_contract(predicted):
    summary = json.loads(predicted["files"]["summary"].read_text())
    assert summary == predicted["summary"]
    assert summary["n_predicted"] == 2 and summary["n_excluded"] == 0
    assert summary["class_mix"] == {"WT": 2, "TC": 0, "ET": 0, "no tumour": 0}
    assert summary["figures"] == [str(predicted["files"]["figures"] / "BraTS20_Validation_001.png")]
    assert (predicted["files"]["figures"] / "BraTS20_Validation_001.png").stat().st_size > 1000


def test_lineage_names_the_checkpoint_and_config_and_mlflow_run_is_tagged(predicted):
    doc = json.loads(predicted["files"]["lineage"].read_text())
    (model,) = doc["models"]
    assert model["checkpoint"] == str(predicted["ckpt"]) and model["training_run_id"] == "run-xyz"
    assert len(model["sha256"]) == 64 and doc["rule"] == "brats_segmentation_volumes"
    assert doc["config"]["preprocessing"] == PRE and doc["config"]["threshold"] == 0.5
    assert doc["config"]["cases"] == ["BraTS20_Validation_001", "BraTS20_Validation_002"]
    mlflow.set_tracking_uri(predicted["uri"])
    (run,) = mlflow.search_runs(experiment_names=["brats_segmentation"], output_format="list")
    assert run.info.run_name == "brats_segmentation_volumes"
    assert run.data.tags["training_run_id.segmentation"] == "run-xyz"
    assert run.data.tags["checkpoint_sha256.segmentation"] == model["sha256"]
    assert run.data.metrics["n_predicted"] == 2


def test_cases_of_different_checkpoints_are_not_collected_together(predicted, tmp_path):
    cases = sorted((predicted["out"] / "predict" / "cases").glob("*.json"))
    doc = json.loads(cases[1].read_text())
    doc["lineage"]["models"][0]["sha256"] = "0" * 64
    (tmp_path / cases[1].name).write_text(json.dumps(doc))
    with pytest.raises(InputError, match="another checkpoint or config") as err:
        predict.collect_volumes(
            {"cases": [str(cases[0]), str(tmp_path / cases[1].name)], "stacks": [], "submissions": []},
            {k: tmp_path / v.name for k, v in predicted["files"].items()},
            n_overlays=0,
            job=Job(track=False),
        )
    assert err.value.path == str(tmp_path / cases[1].name)
