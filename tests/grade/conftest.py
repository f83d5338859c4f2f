"""Small stacked BraTS cases in the contract of brats_stack (results/brats/stack/{case}.h5, read by
``medflow.preprocess.stack.read_stack``): ``image`` float32 (4, Z, Y, X) flair, t1, t1ce, t2; ``label`` uint8
(Z, Y, X) with 4 stored as 3; the attributes stack_case writes. HGG cases carry a bright T1ce ring, LGG cases
none, so a model can learn."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from medflow.ingest.brats import MODALITIES


def make_stack(path, case, grade, seed, shape=(10, 32, 32), tumour_z=(3, 8), radius=6):
    """Write one stacked case; the tumour spans slices ``tumour_z`` [start, stop), largest in the middle.
    The stack is slices [2, 2 + Z) of a 1 mm volume of Z + 4 slices."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    cy, cx = shape[1] / 2, shape[2] / 2
    brain = ((y - cy) / (shape[1] * 0.42)) ** 2 + ((x - cx) / (shape[2] * 0.42)) ** 2 < 1
    image = np.zeros((4, *shape), np.float32)
    scale = np.array([300.0, 500.0, 600.0, 800.0])[:, None, None, None]
    image[:] = brain * scale * (1 + 0.05 * rng.standard_normal((4, *shape)))
    label = np.zeros(shape, np.uint8)
    mid = (tumour_z[0] + tumour_z[1] - 1) / 2
    for k in range(*tumour_z):
        r = radius * (1 - 0.6 * abs(k - mid) / max(1, (tumour_z[1] - tumour_z[0]) / 2))
        d = np.hypot(y[k] - cy, x[k] - cx - 3)
        label[k][d < r] = 2
        label[k][d < r * 0.5] = 1
        if grade == "HGG":
            ring = (d < r * 0.75) & (d >= r * 0.5)
            label[k][ring] = 3
            image[2, k][ring] *= 2.5
    image[0][label > 0] *= 1.6  # oedema bright in FLAIR
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image, chunks=(1, *shape))
        f.create_dataset("label", data=label)
        f.attrs["case_id"] = case
        f.attrs["modalities"] = json.dumps(list(MODALITIES))
        f.attrs["spacing_zyx"] = np.ones(3)
        f.attrs["affine"] = np.diag([-1.0, -1.0, 1.0, 1.0])
        f.attrs["original_shape_zyx"] = np.array([shape[0] + 4, *shape[1:]], dtype=np.int64)
        f.attrs["kept_z_range"] = np.array([2, 2 + shape[0]], dtype=np.int64)
        f.attrs["source_files"] = json.dumps([f"{case}_{m}.nii.gz" for m in (*MODALITIES, "seg")])
    return path


