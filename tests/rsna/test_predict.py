"""P(pneumonia) per image through medflow.train.predict, and prediction on a folder of new DICOMs: the same
images, features and probabilities as evaluation, exclusions with reasons, CAMs, lineage, refused checkpoints."""

import json
import shutil

import mlflow
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image

from medflow.errors import InputError
from medflow.lineage import file_sha256
from medflow.params import from_config
from medflow.rsna import evaluate as ev
from medflow.rsna import predict as rp
from medflow.rsna.data import eval_loader, read_info, read_rows, split_indices
from medflow.rsna.model import ModelConfig, TwoInputNet, load_model, normalise
from medflow.rsna.predict import predict
from medflow.synthetic import rsna as sr
from medflow.train import Job, load_checkpoint

CPU = torch.device("cpu")


@pytest.mark.parametrize("use_meta", [True, False])
def test_predict_is_the_sigmoid_of_the_model_on_normalised_images(prepared, use_meta):
    torch.manual_seed(0)
    model = TwoInputNet(10, ModelConfig(channels=[4], meta_hidden=4), use_meta=use_meta)
    model.train()  # predict must switch to eval mode itself (dropout off, BatchNorm running statistics)
    rows = [0, 3, 7, 8, 20]
    loader = eval_loader(prepared / "images.h5", rows, batch_size=2, device=CPU, threads=1)
    out = predict(model, loader, CPU, bf16=True)
    assert not model.training and set(out) == {"prob", "target"}
    images, metas, targets = (torch.cat(parts) for parts in zip(*loader))
    model.eval()
    with torch.no_grad():
        expected = torch.sigmoid(model(normalise(images), metas if use_meta else None)).numpy()
    assert out["prob"].dtype == np.float32 and out["prob"].shape == (5,)
    np.testing.assert_allclose(out["prob"], expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out["target"], targets.numpy())


def test_batches_without_targets_give_probabilities_only():
    torch.manual_seed(0)
    model = TwoInputNet(3, ModelConfig(channels=[4], meta_hidden=4), use_meta=True)
    images = torch.randint(0, 256, (4, 16, 16), dtype=torch.uint8)
    meta = torch.eye(4, 3)
    out = predict(model, [(images[:3], meta[:3]), (images[3:], meta[3:])], CPU)
    assert set(out) == {"prob"} and out["prob"].shape == (4,) and ((out["prob"] > 0) & (out["prob"] < 1)).all()
    whole = predict(model, [(images, meta)], CPU)["prob"]
    np.testing.assert_allclose(out["prob"], whole, atol=1e-6)  # batching does not change a prediction


# ---- prediction on a folder of new DICOMs -----------------------------------------------------------------

N_NEW = 5  # radiographs of the unlabeled set; it holds the three bad files (sr.BAD_FILES) as well


def _outputs(d):
    return {
        "predictions": d / "predictions.csv",
        "excluded": d / "excluded.csv",
        "summary": d / "summary.json",
        "lineage": d / "lineage.json",
        "cams": d / "cams",
    }


def _predict(images, checkpoint, out, *, cams=2, track=False, threads=1):
    params = from_config(rp.PredictParams, {"threshold": 0.5, "batch_size": 4, "cams": cams})
    job = Job(threads=threads, seed=0, rule="rsna_predict", track=track)
    return rp.predict_folder({"images": images, "checkpoint": checkpoint}, _outputs(out), params, job)


@pytest.fixture(scope="module")
def new_images(tmp_path_factory):
    """The synthetic unlabeled set (stage_2_test_images/), at the size of the training fixture's images."""
    folder = tmp_path_factory.mktemp("rsna_new") / sr.TEST_IMAGES
    counts = sr.write_predict_set(folder, {"size": 48, "predict": {"n_images": N_NEW}}, seed=3)
    assert counts == {"images": N_NEW, "bad_files": 3, "positive": counts["positive"]}
    return folder


