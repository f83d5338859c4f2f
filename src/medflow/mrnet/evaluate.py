"""Per task: gather the plane models' predictions, fit the stacker, evaluate on the valid exams.

Stacking data (``fit_on``):

- ``out_of_fold`` (default): each train exam's plane probabilities come from the fold model that did
  not train on it; the valid exams' from the models trained on all train exams.
- ``in_sample`` (the MRNet tutorial): the all-train models' probabilities for their own training
  exams, which makes the plane weights optimistic; kept for comparison.

Outputs: ``metrics.json`` (a ``headline`` block: valid AUC of the stack, ``auc``, and of each plane,
``auc_<plane>``, with a bootstrap interval over the valid exams; then accuracy, sensitivity and
specificity at 0.5 per plane and for the stack, via :mod:`medflow.evaluation.classification`), a
predictions CSV (id, label, one probability per plane, stacked), one ROC PNG of the three planes and
the stack, the stacker JSON (which records the task and the SHA-256 of the plane models it stacks, checked
by the predict stage) and class-activation maps (``cams/<exam>.png``, ``medflow.mrnet.cam``) of the valid
exams with the highest stacked probability. ``summarise`` merges the tasks into one table and one headline.
The plane models' probabilities themselves come from the training jobs (``medflow.mrnet.predict``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medflow import io
from medflow.errors import InputError
from medflow.evaluation.classification import binary_report, plot_roc
from medflow.evaluation.headline import Bootstrap, auc_metric, read_headline
from medflow.ingest import mrnet as ingest
from medflow.mrnet.stacking import Stacker
from medflow.train import Job

log = logging.getLogger(__name__)

FIT_ON = ("out_of_fold", "in_sample")
RULE = "mrnet_evaluate"  # run name and rule tag when called outside Snakemake


@dataclass(frozen=True)
class EvaluateConfig:
    """``mrnet.evaluate``: the stacker's fitting set (``out_of_fold`` | ``in_sample``), its inverse L2
    strength ``C`` and ``class_weight`` (``balanced`` | ``none``)."""

    fit_on: str = "out_of_fold"
    C: float = 1.0
    class_weight: str = "balanced"


@dataclass(frozen=True)
class EvaluateParams:
    """One task's evaluation: ``task`` (the rule's wildcard), the ``planes`` and training ``folds``
    (``all`` and, out of fold, ``0..k-1``) whose files the inputs list plane by plane, fold by fold;
    ``root`` and ``cams`` for the class-activation maps."""

    task: str
    planes: tuple[str, ...] = ingest.PLANES
    folds: tuple[str, ...] = ("all",)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    bootstrap: Bootstrap = field(default_factory=Bootstrap)
    root: str = ""  # the MRNet-v1.0 folder, whose valid series the maps are drawn on
    cams: int = 0  # config evaluation.cams: valid exams drawn with their class-activation maps


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
            raise InputError(
                path,
                f"held-out predictions do not match fold {fold} of the fold file "
                f"({len(df)} rows for {len(expected)} exams): rerun its training",
            )
        parts.append(df)
    oof = pd.concat(parts, ignore_index=True)
    missing = set(train["id"]) - set(oof["id"])
    if missing:
        raise ValueError(
            f"no out-of-fold prediction for {len(missing)} train exams (folds given: {sorted(fold_predictions)})"
        )
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
        raise ValueError(
            f"plane predictions cover different exams or disagree on labels: {sizes}, {len(out)} in common"
        )
    return out.sort_values("id").reset_index(drop=True)


def _by_plane_and_fold(paths: Sequence[str | os.PathLike], planes: Sequence[str], folds: Sequence[str]) -> dict:
    """The rule's flat list of one file per plane x fold (plane by plane) -> plane -> fold -> path."""
    keys = [(p, f) for p in planes for f in folds]
    if len(paths) != len(keys):
        raise ValueError(f"expected {len(keys)} files ({len(planes)} planes x folds {list(folds)}), got {len(paths)}")
    out: dict[str, dict[str, str | os.PathLike]] = {p: {} for p in planes}
    for (plane, fold), path in zip(keys, paths):
        out[plane][str(fold)] = path
    return out


def _run_id(summary_path: str | os.PathLike) -> str:
    """The MLflow run id a training job's train.json records ("" when it ran without MLflow)."""
    summary = io.read_json(summary_path)
    if "mlflow_run_id" not in summary:
        raise InputError(summary_path, "no mlflow_run_id: not a train.json of mrnet_train")
    return summary["mlflow_run_id"]


