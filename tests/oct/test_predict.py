"""Per-image log-probabilities come from one function, used by fit's validation, by the evaluation and by the
prediction on new scans with the job's bf16; the prediction stage (oct_predict) on a folder tree of JPEG/PNG
scans (probabilities equal to the evaluation's, exclusions with reasons, refused checkpoints, lineage) and the
class-activation maps of evaluation and prediction."""

import json
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from medflow.errors import InputError
from medflow.lineage import file_sha256
from medflow.oct.data import IMAGENET_MEAN, OctImages, eval_transform, eval_transform_for, preprocessing, split_table
from medflow.oct.evaluate import EvaluateParams, evaluate
from medflow.oct.model import load_model
from medflow.oct.predict import PredictParams, class_maps, pick_for_cams, predict_log_proba, predict_scans
from medflow.params import from_config
from medflow.train import Job, load_checkpoint

from .conftest import BOOTSTRAP, EVAL_CAMS, EVAL_SEED

CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]


def test_validation_and_evaluation_predict_through_medflow_train_predict_with_the_jobs_bf16(run):
    calls = run["calls"]
    assert [c["stage"] for c in calls] == ["train", "train", "evaluate"]  # one validation per epoch, one test pass
    assert all(c["bf16"] is False for c in calls)  # the job's flag, not predict's default (True)
    out = calls[-1]["out"]
    preds = pd.read_csv(run["tmp"] / "predictions.csv", dtype={"patient": str, "id": str})
    classes = CLASSES
    # The CSV holds what predict returned, in its order.
    assert np.allclose(preds[[f"p_{c}" for c in classes]].to_numpy(), np.exp(out["log_proba"]), atol=1e-6)
    assert (preds["label"] == [classes[t] for t in out["target"]]).all()
    # The val metrics of the last epoch are those of the last validation call.
    last = calls[1]["out"]
    loss = float(torch.nn.functional.nll_loss(torch.from_numpy(last["log_proba"]), torch.from_numpy(last["target"])))
    assert run["result"].history[-1]["val_loss"] == loss


def test_predict_log_proba_equals_a_plain_loop_in_loader_order(run):
    model = load_model(run["tmp"] / "model.pt")
    table, c2i = split_table(run["tmp"] / "split.csv", "test")
    ds = OctImages(run["root"], table, c2i, eval_transform(32, 36))
    out = predict_log_proba(model, DataLoader(ds, batch_size=4, shuffle=False), torch.device("cpu"))
    with torch.no_grad():
        expected = model(torch.stack([ds[i][0] for i in range(len(ds))])).numpy()
    assert out["log_proba"].dtype == np.float32 and out["log_proba"].shape == (len(ds), 4)
    assert np.allclose(out["log_proba"], expected, atol=1e-5)
    assert out["target"].tolist() == ds.targets


