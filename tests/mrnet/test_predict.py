"""Per-exam P(positive) through medflow.train.predict: packed batches in, one probability per exam out; and the
prediction stage on new exams (mrnet_predict), which goes through the same functions."""

import functools

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from medflow.errors import InputError
from medflow.mrnet import predict as predict_mod
from medflow.mrnet.data import collate_packed
from medflow.mrnet.model import MRNet

CPU = torch.device("cpu")


def _batches(counts_per_batch, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    batches, label = [], 0
    for counts in counts_per_batch:
        items = []
        for c in counts:
            items.append((torch.randint(0, 256, (c, size, size), dtype=torch.uint8, generator=g), float(label % 2)))
            label += 1
        batches.append(collate_packed(items))
    return batches


def test_probabilities_labels_and_per_batch_loss_are_the_models_own():
    torch.manual_seed(0)
    model = MRNet()
    batches = _batches([[3, 2], [4], [1, 2, 2]])
    pw = torch.tensor(2.0)
    out = predict_mod.score_exams(
        model,
        batches,
        CPU,
        bf16=False,
        loss=lambda z, y: F.binary_cross_entropy_with_logits(z, y, pos_weight=pw, reduction="sum"),
    )
    assert not model.training and out["prob"].shape == (6,) and out["prob"].dtype == np.float32
    with torch.no_grad():
        logits = [model(b["slices"], b["counts"]) for b in batches]
    np.testing.assert_array_equal(out["prob"], torch.sigmoid(torch.cat(logits)).numpy())
    np.testing.assert_array_equal(out["label"], [0, 1, 0, 1, 0, 1])
    want = [
        float(F.binary_cross_entropy_with_logits(z, b["label"], pos_weight=pw, reduction="sum"))
        for z, b in zip(logits, batches)
    ]
    np.testing.assert_array_equal(out["loss"], np.float32(want))
    np.testing.assert_array_equal(predict_mod.predict_probabilities(model, batches, CPU, bf16=False), out["prob"])
    assert "loss" not in predict_mod.score_exams(model, batches, CPU, bf16=False)


def test_predict_runs_through_the_shared_inference_loop(monkeypatch):
    calls = []

    def spy(model, loader, device, **kw):
        calls.append(kw)
        return real(model, loader, device, **kw)

    real = predict_mod.infer
    monkeypatch.setattr(predict_mod, "infer", spy)
    torch.manual_seed(0)
    predict_mod.predict_probabilities(MRNet(), _batches([[2]]), CPU, bf16=True)
    assert len(calls) == 1 and calls[0]["bf16"] is True and callable(calls[0]["forward"])


def test_predict_exams_follows_the_exam_table_order(tmp_path):
    """Exams from disk, packed several per batch: one probability per row of the table, in its order,
    each what the exam alone gives."""
    rng = np.random.default_rng(0)
    rows = []
    for i, (split, slices) in enumerate([("train", 3), ("valid", 2), ("train", 5), ("valid", 1)]):
        (tmp_path / split / "coronal").mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / split / "coronal" / f"{i:04d}.npy", rng.integers(0, 256, (slices, 64, 64), dtype=np.uint8))
        rows.append({"id": f"{i:04d}", "split": split, "label": 0, "slices": slices})
    exams = pd.DataFrame(rows).iloc[[2, 0, 3, 1]].reset_index(drop=True)
    torch.manual_seed(0)
    model = MRNet().eval()
    prob = predict_mod.predict_exams(
        model, tmp_path, "coronal", exams, size=64, batch_slices=6, device=CPU, threads=1, bf16=False
    )
    with torch.no_grad():
        alone = [
            torch.sigmoid(model(torch.from_numpy(np.load(tmp_path / s / "coronal" / f"{e}.npy")), [n])).item()
            for e, s, n in zip(exams["id"], exams["split"], exams["slices"])
        ]
    assert prob.shape == (4,)
    np.testing.assert_allclose(prob, alone, rtol=1e-5, atol=1e-6)