def evaluate(inputs: Mapping, outputs: Mapping[str, str | os.PathLike], params: EvaluateParams, job: Job) -> dict:
    """Stack and evaluate one task; writes ``outputs`` and returns the metrics.

    ``inputs``: ``folds`` (the fold CSV), ``predictions`` and ``summaries`` (the training jobs'
    predictions CSVs and train.json files, plane by plane, fold by fold, as ``params.planes`` x
    ``params.folds``) and, optionally, ``checkpoints`` (the all-train plane models, in ``params.planes``
    order: their hashes go into the stacker, and the maps are theirs). ``outputs``: ``metrics``,
    ``predictions``, ``roc``, ``stacker`` and, optionally, ``cams`` (a folder of up to ``params.cams``
    PNGs, created empty without checkpoints or with ``cams`` 0). The headline intervals resample the
    valid exams (``params.bootstrap``, seeded by ``job.seed``)."""
    st = params.evaluate
    if st.fit_on not in FIT_ON:
        raise ValueError(f"mrnet.evaluate.fit_on must be one of {FIT_ON}, got {st.fit_on!r}")
    if "all" not in params.folds:
        raise ValueError(f"folds {list(params.folds)} lack 'all': the all-train models predict the valid exams")
    task, planes = params.task, list(params.planes)
    predictions = _by_plane_and_fold(inputs["predictions"], planes, params.folds)
    run_ids = {
        p: {f: _run_id(path) for f, path in by.items()}
        for p, by in _by_plane_and_fold(inputs["summaries"], planes, params.folds).items()
    }
    folds = ingest.read_folds(inputs["folds"])
    valid = _table({p: _role(predictions[p]["all"], "valid") for p in planes})
    if st.fit_on == "out_of_fold":
        fit_set = _table(
            {p: out_of_fold({f: path for f, path in predictions[p].items() if f != "all"}, folds) for p in planes}
        )
    else:
        fit_set = _table({p: _role(predictions[p]["all"], "in_sample") for p in planes})

    stacker = Stacker.fit(
        fit_set[planes], fit_set["label"], C=st.C, class_weight=st.class_weight, fit_on=st.fit_on, seed=job.seed
    )
    ckpt_files = list(inputs.get("checkpoints") or [])
    if ckpt_files and len(ckpt_files) != len(planes):
        raise ValueError(f"expected one checkpoint per plane {planes}, got {ckpt_files}")
    checkpoints = dict(zip(planes, ckpt_files))
    stacker.extra = {"task": task, "pipeline": "mrnet"}
    if checkpoints:
        from medflow.lineage import file_sha256

        stacker.extra["checkpoint_sha256"] = {p: file_sha256(path) for p, path in checkpoints.items()}
    valid["stacked"] = stacker.predict_proba(valid[planes])
    curves = {p: (valid["label"], valid[p]) for p in [*planes, "stacked"]}
    boot = params.bootstrap.kwargs(job.seed)
    headline = {
        "auc": auc_metric(valid["label"], valid["stacked"], **boot),
        **{f"auc_{p}": auc_metric(valid["label"], valid[p], **boot) for p in planes},
    }
    metrics = {
        "headline": headline,
        "task": task,
        "n_valid": int(len(valid)),
        "n_valid_positive": int(valid["label"].sum()),
        "planes": {p: binary_report(valid["label"], valid[p]) for p in planes},
        "stacked": binary_report(valid["label"], valid["stacked"]),
        "stacking": {
            "fit_on": st.fit_on,
            "C": st.C,
            "class_weight": st.class_weight,
            "n_fit": stacker.n_fit,
            "planes": planes,
            "coef": stacker.coef,
            "intercept": stacker.intercept,
            "fit_set_auc": {p: binary_report(fit_set["label"], fit_set[p])["auc"] for p in planes},
        },
    }
    stacker.save(outputs["stacker"])
    with io.atomic_path(outputs["predictions"]) as tmp:
        valid[["id", "label", *planes, "stacked"]].to_csv(tmp, index=False, float_format="%.6f")
    plot_roc(curves, outputs["roc"], title=f"MRNet {task}: valid exams")
    if "cams" in outputs:
        write_cams(valid, task, planes, checkpoints, params.root, params.cams, outputs["cams"])
    io.write_json(outputs["metrics"], metrics)
    log.info(
        "%s: valid AUC %s | stacked %.3f (stacker fitted %s on %d exams, coef %s)",
        task,
        ", ".join(f"{p} {metrics['planes'][p]['auc']:.3f}" for p in planes),
        metrics["stacked"]["auc"],
        st.fit_on,
        stacker.n_fit,
        [round(c, 3) for c in stacker.coef],
    )
    if job.track:
        _track(task, metrics, outputs, run_ids, job)
    return metrics


