"""Evaluate the grade classifier on the test cases, at patient level (the headline) and slice level.

Slice P(HGG) are aggregated per patient with the configured rule; a patient is called HGG when its
aggregated probability reaches ``threshold``. Test cases without eligible slices cannot be scored:
they are counted in the metrics (``n_cases_without_slices``), never silently dropped.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import h5py
import pandas as pd
from torch.utils.data import DataLoader

from medflow import io
from medflow.errors import InputError
from medflow.evaluation.classification import binary_report, plot_confusion, plot_roc
from medflow.grade.aggregate import aggregate
from medflow.grade.data import GradeSlices, read_index
from medflow.grade.train import CLASSES, load_model, predict
from medflow.ingest.splits import read_split
from medflow.train import load_checkpoint, loader_kwargs, select_device

log = logging.getLogger(__name__)


def evaluate(
    slices_path: str | os.PathLike,
    split_path: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    *,
    metrics_path: str | os.PathLike,
    patients_path: str | os.PathLike,
    slices_out_path: str | os.PathLike,
    roc_path: str | os.PathLike,
    confusion_path: str | os.PathLike,
    aggregate_rule: str,
    threshold: float,
    batch_size: int,
    threads: int,
    rule: str | None = "grade_evaluate",
    track: bool = True,
) -> dict:
    """Write metrics JSON (``patient`` and ``slice`` sections), per-patient and per-slice prediction
    CSVs, the ROC PNG (patient and slice curves) and the patient confusion matrix PNG."""
    device = select_device(threads)
    ckpt = load_checkpoint(checkpoint_path)
    model = load_model(ckpt).to(device)
    index = read_index(slices_path)
    ds = GradeSlices(slices_path, "test", None, index=index)
    if len(ds) == 0:
        raise InputError(slices_path, "no test slices")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, **loader_kwargs(device, threads))
    prob, y, idx = predict(model, loader, device)
    cases = ds.cases[idx]

    patients = aggregate(cases, prob, aggregate_rule, labels=y)
    patients["pred"] = (patients["prob"] >= threshold).astype(int)
    patient = binary_report(patients["label"], patients["prob"], threshold)
    slice_ = binary_report(y, prob, threshold)
    split = read_split(split_path)
    test_cases = set(split.loc[split["split"] == "test", "id"])
    with h5py.File(slices_path, "r") as f:
        without = sorted(set(json.loads(f.attrs["cases_without_slices"])) & test_cases)
    if without:
        log.warning("%d test cases had no eligible slices and are not scored", len(without))
    cm = plot_confusion(patients["label"], patients["pred"], CLASSES, confusion_path, title=f"Grade, patients (n={len(patients)})")
    plot_roc(
        {f"patients ({aggregate_rule})": (patients["label"], patients["prob"]), "slices": (y, prob)},
        roc_path,
        title="LGG vs HGG (test)",
    )
    metrics = {
        "patient": {**patient, "confusion_matrix": cm.tolist()},
        "slice": {"auc": slice_["auc"], "accuracy": slice_["accuracy"], "balanced_accuracy": slice_["balanced_accuracy"], "n": slice_["n"]},
        "aggregate": aggregate_rule,
        "threshold": float(threshold),
        "positive_class": "HGG",
        "classes": CLASSES,
        "n_cases_without_slices": len(without),
        "checkpoint_epoch": int(ckpt["epoch"]),
    }
    io.write_json(metrics_path, metrics)
    out = patients.rename(columns={"prob": "prob_hgg"})
    out.insert(1, "grade", [CLASSES[v] for v in out.pop("label")])
    out["pred"] = [CLASSES[v] for v in out["pred"]]
    with io.atomic_path(patients_path) as tmp:
        out.to_csv(tmp, index=False, float_format="%.6f")
    slices = pd.DataFrame({"id": cases, "z": index["z"][ds.rows[idx]], "tumour_pixels": index["tumour_pixels"][ds.rows[idx]],
                           "grade": [CLASSES[v] for v in y], "prob_hgg": prob})
    with io.atomic_path(slices_out_path) as tmp:
        slices.to_csv(tmp, index=False, float_format="%.6f")
    log.info("patients: AUC %.3f balanced accuracy %.3f (n=%d, %s rule); slices: AUC %.3f (n=%d)",
             patient["auc"], patient["balanced_accuracy"], patient["n"], aggregate_rule, slice_["auc"], slice_["n"])

    if track:
        import mlflow

        from medflow import tracking

        flat = {f"test_patient_{k}": v for k, v in patient.items()}
        flat.update({"test_slice_auc": slice_["auc"], "test_slice_n": slice_["n"]})
        with tracking.run("brats_grade", "resnet18-test", params={"aggregate": aggregate_rule, "threshold": threshold},
                          tags={"training_run_id": ckpt["mlflow_run_id"]}, rule=rule):
            mlflow.log_metrics({k: float(v) for k, v in flat.items() if v == v})
            for p in (metrics_path, roc_path, confusion_path, patients_path):
                mlflow.log_artifact(str(Path(p)), artifact_path="evaluation")
    return metrics
