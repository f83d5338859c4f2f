"""Evaluate the grade classifier on the test cases, at patient level (the headline) and slice level.

Slice P(HGG) (:func:`medflow.grade.predict.predict_slices`) are aggregated per patient with the configured
rule; a patient is called HGG when its aggregated probability reaches ``threshold``. Test cases without
eligible slices cannot be scored: they are counted in the metrics (``n_cases_without_slices``), never
silently dropped.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from medflow import io
from medflow.errors import InputError
from medflow.evaluation.classification import binary_report, plot_confusion, plot_roc
from medflow.evaluation.headline import Bootstrap, auc_metric, bootstrap_metric
from medflow.grade.aggregate import aggregate
from medflow.grade.data import GradeSlices, read_index
from medflow.grade.model import CLASSES, load_model
from medflow.grade.predict import predict_slices
from medflow.ingest.splits import read_split
from medflow.train import Job, load_checkpoint, loader_kwargs, select_device

log = logging.getLogger(__name__)

EXPERIMENT = "brats_grade"
RULE = "brats_grade_evaluate"  # the MLflow run name when no rule is given (library callers)


@dataclass(frozen=True)
class EvaluateBlock:
    """``brats.grade.evaluate``: patient called HGG at aggregated P(HGG) >= ``threshold``; slices per batch."""

    threshold: float
    batch_size: int


@dataclass(frozen=True)
class EvaluateParams:
    """What ``brats_grade_evaluate`` passes: ``aggregate`` (brats.grade.aggregate), ``evaluate``, ``bootstrap``
    and ``cams`` (evaluation.cams: test patients drawn as Grad-CAM PNGs; 0: none)."""

    aggregate: str
    evaluate: EvaluateBlock
    bootstrap: Bootstrap
    cams: int = 0


def cam_patients(patients: pd.DataFrame, n: int) -> list[str]:
    """Up to ``n`` test patients to draw (rows ``id``, ``label``): by id, HGG and LGG taking turns so both
    grades are shown while both last."""
    by_grade = [patients.loc[patients["label"] == g, "id"].sort_values().tolist() for g in (1, 0)]
    order = [c for pair in zip(*by_grade) for c in pair]
    longer = max(by_grade, key=len)
    order += longer[min(map(len, by_grade)) :]
    return order[: max(0, int(n))]


def write_cams(
    model, slices_path, rows: np.ndarray, cases: np.ndarray, prob: np.ndarray, patients: pd.DataFrame, n: int, out_dir
) -> list[Path]:
    """Grad-CAM PNGs ``<case>.png`` in ``out_dir`` of up to ``n`` test patients (:func:`cam_patients`): their
    highest-P(HGG) slices (:func:`medflow.grade.predict.save_case_cam`), titled with the patient's P(HGG) and
    true grade. ``rows`` (N,): slice-file rows of the predicted slices, ``cases``/``prob`` (N,) beside them."""
    from medflow.grade.predict import save_case_cam

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    z_all = read_index(slices_path)["z"]
    by_id = patients.set_index("id")
    paths = []
    with h5py.File(slices_path, "r") as f:
        for case in cam_patients(patients, n):
            mine = np.flatnonzero(cases == case)
            mine = mine[np.argsort(rows[mine])]  # h5py reads rows in increasing order
            x = f["image"][rows[mine]]
            p, grade = float(by_id.at[case, "prob"]), CLASSES[int(by_id.at[case, "label"])]
            path = out_dir / f"{case}.png"
            save_case_cam(model, x, prob[mine], z_all[rows[mine]], path, title=f"{case}: P(HGG) {p:.2f} / true {grade}")
            paths.append(path)
    return paths


def headline(y: np.ndarray, prob: np.ndarray, threshold: float, bootstrap: Bootstrap, seed: int) -> dict:
    """``auc`` and ``balanced_accuracy`` of the test patients (one row each: grade (P,) 1 = HGG, aggregated
    P(HGG) (P,)), each ``{value, ci_low, ci_high, n}`` with a seeded percentile bootstrap over patients.

    ``value`` is ``binary_report``'s figure. A resample holding one grade has no balanced accuracy (one of
    its two rates is undefined) and is skipped, as it is for the AUC.
    """
    kw = bootstrap.kwargs(seed)

    def balanced_accuracy(y_, p_):
        if len(np.unique(y_)) < 2:
            return float("nan")
        return binary_report(y_, p_, threshold)["balanced_accuracy"]

    bacc = bootstrap_metric(balanced_accuracy, y, prob, **kw)
    # With a one-grade test set the value stays binary_report's (the one defined rate), as in the patient block.
    bacc["value"] = binary_report(y, prob, threshold)["balanced_accuracy"]
    return {"auc": auc_metric(y, prob, **kw), "balanced_accuracy": bacc}


def evaluate(
    inputs: Mapping[str, str | os.PathLike], outputs: Mapping[str, str | os.PathLike], params: EvaluateParams, job: Job
) -> dict:
    """Score the test slices and patients; returns the metrics written.

    ``inputs``: ``slices`` (slice HDF5), ``split`` (split CSV), ``checkpoint``. ``outputs``: ``metrics``
    (JSON: ``headline``, ``patient`` and ``slice`` sections), ``patients`` and ``slices`` (per-patient and
    per-slice prediction CSVs), ``roc`` (PNG, patient and slice curves), ``confusion`` (PNG, patients) and
    ``cams`` (folder of Grad-CAM PNGs of ``params.cams`` test patients, drawn after every figure is computed).
    Predictions run with ``job.bf16``; the headline bootstrap is seeded with ``job.seed``. MLflow run
    ``job.rule`` in experiment ``brats_grade``, tagged with the checkpoint's training run.
    """
    slices_path, split_path = inputs["slices"], inputs["split"]
    aggregate_rule, threshold = params.aggregate, float(params.evaluate.threshold)
    device = select_device(job.threads)
    ckpt = load_checkpoint(inputs["checkpoint"])
    model = load_model(ckpt).to(device)
    index = read_index(slices_path)
    ds = GradeSlices(slices_path, "test", None, index=index)
    if len(ds) == 0:
        raise InputError(slices_path, "no test slices")
    loader = DataLoader(
        ds, batch_size=int(params.evaluate.batch_size), shuffle=False, **loader_kwargs(device, job.threads)
    )
    prob, y, idx = predict_slices(model, loader, device, bf16=job.bf16)
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
    cm = plot_confusion(
        patients["label"], patients["pred"], CLASSES, outputs["confusion"], title=f"Grade, patients (n={len(patients)})"
    )
    plot_roc(
        {f"patients ({aggregate_rule})": (patients["label"], patients["prob"]), "slices": (y, prob)},
        outputs["roc"],
        title="LGG vs HGG (test)",
    )
    metrics = {
        "headline": headline(
            patients["label"].to_numpy(), patients["prob"].to_numpy(), threshold, params.bootstrap, job.seed
        ),
        "patient": {**patient, "confusion_matrix": cm.tolist()},
        "slice": {k: slice_[k] for k in ("auc", "accuracy", "balanced_accuracy", "n")},
        "aggregate": aggregate_rule,
        "threshold": threshold,
        "positive_class": "HGG",
        "classes": CLASSES,
        "n_cases_without_slices": len(without),
        "checkpoint_epoch": int(ckpt["epoch"]),
    }
    io.write_json(outputs["metrics"], metrics)
    out = patients.rename(columns={"prob": "prob_hgg"})
    out.insert(1, "grade", [CLASSES[v] for v in out.pop("label")])
    out["pred"] = [CLASSES[v] for v in out["pred"]]
    with io.atomic_path(outputs["patients"]) as tmp:
        out.to_csv(tmp, index=False, float_format="%.6f")
    rows = ds.rows[idx]
    slices = pd.DataFrame(
        {
            "id": cases,
            "z": index["z"][rows],
            "tumour_pixels": index["tumour_pixels"][rows],
            "grade": [CLASSES[v] for v in y],
            "prob_hgg": prob,
        }
    )
    with io.atomic_path(outputs["slices"]) as tmp:
        slices.to_csv(tmp, index=False, float_format="%.6f")
    if "cams" in outputs:
        write_cams(model, slices_path, rows, cases, prob, patients, params.cams, outputs["cams"])
    hl = metrics["headline"]
    log.info(
        "patients: AUC %.3f [%.3f, %.3f] balanced accuracy %.3f [%.3f, %.3f] (n=%d, %s rule); slices: AUC %.3f (n=%d)",
        *(hl[k][v] for k in ("auc", "balanced_accuracy") for v in ("value", "ci_low", "ci_high")),
        patient["n"],
        aggregate_rule,
        slice_["auc"],
        slice_["n"],
    )

    if job.track:
        from medflow import tracking

        extra = {f"patient_{k}": v for k, v in patient.items()}
        extra.update({"slice_auc": slice_["auc"], "slice_n": slice_["n"]})
        tracking.log_evaluation(
            EXPERIMENT,
            job.rule or RULE,
            headline=hl,
            training_run_id=ckpt["mlflow_run_id"],
            artifacts=[outputs[k] for k in ("metrics", "roc", "confusion", "patients")],
            params={"aggregate": aggregate_rule, "threshold": threshold},
            rule=job.rule,
            extra_metrics=extra,
        )
    return metrics