# --- the prediction stage on new exams -----------------------------------------------------------------

PLANES = ("axial", "coronal", "sagittal")
TASKS = ("abnormal", "acl", "meniscus")
OUTPUTS = {
    "predictions": "predictions.csv",
    "challenge": "predictions_challenge.csv",
    "excluded": "excluded.csv",
    "cams": "cams",
    "summary": "summary.json",
    "lineage": "lineage.json",
}


def _outputs(d):
    return {k: d / name for k, name in OUTPUTS.items()}


def _new_job(track=False):
    from medflow.train import Job

    return Job(threads=1, seed=0, bf16=False, rule="mrnet_predict", track=track)


@functools.cache
def _base_state() -> dict:
    torch.manual_seed(0)
    return MRNet().state_dict()  # built once: building AlexNet takes seconds


def _save_checkpoint(path, meta, seed):
    """A checkpoint as ``medflow.train.fit`` writes it, of an untrained MRNet whose classifier ``seed`` draws."""
    g = torch.Generator().manual_seed(seed)
    state = dict(_base_state())
    state["classifier.weight"] = torch.randn(state["classifier.weight"].shape, generator=g) * 0.05
    state["classifier.bias"] = torch.randn(1, generator=g) * 0.1
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "meta": meta, "mlflow_run_id": f"run-{seed}"}, path)
    return path


def _meta(task, plane, **changes):
    meta = {
        "pipeline": "mrnet",
        "task": task,
        "plane": plane,
        "fold": "all",
        "weights": "none",
        "image_size": 64,
        "preprocessing": {"in_plane": 256, "image_size": 64},
    }
    return {**meta, **changes}


@pytest.fixture
def models(tmp_path):
    """Nine untrained plane models and three stackers in the results/mrnet layout (mrnet_predict's inputs)."""
    from medflow.lineage import file_sha256
    from medflow.mrnet.stacking import Stacker

    d = tmp_path / "results_mrnet"
    ckpts, stackers = [], []
    for i, task in enumerate(TASKS):
        for j, plane in enumerate(PLANES):
            ckpts.append(_save_checkpoint(d / f"train/{task}/{plane}/fold_all/model.pt", _meta(task, plane), 3 * i + j))
        sha = {p: file_sha256(c) for p, c in zip(PLANES, ckpts[-3:])}
        st = Stacker(
            list(PLANES), [1.0, 2.0, -1.5], -0.4, extra={"task": task, "pipeline": "mrnet", "checkpoint_sha256": sha}
        )
        stackers.append(d / f"evaluate/{task}/stacker.json")
        st.save(stackers[-1])
    return {"checkpoints": ckpts, "stackers": stackers}


@pytest.fixture
def new_exams(tmp_path):
    """Four new exams (0006-0009) in the layout {axial,coronal,sagittal}/NNNN.npy."""
    from medflow.synthetic import mrnet as synthetic

    folder = tmp_path / "new_exams"
    synthetic.generate_new({"n_train": 4, "n_valid": 2, "slices": [3, 4], "predict": {"n_exams": 4}}, folder, seed=0)
    return folder