@pytest.fixture(scope="module")
def predicted(new_images, trained, tmp_path_factory):
    """predict_folder on the unlabeled set with the two-input checkpoint, tracked, in a pool of 2 processes."""
    out = tmp_path_factory.mktemp("rsna_predicted")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    try:
        summary = _predict(new_images, trained["checkpoints"]["with_metadata"], out, track=True, threads=2)
    finally:
        mp.undo()
    return {"dir": out, "summary": summary}


def test_a_labelled_test_image_through_the_predict_path_gives_the_evaluation_probability(
    prepared, trained, rsna_raw, tmp_path
):
    """The test patients' DICOMs, as new files: same image, same features, same P(pneumonia) as evaluation."""
    h5 = prepared / "images.h5"
    test_rows = split_indices(h5, prepared / "split.csv")["test"]
    ids = [read_info(h5).patient_ids[i] for i in test_rows]
    folder = tmp_path / sr.TEST_IMAGES
    folder.mkdir()
    for pid in ids:
        shutil.copy(rsna_raw / "stage_2_train_images" / f"{pid}.dcm", folder / f"{pid}.dcm")
    ckpt_path = trained["checkpoints"]["with_metadata"]
    ckpt = load_checkpoint(ckpt_path)
    cfg, max_age = rp.checkpoint_preprocessing(ckpt, ckpt_path)
    assert cfg.size == 24  # from the checkpoint: the fixture's HDF5 was made at 24 pixels
    images, feats = read_rows(h5, test_rows)
    for k, pid in enumerate(ids):
        item = rp.prepare_file(folder / f"{pid}.dcm", cfg, max_age)
        np.testing.assert_array_equal(item.image, images[k])
        np.testing.assert_array_equal(item.features, feats[k])

    evaluated = tmp_path / "evaluate"
    ev.evaluate(
        {"h5": h5, "split": prepared / "split.csv", "checkpoints": [ckpt_path]},
        {"metrics": evaluated / "metrics.json", "roc": evaluated / "roc.png", "predictions": evaluated / "p.csv"},
        from_config(ev.EvaluateParams, {"evaluate": {"threshold": 0.5, "batch_size": 4}}),
        Job(threads=1, track=False),
    )
    expected = pd.read_csv(evaluated / "p.csv", dtype={"patientId": str}).set_index("patientId")
    summary = _predict(folder, ckpt_path, tmp_path / "predict", cams=0)
    got = pd.read_csv(tmp_path / "predict" / "predictions.csv", dtype={"patientId": str}).set_index("patientId")
    assert summary["n_predicted"] == len(ids) == 6 and summary["n_excluded"] == 0
    assert sorted(got.index) == sorted(ids) and list(got.columns) == ["probability", "label"]
    np.testing.assert_allclose(
        got.loc[ids, "probability"].to_numpy(), expected.loc[ids, "prob_with_metadata"].to_numpy(), rtol=0, atol=1e-6
    )
    assert (got["label"] == (got["probability"] >= 0.5).astype(int)).all()


def test_outputs_exclusions_and_summary(predicted, new_images):
    d, summary = predicted["dir"], predicted["summary"]
    preds = pd.read_csv(d / "predictions.csv", dtype={"patientId": str})
    excluded = pd.read_csv(d / "excluded.csv")
    names = sorted(p.name for p in new_images.iterdir())
    assert len(preds) == N_NEW and list(preds.columns) == ["patientId", "probability", "label"]
    assert list(preds["patientId"]) == sorted(preds["patientId"]) and preds["probability"].between(0, 1).all()
    assert list(excluded.columns) == ["item", "reason"] and len(excluded) == 3
    assert sorted([*[f"{p}.dcm" for p in preds["patientId"]], *excluded["item"]]) == names
    reasons = sorted(r.split(":")[0] for r in excluded["reason"])
    assert reasons == sorted(sr.BAD_FILES)
    why = dict(zip((r.split(":")[0] for r in excluded["reason"]), excluded["reason"]))
    assert "not a DICOM file" in why["unreadable"] and "Modality CT" in why["not a radiograph"]
    assert "pixel data could not be decoded" in why["undecodable"]
    assert json.loads((d / "summary.json").read_text()) == summary
    assert summary["n_predicted"] == N_NEW and summary["n_excluded"] == 3
    assert summary["class_mix"] == {
        "Target 0": int((preds["label"] == 0).sum()),
        "Target 1 (opacity)": int((preds["label"] == 1).sum()),
    }
    assert summary["excluded_reasons"] == {r: 1 for r in sorted(sr.BAD_FILES)}