class _Tiny(nn.Module):
    """A stand-in with the VGG16's output contract: (N, 3, S, S) -> log-probabilities (N, 4)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 4), nn.Dropout(0.5), nn.LogSoftmax(dim=1))

    def forward(self, x):
        return self.net(x)


def test_unlabelled_batches_give_log_proba_only_and_the_model_is_left_in_eval_mode():
    torch.manual_seed(0)
    model = _Tiny().train()
    x = torch.randn(5, 3, 4, 4)
    out = predict_log_proba(model, [x[:2], x[2:]], torch.device("cpu"))
    assert set(out) == {"log_proba"} and not model.training
    with torch.no_grad():
        ref = model(x).numpy()  # eval mode: dropout off, so the batches match the whole
    assert np.allclose(out["log_proba"], ref, atol=1e-6)
    assert np.allclose(np.exp(out["log_proba"]).sum(1), 1, atol=1e-6)


# --- prediction on new scans (oct_predict) and class-activation maps ---------------------------------------

PREDICT_CAMS = 3


@pytest.fixture(scope="module")
def scans(run, tmp_path_factory):
    """A folder tree of the run's labelled test images as new scans: JPEG copies two folders deep, a PNG copy of
    one (same pixels), an RGB PNG copy of another (grey replicated), and five files to exclude."""
    base = tmp_path_factory.mktemp("newscans")
    folder = base / "new_scans"
    test = run["split"][run["split"]["split"] == "test"].reset_index(drop=True)
    source = {}  # relative path -> test id whose probabilities it must get
    for i, row in test.iterrows():
        rel = f"site_{i % 2}/visit_{i % 3}/{row['id']}.jpeg" if i % 4 else f"{row['id']}.jpeg"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(run["root"] / row["path"], folder / rel)
        source[rel] = row["id"]
    first, second = test["id"][0], test["id"][1]
    with Image.open(run["root"] / test["path"][0]) as im:
        im.save(folder / "as_png.png")
    with Image.open(run["root"] / test["path"][1]) as im:
        im.convert("RGB").save(folder / "site_0" / "as_rgb.png")
    source.update({"as_png.png": first, "site_0/as_rgb.png": second})
    bad = {
        "notes.txt": "not a scan",
        "site_1/cut.jpeg": "unreadable image",
        "site_1/scan 7.jpeg": "cannot name an output file",
        "site_0__as_rgb.png": "also that of",  # the id of site_0/as_rgb.png, listed first: this one is excluded
        "rgba.png": "unexpected image mode RGBA",
    }
    (folder / "notes.txt").write_text("visit notes")
    jpeg = (run["root"] / test["path"][2]).read_bytes()
    (folder / "site_1" / "cut.jpeg").write_bytes(jpeg[: len(jpeg) // 3])
    (folder / "site_1" / "scan 7.jpeg").write_bytes(jpeg)
    shutil.copy(folder / "as_png.png", folder / "site_0__as_rgb.png")
    Image.fromarray(np.zeros((40, 40, 4), np.uint8), mode="RGBA").save(folder / "rgba.png")
    (folder / ".DS_Store").write_bytes(b"\0")  # hidden: neither predicted nor listed
    return folder, source, bad


def _outputs(d):
    return {
        "predictions": d / "predictions.csv",
        "excluded": d / "excluded.csv",
        "cams": d / "cams",
        "summary": d / "summary.json",
        "lineage": d / "lineage.json",
    }


def _predict(run, folder, out_dir, checkpoint=None, cams=PREDICT_CAMS, track=False):
    params = PredictParams(folder=str(folder), top_k=2, batch_size=3, cams=cams)
    job = Job(threads=1, seed=0, bf16=False, rule="oct_predict", track=track)
    return predict_scans({"checkpoint": checkpoint or run["tmp"] / "model.pt"}, _outputs(out_dir), params, job)


@pytest.fixture(scope="module")
def predicted(run, scans, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("octpredict")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", run["uri"])
    try:
        result = _predict(run, scans[0], out_dir, track=True)
    finally:
        mp.undo()
    return out_dir, result


def test_a_labelled_test_image_gets_the_evaluations_probabilities(run, scans, predicted):
    _, source, _ = scans
    _, result = predicted
    evaluated = run["calls"][-1]["out"]["log_proba"]  # the evaluation's own output, in its table's order
    ids = pd.read_csv(run["tmp"] / "predictions.csv", dtype={"id": str})["id"].tolist()
    table = result["predictions"].set_index("path")
    assert set(table.index) == set(source)
    for rel, test_id in source.items():  # JPEG copies in nested folders, a PNG copy and an RGB copy
        got = table.loc[rel, [f"p_{c}" for c in CLASSES]].to_numpy(float)
        assert np.allclose(got, np.exp(evaluated[ids.index(test_id)]), atol=1e-6, rtol=0), rel
    on_disk = pd.read_csv(predicted[0] / "predictions.csv")
    assert list(on_disk.columns) == ["id", "path", "class", "top1", "prob1", "top2", "prob2"] + [
        f"p_{c}" for c in CLASSES
    ]
    assert (on_disk["class"] == on_disk["top1"]).all() and (on_disk["prob1"] >= on_disk["prob2"]).all()
    assert on_disk.loc[on_disk["path"] == "site_0/as_rgb.png", "id"].item() == "site_0__as_rgb"


def test_bad_files_are_excluded_with_their_reasons_and_the_rest_predicted(scans, predicted):
    _, source, bad = scans
    out_dir, result = predicted
    excluded = pd.read_csv(out_dir / "excluded.csv")
    assert list(excluded.columns) == ["file", "reason"]
    assert sorted(excluded["file"]) == sorted(bad)
    for file, words in bad.items():
        assert words in excluded.set_index("file").loc[file, "reason"], file
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["n_predicted"] == len(source) == len(result["predictions"])
    assert summary["n_excluded"] == len(bad)
    assert list(summary["class_mix"]) == CLASSES and sum(summary["class_mix"].values()) == len(source)
    assert (
        summary["class_mix"] == result["predictions"]["class"].value_counts().reindex(CLASSES, fill_value=0).to_dict()
    )


def test_cam_pngs_of_prediction_and_evaluation_are_written(run, predicted):
    out_dir, result = predicted
    summary = result["summary"]
    pngs = sorted((out_dir / "cams").glob("*.png"))
    assert len(pngs) == PREDICT_CAMS and sorted(map(str, pngs)) == sorted(summary["figures"])
    assert {p.stem for p in pngs} <= set(result["predictions"]["id"])
    # evaluation: EVAL_CAMS test images, in turn per true class, so every class is drawn
    eval_pngs = sorted((run["tmp"] / "cams").glob("*.png"))
    assert len(eval_pngs) == EVAL_CAMS
    assert {p.stem.split("-")[0] for p in eval_pngs} == set(CLASSES)
    for p in [*pngs, *eval_pngs]:
        with Image.open(p) as im:
            assert np.asarray(im.convert("L")).std() > 1


def test_class_activation_maps_of_the_trained_model_are_not_constant(run):
    """The maps drawn are those of the predicted class (a class with no positive evidence may map to 0)."""
    model = load_model(run["tmp"] / "model.pt")
    table, c2i = split_table(run["tmp"] / "split.csv", "test")
    ds = OctImages(run["root"], table, c2i, eval_transform(32, 36))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        pred = model(x).argmax(1).tolist()
    maps = class_maps(model, x, pred)
    assert maps.shape == (len(ds), 32, 32) and maps.min() >= 0 and maps.max() <= 1
    assert all(np.ptp(m) > 0.1 for m in maps)
    assert not model.training  # left as it was


def test_cams_do_not_change_the_evaluation_metrics(run, tmp_path):
    params = from_config(
        EvaluateParams, {"root": str(run["root"]), "evaluate": {"top_k": 2, "batch_size": 16}, "bootstrap": BOOTSTRAP}
    )
    outputs = {
        k: tmp_path / f"{k}.{ext}" for k, ext in (("metrics", "json"), ("predictions", "csv"), ("confusion", "png"))
    }
    job = Job(threads=1, seed=EVAL_SEED, bf16=False, rule="oct_evaluate", track=False)
    again = evaluate({"split": run["tmp"] / "split.csv", "checkpoint": run["tmp"] / "model.pt"}, outputs, params, job)
    assert again == run["report"]
    assert (tmp_path / "predictions.csv").read_bytes() == (run["tmp"] / "predictions.csv").read_bytes()


def test_lineage_and_the_mlflow_run_name_the_model(run, predicted):
    out_dir, _ = predicted
    lineage = json.loads((out_dir / "lineage.json").read_text())
    (model,) = lineage["models"]
    assert model["sha256"] == file_sha256(run["tmp"] / "model.pt")
    assert model["training_run_id"] == run["result"].run_id
    assert lineage["rule"] == "oct_predict" and lineage["config"]["preprocessing"]["image_size"] == 32
    client = mlflow.MlflowClient(run["uri"])
    exp = client.get_experiment_by_name("oct")
    (pr,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'oct_predict'")
    assert pr.data.tags["training_run_id.oct"] == run["result"].run_id
    assert pr.data.tags["checkpoint_sha256.oct"] == model["sha256"]
    assert pr.data.metrics["n_excluded"] == 5


def test_an_empty_folder_or_no_usable_scan_is_one_input_error(run, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(InputError, match="the folder is empty") as e:
        _predict(run, empty, tmp_path / "out1")
    assert type(e.value) is InputError and e.value.path == str(empty)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.txt").write_text("x")
    (junk / "b.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="2 file.*none usable") as e:
        _predict(run, junk, tmp_path / "out2")
    assert type(e.value) is InputError and e.value.path == str(junk)
    assert not (tmp_path / "out2" / "predictions.csv").exists()


def _checkpoint_with(run, tmp_path, **meta):
    ckpt = load_checkpoint(run["tmp"] / "model.pt")
    ckpt["meta"] = {**ckpt["meta"], **meta}
    for k, v in meta.items():
        if v is None:
            del ckpt["meta"][k]
    path = tmp_path / "other.pt"
    torch.save(ckpt, path)
    return path


def test_a_checkpoint_of_another_pipeline_is_refused(run, scans, tmp_path):
    path = _checkpoint_with(run, tmp_path, pipeline="rsna")
    with pytest.raises(InputError, match="pipeline 'rsna', not 'oct'") as e:
        _predict(run, scans[0], tmp_path / "out", checkpoint=path)
    assert e.value.path == str(path) and not (tmp_path / "out" / "predictions.csv").exists()


def test_a_checkpoint_without_or_with_unsupported_preprocessing_is_refused(run, scans, tmp_path):
    with pytest.raises(InputError, match="records no preprocessing"):
        _predict(run, scans[0], tmp_path / "out", checkpoint=_checkpoint_with(run, tmp_path, preprocessing=None))
    prep = {**load_checkpoint(run["tmp"] / "model.pt")["meta"]["preprocessing"], "colour": "L"}
    with pytest.raises(InputError, match="colour 'L'"):
        _predict(run, scans[0], tmp_path / "out", checkpoint=_checkpoint_with(run, tmp_path, preprocessing=prep))


def test_the_checkpoint_records_its_pipeline_and_preprocessing(run):
    meta = load_checkpoint(run["tmp"] / "model.pt")["meta"]
    assert meta["pipeline"] == "oct"
    assert meta["preprocessing"] == preprocessing(32, 36, CLASSES)
    assert meta["preprocessing"]["mean"] == list(IMAGENET_MEAN) and meta["preprocessing"]["colour"] == "RGB"


def test_recorded_normalisation_is_applied():
    img = Image.fromarray(np.full((40, 50), 128, np.uint8)).convert("RGB")
    prep = {**preprocessing(32, 36, CLASSES), "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1.0]}
    x = eval_transform_for(prep)(img)
    assert torch.allclose(x.mean(dim=(1, 2)), (128 / 255 - 0.5) / torch.tensor([0.25, 0.5, 1.0]), atol=1e-5)


def test_pick_for_cams_takes_each_class_in_turn():
    assert pick_for_cams([2, 2, 0, 2, 1, 0], 4) == [0, 2, 4, 1]
    assert pick_for_cams([3, 3], 5) == [0, 1] and pick_for_cams([1, 0], 0) == []