def test_a_valid_exam_through_the_predict_path_gets_what_evaluation_gave_it(trained, tmp_path):
    """The valid folder of the download is a folder of new exams: each exam's three plane probabilities and
    its stacked probability equal the evaluation stage's (predictions.csv of mrnet_evaluate)."""
    from medflow.mrnet.predict import PredictParams, predict_new_exams

    params = PredictParams(input=str(trained["root"] / "valid"), tasks=("acl",), batch_slices=32)
    out = predict_new_exams(
        {"checkpoints": trained["checkpoints"], "stackers": [trained["evaluate"]["stacker"]]},
        _outputs(tmp_path),
        params,
        _new_job(),
    )
    evaluated = pd.read_csv(trained["evaluate"]["predictions"], dtype={"id": str})
    written = pd.read_csv(tmp_path / "predictions.csv", dtype={"exam": str})
    assert written["exam"].tolist() == evaluated["id"].tolist() == [f"{i:04d}" for i in range(16, 22)]
    assert written.columns.tolist() == ["exam", "acl_axial", "acl_coronal", "acl_sagittal", "acl_stacked"]
    for table in (out["predictions"], written):
        for plane in PLANES:
            np.testing.assert_allclose(table[f"acl_{plane}"], evaluated[plane], rtol=0, atol=1e-6)
        np.testing.assert_allclose(table["acl_stacked"], evaluated["stacked"], rtol=0, atol=1e-6)
    assert len(set(evaluated["stacked"].round(4))) > 1  # the models tell the exams apart: not a constant
    # The stacker names the plane models it was evaluated with; the predict stage checked them.
    from medflow.lineage import file_sha256
    from medflow.mrnet.stacking import Stacker

    recorded = Stacker.load(trained["evaluate"]["stacker"]).extra["checkpoint_sha256"]
    assert recorded == {p: file_sha256(c) for p, c in zip(PLANES, trained["checkpoints"])}
    # The challenge file: the stacked probabilities, one line per exam, no header.
    lines = (tmp_path / "predictions_challenge.csv").read_text().splitlines()
    np.testing.assert_allclose([float(x) for x in lines], evaluated["stacked"], rtol=0, atol=1e-6)