def test_cams_are_pngs_of_the_highest_probabilities_with_non_constant_maps(predicted, trained, new_images):
    d, summary = predicted["dir"], predicted["summary"]
    preds = pd.read_csv(d / "predictions.csv", dtype={"patientId": str})
    top = preds.sort_values("probability", ascending=False, kind="stable")["patientId"].iloc[:2]
    assert summary["figures"] == [str(d / "cams" / f"{p}.png") for p in top]
    for f in summary["figures"]:
        assert Image.open(f).format == "PNG"
    ckpt_path = trained["checkpoints"]["with_metadata"]
    cfg, max_age = rp.checkpoint_preprocessing(load_checkpoint(ckpt_path), ckpt_path)
    items = [rp.prepare_file(new_images / f"{p}.dcm", cfg, max_age) for p in preds["patientId"]]
    model = load_model(ckpt_path)
    hooks = {name: dict(mod._forward_hooks) for name, mod in model.named_modules()}  # the fp32 head's own
    maps = rp.cam_maps(model, np.stack([i.image for i in items]), np.stack([i.features for i in items]), CPU)
    assert maps.shape == (N_NEW, 24, 24) and maps.min() >= 0 and maps.max() <= 1
    assert all(m.max() > m.min() for m in maps), "every map must show where the evidence lies"
    after = {name: dict(mod._forward_hooks) for name, mod in model.named_modules()}
    assert after == hooks, "the CAM hooks go on a copy of the model"


def test_lineage_and_one_mlflow_run_name_the_checkpoint_and_its_training_run(predicted, trained):
    d = predicted["dir"]
    ckpt_path = trained["checkpoints"]["with_metadata"]
    doc = json.loads((d / "lineage.json").read_text())
    run_id = trained["results"]["with_metadata"].run_id
    assert doc["rule"] == "rsna_predict" and doc["models"] == [
        {
            "name": "with_metadata",
            "checkpoint": str(ckpt_path),
            "sha256": file_sha256(ckpt_path),
            "training_run_id": run_id,
        }
    ]
    assert doc["config"]["preprocessing"] == load_checkpoint(ckpt_path)["meta"]["preprocessing"]
    client = mlflow.MlflowClient(trained["uri"])
    runs = client.search_runs(
        [client.get_experiment_by_name("rsna").experiment_id], "attributes.run_name = 'rsna_predict'"
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["training_run_id.with_metadata"] == run_id
    assert run.data.tags["checkpoint_sha256.with_metadata"] == file_sha256(ckpt_path)
    assert run.data.metrics["n_predicted"] == N_NEW and run.data.metrics["n_excluded"] == 3
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "predict")}
    assert {"predict/predictions.csv", "predict/excluded.csv", "predict/summary.json", "predict/cams"} <= logged


def test_no_identifying_value_of_the_new_files_reaches_an_output_or_the_log(predicted, new_images, trained, caplog):
    needles = set()
    for path in new_images.glob("*.dcm"):
        try:
            ds = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            continue
        for tag in sr.IDENTIFYING_TAGS:
            value = str(ds.get(tag, ""))
            needles.add(value)
            needles.update(value.split("^"))
    needles.discard("")
    assert len(needles) > 3 * N_NEW, "the new files must carry identifying values"
    searched = [p for p in predicted["dir"].rglob("*") if p.is_file()] + [trained["dir"] / "mlflow.db"]
    leaks = [f"{p.name}: {n}" for p in searched for n in needles if n.encode() in p.read_bytes()]
    with caplog.at_level("INFO"):
        _predict(new_images, trained["checkpoints"]["with_metadata"], predicted["dir"] / "again", cams=1)
    leaks += [f"log: {n}" for n in needles if n in caplog.text]
    assert "excluded" in caplog.text and not leaks, leaks


