"""Per task: gather the plane models' predictions, fit the stacker, evaluate on the valid exams.

Stacking data (``fit_on``):

- ``out_of_fold`` (default): each train exam's plane probabilities come from the fold model that did
  not train on it; the valid exams' from the models trained on all train exams.
- ``in_sample`` (the MRNet tutorial): the all-train models' probabilities for their own training
  exams, which makes the plane weights optimistic; kept for comparison.

Outputs: ``metrics.json`` (valid AUC, accuracy, sensitivity, specificity at 0.5 per plane and for the
stack, via :mod:`medflow.evaluation.classification`), a predictions CSV (id, label, one probability
per plane, stacked), one ROC PNG of the three planes and the stack, and the stacker JSON.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping

import pandas as pd

from medflow import io
from medflow.errors import InputError
from medflow.evaluation.classification import binary_report, plot_roc
from medflow.ingest import mrnet as ingest
from medflow.mrnet.stacking import Stacker

log = logging.getLogger(__name__)

FIT_ON = ("out_of_fold", "in_sample")


@dataclass
class Outputs:
    metrics: str | os.PathLike
    predictions: str | os.PathLike
    roc: str | os.PathLike
    stacker: str | os.PathLike


def _read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str, "role": str})


def out_of_fold(fold_predictions: Mapping[str, str | os.PathLike], folds: pd.DataFrame) -> pd.DataFrame:
    """One plane's held-out predictions of every fold model -> one row per train exam (id, label, prob).

    Checks the contract the stacker relies on: fold ``f``'s model predicted exactly the exams of
    fold ``f`` (so no exam is predicted by a model that trained on it) and every train exam once.
    """
    train = folds[folds["split"] == "train"]
    if not fold_predictions:
        raise ValueError("no out-of-fold prediction files: out-of-fold stacking needs the fold models' predictions")
    parts = []
    for fold, path in sorted(fold_predictions.items()):
        df = _read_predictions(path)
        df = df[df["role"] == "heldout"]
        expected = set(train.loc[train["fold"] == str(fold), "id"])
        if set(df["id"]) != expected or df["id"].duplicated().any():
            raise InputError(path, f"held-out predictions do not match fold {fold} of the fold file "
                                   f"({len(df)} rows for {len(expected)} exams): rerun its training")
        parts.append(df)
    oof = pd.concat(parts, ignore_index=True)
    missing = set(train["id"]) - set(oof["id"])
    if missing:
        raise ValueError(f"no out-of-fold prediction for {len(missing)} train exams (folds given: {sorted(fold_predictions)})")
    return oof[["id", "label", "prob"]]


def _role(path, role: str) -> pd.DataFrame:
    df = _read_predictions(path)
    df = df[df["role"] == role]
    if df.empty:
        raise InputError(path, f"no {role!r} predictions")
    return df[["id", "label", "prob"]]


def _table(per_plane: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """plane -> (id, label, prob) frames -> one frame: id, label, <plane>... (exams in every plane)."""
    out = None
    for plane, df in per_plane.items():
        df = df.rename(columns={"prob": plane})
        out = df if out is None else out.merge(df, on=["id", "label"], how="inner", validate="one_to_one")
    sizes = {p: len(df) for p, df in per_plane.items()}
    if len(set(sizes.values())) != 1 or len(out) != next(iter(sizes.values())):
        raise ValueError(f"plane predictions cover different exams or disagree on labels: {sizes}, {len(out)} in common")
    return out.sort_values("id").reset_index(drop=True)


def evaluate_task(task: str, predictions: Mapping[str, Mapping[str, str | os.PathLike]], folds_path: str | os.PathLike,
                  outputs: Outputs, *, fit_on: str = "out_of_fold", C: float = 1.0, class_weight: str = "balanced", seed: int = 0,
                  run_ids: Mapping[str, Mapping[str, str]] | None = None, tracking: bool = True) -> dict:
    """``predictions``: plane -> fold (``all``, ``0``...) -> predictions CSV of that training job.
    ``run_ids``: plane -> fold -> MLflow run id of the training, used to link the evaluation run."""
    if fit_on not in FIT_ON:
        raise ValueError(f"mrnet.stacking.fit_on must be one of {FIT_ON}, got {fit_on!r}")
    folds = ingest.read_folds(folds_path)
    planes = list(predictions)
    valid = _table({p: _role(predictions[p]["all"], "valid") for p in planes})
    if fit_on == "out_of_fold":
        fit_set = _table({p: out_of_fold({f: path for f, path in predictions[p].items() if f != "all"}, folds) for p in planes})
    else:
        fit_set = _table({p: _role(predictions[p]["all"], "in_sample") for p in planes})

    stacker = Stacker.fit(fit_set[planes], fit_set["label"], C=C, class_weight=class_weight, fit_on=fit_on, seed=seed)
    stacker.extra = {"task": task}
    valid["stacked"] = stacker.predict_proba(valid[planes])
    curves = {p: (valid["label"], valid[p]) for p in [*planes, "stacked"]}
    metrics = {
        "task": task,
        "n_valid": int(len(valid)),
        "n_valid_positive": int(valid["label"].sum()),
        "planes": {p: binary_report(valid["label"], valid[p]) for p in planes},
        "stacked": binary_report(valid["label"], valid["stacked"]),
        "stacking": {"fit_on": fit_on, "C": C, "class_weight": class_weight, "n_fit": stacker.n_fit, "planes": planes, "coef": stacker.coef,
                     "intercept": stacker.intercept,
                     "fit_set_auc": {p: binary_report(fit_set["label"], fit_set[p])["auc"] for p in planes}},
    }
    stacker.save(outputs.stacker)
    with io.atomic_path(outputs.predictions) as tmp:
        valid[["id", "label", *planes, "stacked"]].to_csv(tmp, index=False, float_format="%.6f")
    plot_roc(curves, outputs.roc, title=f"MRNet {task}: valid exams")
    io.write_json(outputs.metrics, metrics)
    log.info("%s: valid AUC %s | stacked %.3f (stacker fitted %s on %d exams, coef %s)", task,
             ", ".join(f"{p} {metrics['planes'][p]['auc']:.3f}" for p in planes), metrics["stacked"]["auc"], fit_on,
             stacker.n_fit, [round(c, 3) for c in stacker.coef])
    if tracking:
        _track(task, metrics, outputs, run_ids or {})
    return metrics


def _track(task: str, metrics: dict, outputs: Outputs, run_ids: Mapping[str, Mapping[str, str]]) -> None:
    import mlflow

    from medflow import tracking

    tags = {"task": task}
    alls = [run_ids[p]["all"] for p in run_ids if run_ids[p].get("all")]
    if alls:
        tags["training_run_id"] = ",".join(alls)  # the models whose valid predictions are evaluated
    for plane, by_fold in run_ids.items():
        for fold, rid in by_fold.items():
            if rid:
                tags[f"training_run_id.{plane}.fold_{fold}"] = rid
    st = metrics["stacking"]
    params = {"task": task, "fit_on": st["fit_on"], "C": st["C"], "class_weight": st["class_weight"], "planes": ",".join(st["planes"])}
    with tracking.run("mrnet", f"{task}-stack", params=params, tags=tags, rule="mrnet_evaluate"):
        flat = {f"valid_{k}_{p}": v for p, rep in metrics["planes"].items() for k, v in rep.items()}
        flat.update({f"valid_{k}_stacked": v for k, v in metrics["stacked"].items()})
        flat.update({f"stack_coef_{p}": c for p, c in zip(st["planes"], st["coef"])})
        mlflow.log_metrics({k: float(v) for k, v in flat.items() if v == v})  # NaN-free
        for path, folder in ((outputs.metrics, "metrics"), (outputs.roc, "plots"), (outputs.stacker, "stacker"),
                             (outputs.predictions, "predictions")):
            mlflow.log_artifact(str(path), artifact_path=folder)


SUMMARY_COLUMNS = ["task", "n_valid", "n_valid_positive", "auc_axial", "auc_coronal", "auc_sagittal", "auc_stacked",
                   "accuracy_stacked", "sensitivity_stacked", "specificity_stacked", "stacker_fit_on"]


def summarise(metrics_paths: Mapping[str, str | os.PathLike], out_csv: str | os.PathLike) -> pd.DataFrame:
    """task -> metrics.json -> one table (a row per task), written as CSV."""
    rows = []
    for task, path in metrics_paths.items():
        m = io.read_json(path)
        row = {"task": task, "n_valid": m["n_valid"], "n_valid_positive": m["n_valid_positive"],
               **{f"auc_{p}": rep["auc"] for p, rep in m["planes"].items()}}
        row.update({f"{k}_stacked": m["stacked"][k] for k in ("auc", "accuracy", "sensitivity", "specificity")})
        row["stacker_fit_on"] = m["stacking"]["fit_on"]
        rows.append(row)
    df = pd.DataFrame(rows)
    df = df[[c for c in SUMMARY_COLUMNS if c in df.columns]]
    with io.atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")
    return df