def write_cams(
    valid: pd.DataFrame,
    task: str,
    planes: Sequence[str],
    checkpoints: Mapping[str, str | os.PathLike],
    root: str | os.PathLike,
    n: int,
    folder: str | os.PathLike,
) -> list[Path]:
    """``<folder>/<exam>.png`` for the ``n`` valid exams (``valid``: id, label, one column per plane, stacked)
    of highest stacked probability: per plane, the slice that drives the max over slices with its map
    (``medflow.mrnet.cam``), drawn with that plane's all-train model (``checkpoints``: plane -> file) on the
    series under ``root``. The folder is created even when nothing is drawn; returns the PNGs written."""
    from medflow.mrnet.cam import save_exam_cams
    from medflow.mrnet.model import checkpoint_params, load_model
    from medflow.train import load_checkpoint

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not n or not checkpoints:
        return []
    models, sizes = {}, {}
    for plane, path in checkpoints.items():
        ckpt = load_checkpoint(path)
        models[plane], sizes[plane] = load_model(ckpt), checkpoint_params(ckpt).image_size
    written = []
    for _, r in valid.sort_values("stacked", ascending=False, kind="stable").head(int(n)).iterrows():
        per_plane = ", ".join(f"{p} {r[p]:.2f}" for p in planes)
        out = folder / f"{r['id']}.png"
        save_exam_cams(
            models,
            sizes,
            {p: ingest.npy_path(root, "valid", p, r["id"]) for p in planes},
            out,
            title=f"{task}: valid exam {r['id']}, label {int(r['label'])}, P {r['stacked']:.2f} ({per_plane})",
        )
        written.append(out)
    log.info("%s: class-activation maps of %d valid exams in %s", task, len(written), folder)
    return written


def _track(
    task: str,
    metrics: dict,
    outputs: Mapping[str, str | os.PathLike],
    run_ids: Mapping[str, Mapping[str, str]],
    job: Job,
) -> None:
    from medflow import tracking

    tags = {"task": task}
    for plane, by_fold in run_ids.items():
        for fold, rid in by_fold.items():
            if rid:
                tags[f"training_run_id.{plane}.fold_{fold}"] = rid
    st = metrics["stacking"]
    params = {
        "task": task,
        "fit_on": st["fit_on"],
        "C": st["C"],
        "class_weight": st["class_weight"],
        "planes": ",".join(st["planes"]),
    }
    # The headline holds each AUC; the rest of each report, and the stacker's weights, as plain metrics.
    extra = {
        f"{k}_{p}": v
        for p, rep in [*metrics["planes"].items(), ("stacked", metrics["stacked"])]
        for k, v in rep.items()
        if k != "auc"
    }
    extra.update({f"stack_coef_{p}": c for p, c in zip(st["planes"], st["coef"])})
    tracking.log_evaluation(
        "mrnet",
        f"{job.rule or RULE}/{task}",
        headline=metrics["headline"],
        training_run_id=[
            by["all"] for by in run_ids.values() if by.get("all")
        ],  # the models whose valid predictions are evaluated
        artifacts=[outputs[k] for k in ("metrics", "roc", "stacker", "predictions", "cams") if k in outputs],
        params=params,
        tags=tags,
        rule=job.rule or RULE,
        extra_metrics=extra,
    )


SUMMARY_COLUMNS = [
    "task",
    "n_valid",
    "n_valid_positive",
    "auc_axial",
    "auc_coronal",
    "auc_sagittal",
    "auc_stacked",
    "accuracy_stacked",
    "sensitivity_stacked",
    "specificity_stacked",
    "stacker_fit_on",
]


def summarise(metrics_paths: Mapping[str, str | os.PathLike], outputs: Mapping[str, str | os.PathLike]) -> pd.DataFrame:
    """task -> its metrics.json -> ``outputs["table"]`` (CSV, a row per task) and ``outputs["metrics"]``
    (JSON: ``headline`` with each task's stacked valid AUC as ``<task>_auc``, copied from its headline
    ``auc``, and ``tasks``: every task's own headline block). Returns the table."""
    rows, headline, blocks = [], {}, {}
    for task, path in metrics_paths.items():
        m = io.read_json(path)
        blocks[task] = read_headline(path)
        headline[f"{task}_auc"] = blocks[task]["auc"]
        row = {
            "task": task,
            "n_valid": m["n_valid"],
            "n_valid_positive": m["n_valid_positive"],
            **{f"auc_{p}": rep["auc"] for p, rep in m["planes"].items()},
        }
        row.update({f"{k}_stacked": m["stacked"][k] for k in ("auc", "accuracy", "sensitivity", "specificity")})
        row["stacker_fit_on"] = m["stacking"]["fit_on"]
        rows.append(row)
    df = pd.DataFrame(rows)
    df = df[[c for c in SUMMARY_COLUMNS if c in df.columns]]
    with io.atomic_path(outputs["table"]) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")
    io.write_json(outputs["metrics"], {"headline": headline, "tasks": blocks})
    return df