def test_unsafe_file_names_are_excluded_with_the_reason(new_images, trained, tmp_path):
    folder = tmp_path / "new"
    shutil.copytree(new_images, folder)
    good = sorted(folder.glob("*.dcm"))[1]
    shutil.copy(good, folder / ".hidden.dcm")
    shutil.copy(good, folder / "a b.dcm")
    _predict(folder, trained["checkpoints"]["with_metadata"], tmp_path / "out", cams=10)
    excluded = pd.read_csv(tmp_path / "out" / "excluded.csv").set_index("item")["reason"]
    for name in (".hidden.dcm", "a b.dcm"):
        assert excluded[name].startswith("unsafe id: patientId (the file name)"), excluded[name]
    assert sorted(p.name for p in (tmp_path / "out" / "cams").iterdir()) == sorted(
        f"{p}.png" for p in pd.read_csv(tmp_path / "out" / "predictions.csv", dtype={"patientId": str})["patientId"]
    )


def test_a_folder_without_usable_input_is_one_input_error(new_images, trained, tmp_path):
    ckpt = trained["checkpoints"]["with_metadata"]
    with pytest.raises(InputError, match="missing: expected a folder"):
        _predict(tmp_path / "absent", ckpt, tmp_path / "o1")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no DICOM here")
    with pytest.raises(InputError, match="no .dcm file in this folder"):
        _predict(tmp_path / "empty", ckpt, tmp_path / "o2")
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in new_images.iterdir():
        try:
            ok = pydicom.dcmread(path).Modality == "CR" and len(pydicom.dcmread(path).PixelData) > 1000
        except pydicom.errors.InvalidDicomError:
            ok = False
        if not ok:
            shutil.copy(path, bad / path.name)
    with pytest.raises(InputError, match=r"bad: no usable image: all 3 \.dcm files excluded \(first: "):
        _predict(bad, ckpt, tmp_path / "o3")
    assert not (tmp_path / "o3" / "predictions.csv").exists()


def _edited_checkpoint(trained, tmp_path, edit):
    ckpt = torch.load(trained["checkpoints"]["with_metadata"], weights_only=True)
    edit(ckpt["meta"])
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(pipeline="oct"), "checkpoint of pipeline 'oct', not 'rsna'"),
        (lambda m: m.pop("pipeline"), "checkpoint of pipeline None, not 'rsna'"),
        (lambda m: m.pop("preprocessing"), "records no preprocessing parameters"),
        (lambda m: m["preprocessing"].pop("clahe"), "incomplete or invalid preprocessing record"),
        (lambda m: m["preprocessing"].update(size=64), r"size 24\) do not match its preprocessing record"),
        (lambda m: m["preprocessing"].update(resampling="nearest"), "resampling: checkpoint 'nearest', this code"),
        (lambda m: m["preprocessing"]["metadata"].update(sex=["F", "M"]), "metadata.sex: checkpoint"),
    ],
)
def test_a_mismatched_checkpoint_is_refused_saying_what_differs(new_images, trained, tmp_path, edit, message):
    path = _edited_checkpoint(trained, tmp_path, edit)
    with pytest.raises(InputError, match=message) as err:
        _predict(new_images, path, tmp_path / "out")
    assert err.value.path == str(path) and not (tmp_path / "out" / "predictions.csv").exists()


def test_evaluation_refuses_a_checkpoint_of_other_preprocessing(prepared, trained, tmp_path):
    path = _edited_checkpoint(trained, tmp_path, lambda m: m["preprocessing"]["clahe"].update(clip_limit=0.03))
    with pytest.raises(InputError, match=r"preprocessing differs .*clahe\.clip_limit: checkpoint 0\.03, inputs 0\.01"):
        ev.evaluate(
            {"h5": prepared / "images.h5", "split": prepared / "split.csv", "checkpoints": [path]},
            {"metrics": tmp_path / "m.json", "roc": tmp_path / "roc.png", "predictions": tmp_path / "p.csv"},
            ev.EvaluateParams(),
            Job(threads=1, track=False),
        )