def test_new_exams_outputs_exclusions_lineage_and_mlflow(models, new_exams, tmp_path, monkeypatch):
    import mlflow

    from medflow import io, tracking
    from medflow.lineage import file_sha256
    from medflow.mrnet.predict import PredictParams, predict_new_exams

    (new_exams / "coronal" / "0007.npy").unlink()  # a missing plane
    np.save(new_exams / "axial" / "0008.npy", np.zeros((256, 256), np.uint8))  # no slice axis
    uri = tracking.resolve_uri("", str(tmp_path))
    tracking.create_store(uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out_dir = tmp_path / "predict"
    params = PredictParams(input=str(new_exams), cams=1, batch_slices=8)
    out = predict_new_exams(models, _outputs(out_dir), params, _new_job(track=True))

    table = pd.read_csv(out_dir / "predictions.csv", dtype={"exam": str})
    assert table["exam"].tolist() == ["0006", "0009"]
    want = ["exam"] + [f"{t}_{p}" for t in TASKS for p in [*PLANES, "stacked"]]
    assert table.columns.tolist() == want
    for t in TASKS:  # the stacker applied to the plane probabilities
        z = table[[f"{t}_{p}" for p in PLANES]].to_numpy() @ [1.0, 2.0, -1.5] - 0.4
        np.testing.assert_allclose(table[f"{t}_stacked"], 1 / (1 + np.exp(-z)), atol=1e-6)
    excluded = pd.read_csv(out_dir / "excluded.csv", dtype={"exam": str})
    assert excluded.columns.tolist() == ["exam", "reason"] and excluded["exam"].tolist() == ["0007", "0008"]
    assert excluded["reason"][0] == f"{new_exams / 'coronal' / '0007.npy'}: missing"
    assert excluded["reason"][1].startswith(f"{new_exams / 'axial' / '0008.npy'}: 2 dimensions")
    # The challenge's file: a line per input exam in input order, abnormal,acl,meniscus; excluded exams empty.
    lines = (out_dir / "predictions_challenge.csv").read_text().splitlines()
    assert lines[1:3] == [",,", ",,"] and len(lines) == 4
    for line, (_, row) in zip([lines[0], lines[3]], table.iterrows()):
        np.testing.assert_allclose(
            [float(x) for x in line.split(",")], row[[f"{t}_stacked" for t in TASKS]].to_numpy(float), atol=1e-6
        )

    summary = io.read_json(out_dir / "summary.json")
    assert summary == out["summary"]
    assert (summary["n_predicted"], summary["n_excluded"]) == (2, 2)
    assert summary["class_mix"] == {t: int((table[f"{t}_stacked"] >= 0.5).sum()) for t in TASKS}
    # One map per task: the exam of highest stacked probability.
    assert sorted(summary["figures"]) == sorted(
        str(out_dir / "cams" / f"{t}_{table.loc[table[f'{t}_stacked'].idxmax(), 'exam']}.png") for t in TASKS
    )
    for fig in summary["figures"]:
        assert open(fig, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    lineage = io.read_json(out_dir / "lineage.json")
    names = [f"{t}_{p}" for t in TASKS for p in PLANES] + [f"{t}_stacker" for t in TASKS]
    assert [m["name"] for m in lineage["models"]] == names and lineage["rule"] == "mrnet_predict"
    paths = [*models["checkpoints"], *models["stackers"]]
    assert [m["sha256"] for m in lineage["models"]] == [file_sha256(p) for p in paths]
    assert lineage["models"][4]["training_run_id"] == "run-4"
    assert lineage["config"]["preprocessing"]["acl_coronal"] == {"in_plane": 256, "image_size": 64}

    runs = mlflow.MlflowClient(uri).search_runs([mlflow.get_experiment_by_name("mrnet").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "mrnet_predict"
    tags, metrics = runs[0].data.tags, runs[0].data.metrics
    assert tags["training_run_id.meniscus_sagittal"] == "run-8"
    assert tags["checkpoint_sha256.abnormal_axial"] == file_sha256(models["checkpoints"][0])
    assert (metrics["n_predicted"], metrics["n_excluded"]) == (2, 2)


def _refused(models, new_exams, tmp_path):
    from medflow.mrnet.predict import PredictParams, predict_new_exams

    with pytest.raises(InputError) as err:
        predict_new_exams(models, _outputs(tmp_path / "out"), PredictParams(input=str(new_exams)), _new_job())
    assert not (tmp_path / "out" / "predictions.csv").exists()
    return err.value


def test_a_checkpoint_of_another_pipeline_task_or_fold_is_refused(models, new_exams, tmp_path):
    slot = models["checkpoints"][1]  # abnormal / coronal
    for meta, words in [
        ({**_meta("abnormal", "coronal"), "pipeline": "oct"}, "checkpoint of pipeline 'oct', not 'mrnet'"),
        ({k: v for k, v in _meta("abnormal", "coronal").items() if k != "pipeline"}, "checkpoint of pipeline None"),
        (_meta("acl", "coronal"), "not the abnormal/coronal model trained on all train exams: task 'acl'"),
        (_meta("abnormal", "coronal", fold="0"), "fold '0' (expected 'all')"),
        (_meta("abnormal", "coronal", preprocessing=None), "records no preprocessing parameters"),
    ]:
        _save_checkpoint(slot, meta, seed=1)
        err = _refused(models, new_exams, tmp_path)
        assert err.path == str(slot) and words in err.problem, err.problem


def test_a_stacker_of_other_plane_models_or_another_task_is_refused(models, new_exams, tmp_path):
    from medflow.mrnet.stacking import Stacker

    _save_checkpoint(models["checkpoints"][3], _meta("acl", "axial"), seed=99)  # retrained, not re-evaluated
    err = _refused(models, new_exams, tmp_path)
    assert err.path == str(models["stackers"][1]) and err.problem.startswith("fitted with other axial model(s)")
    acl = Stacker.load(models["stackers"][1])
    acl.extra = {"task": "meniscus", "pipeline": "mrnet"}
    acl.save(models["stackers"][1])
    err = _refused(models, new_exams, tmp_path)
    assert err.path == str(models["stackers"][1]) and "task 'meniscus', not 'mrnet', 'acl'" in err.problem


def test_a_folder_without_exams_is_one_input_error(models, tmp_path):
    empty = tmp_path / "empty"
    for plane in PLANES:
        (empty / plane).mkdir(parents=True)
    err = _refused(models, empty, tmp_path)
    assert type(err) is InputError and err.path == str(empty) and err.problem.startswith("no exams")