@pytest.fixture(scope="session")
def cases(tmp_path_factory):
    """16 cases (8 HGG, 8 LGG): 4 + 4 train, 1 + 1 val, 3 + 3 test (enough test patients for most bootstrap
    resamples to hold both grades); returns (stacks dict, split csv path)."""
    tmp = tmp_path_factory.mktemp("grade")
    (tmp / "stack").mkdir()
    rows, stacks = [], {}
    plan = ["train"] * 4 + ["val"] + ["test"] * 3
    for i in range(2 * len(plan)):
        case = f"BraTS20_Training_{i + 1:03d}"
        grade = "HGG" if i % 2 == 0 else "LGG"
        split = plan[i // 2]
        stacks[case] = str(make_stack(tmp / "stack" / f"{case}.h5", case, grade, seed=i, tumour_z=(2 + i % 3, 8)))
        rows.append({"id": case, "split": split, "grade": grade})
    split_csv = tmp / "split.csv"
    pd.DataFrame(rows).to_csv(split_csv, index=False)
    return stacks, split_csv


TRAIN = {
    "weights": "none",
    "conv1_init": "mean",
    "epochs": 2,
    "patience": 0,
    "monitor": "val_auc",
    "batch_size": 8,
    "lr": 0.001,
    "weight_decay": 0.0,
    "class_weights": "balanced",
    "augment": {"hflip": True, "intensity": 0.1},
}
BOOTSTRAP = {"bootstrap_samples": 200, "confidence": 0.9}
# What shaped the fixture's stacks, as brats_grade_train records it (brats.n4 and brats.trim of the rule).
STACK_PREP = {
    "n4": {"shrink_factor": 4, "iterations": [50, 50], "convergence_threshold": 0.001},
    "trim": {"margin": 0},
}
SLICES = {"select": "top_k", "top_k": 3, "min_tumour_pixels": 5, "size": 64}  # 64 px: ResNet18's layer4 is 2 x 2
EVAL_OUTPUTS = {
    "metrics": "metrics.json",
    "patients": "patients.csv",
    "slices": "slice_predictions.csv",
    "roc": "roc.png",
    "confusion": "confusion.png",
    "cams": "cams",
}


@pytest.fixture(scope="session")
def run(cases, tmp_path_factory):
    """slices -> brats_grade_train (mean rule, 2 epochs) -> brats_grade_evaluate (max rule) on ``cases``, with
    MLflow, and every call of ``medflow.train.predict`` made through ``medflow.grade.predict`` recorded
    (``calls``: its bf16 flag, the stage and its outputs), and the arguments of the evaluation's ``headline``.
    bf16 is False so that passing the job's flag is told apart from predict's default."""
    import mlflow  # noqa: F401  (the store below needs it importable)
    import torch

    from medflow import tracking
    from medflow.grade import evaluate as grade_evaluate
    from medflow.grade import predict as grade_predict
    from medflow.grade.evaluate import EvaluateParams, evaluate
    from medflow.grade.slices import write_slices
    from medflow.grade.train import TrainParams, train
    from medflow.params import from_config
    from medflow.train import Job

    stacks, split_csv = cases
    tmp = tmp_path_factory.mktemp("graderun")
    uri = tracking.resolve_uri("", str(tmp))
    tracking.create_store(uri)
    calls, stage = [], {"name": None}
    real = grade_predict.predict

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append({"stage": stage["name"], "bf16": kwargs.get("bf16"), "out": out})
        return out

    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setattr(grade_predict, "predict", spy)
    headline_args = []
    real_headline = grade_evaluate.headline
    mp.setattr(grade_evaluate, "headline", lambda *a, **kw: headline_args.append((a, kw)) or real_headline(*a, **kw))
    torch.set_num_threads(1)
    try:
        write_slices(stacks, split_csv, tmp / "slices.h5", **SLICES)
        stage["name"] = "train"
        result = train(
            {"slices": tmp / "slices.h5"},
            {"checkpoint": tmp / "model.pt", "curves": tmp / "curves.png"},
            from_config(TrainParams, {"train": TRAIN, "aggregate": "mean", "stack": STACK_PREP}),
            Job(threads=1, seed=0, bf16=False, rule="brats_grade_train"),
        )
        stage["name"] = "evaluate"
        outputs = {k: tmp / name for k, name in EVAL_OUTPUTS.items()}
        params = from_config(
            EvaluateParams,
            {"aggregate": "max", "evaluate": {"threshold": 0.5, "batch_size": 16}, "bootstrap": BOOTSTRAP, "cams": 3},
        )
        metrics = evaluate(
            {"slices": tmp / "slices.h5", "split": split_csv, "checkpoint": tmp / "model.pt"},
            outputs,
            params,
            Job(threads=1, seed=3, bf16=False, rule="brats_grade_evaluate"),
        )
    finally:
        mp.undo()
    return {
        "tmp": tmp,
        "uri": uri,
        "result": result,
        "metrics": metrics,
        "split": pd.read_csv(split_csv),
        "calls": calls,
        "headline_args": headline_args,
        "outputs": outputs,
        "params": params,
        "seed": 3,
    }
