"""Per-exam P(positive) of one plane model: the one place MRNet exams become model outputs; and the
``mrnet_predict`` stage, which applies the nine plane models and three stackers to new exams.

Everything runs through ``medflow.train.predict`` (eval mode, inference mode, bf16 autocast on CUDA,
full precision on the CPU), so the monitor AUC inside training, the predictions every training job
writes (held-out fold, valid, in sample) and predictions on new exams are computed alike. Batches are
packed (``medflow.mrnet.data``): ``{"slices": (N, H, W) uint8, "counts": (B,), "label": (B,)}``.

Plane probabilities are kept to ``DECIMALS`` decimals, as the training jobs' prediction files hold them:
the stacker is fitted and evaluated on those, so a valid exam fed through ``predict_new_exams`` gets the
stacked probability evaluation gives it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medflow.errors import InputError
from medflow.ingest.mrnet import PLANES, TASKS
from medflow.mrnet.data import exam_loader
from medflow.mrnet.model import MRNet, load_model
from medflow.train import predict as infer

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DECIMALS = 6  # of every stored probability (training jobs' predictions, evaluation, prediction)
FLOAT_FORMAT = f"%.{DECIMALS}f"
PIPELINE = "mrnet"
RULE = "mrnet_predict"  # run name and rule tag when called outside Snakemake


def exam_logits(model: MRNet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A packed batch -> one float32 logit per exam (B,)."""
    return model(batch["slices"], batch["counts"]).float()


def score_exams(
    model: MRNet, loader: Iterable, device: torch.device, *, bf16: bool = True, loss: LossFn | None = None
) -> dict[str, np.ndarray]:
    """``{"prob": (N,) P(positive), "label": (N,)}`` for the loader's exams in order; with ``loss``
    (logits (B,), labels (B,) -> a summed scalar) also ``"loss"``: its value per batch, (batches,)."""

    def forward(m, batch):
        logits = exam_logits(m, batch)
        out = {"prob": torch.sigmoid(logits), "label": batch["label"]}
        if loss is not None:
            out["loss"] = loss(logits, batch["label"]).reshape(1)
        return out

    return infer(model, loader, device, bf16=bf16, forward=forward)


def predict_probabilities(model: MRNet, loader: Iterable, device: torch.device, *, bf16: bool = True) -> np.ndarray:
    """P(positive) (N,) float32 for the loader's exams, in order."""
    return score_exams(model, loader, device, bf16=bf16)["prob"]


def predict_exams(
    model: MRNet,
    root: str | os.PathLike,
    plane: str,
    exams: pd.DataFrame,
    *,
    size: int,
    batch_slices: int,
    device: torch.device,
    threads: int,
    bf16: bool = True,
) -> np.ndarray:
    """P(positive) (N,) of an exam table's exams (``medflow.mrnet.data.exam_table``; ``label`` unused), in
    its row order: their ``plane`` series under ``root`` resized to ``size`` pixels, packed up to
    ``batch_slices`` slices per batch."""
    loader = exam_loader(
        root, plane, exams, size=size, batch_slices=batch_slices, shuffle=False, device=device, threads=threads
    )
    return predict_probabilities(model.to(device), loader, device, bf16=bf16)


# --- the prediction stage: new exams ----------------------------------------------------------------


def load_plane_checkpoint(path: str | os.PathLike, task: str, plane: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint and recorded ``preprocessing`` of the ``task``/``plane`` model trained on all train exams
    (``load_model`` builds the model from it). ``InputError`` naming the file for a checkpoint of another
    pipeline, of another task, plane or a training fold (trained on part of the exams), or one that records no
    preprocessing (retrain it)."""
    from medflow.lineage import check_checkpoint
    from medflow.train import load_checkpoint

    ckpt = load_checkpoint(path)
    check_checkpoint(ckpt, path, pipeline=PIPELINE)
    meta = ckpt["meta"]
    want = {"task": task, "plane": plane, "fold": "all"}
    wrong = [f"{k} {meta.get(k)!r} (expected {v!r})" for k, v in want.items() if str(meta.get(k)) != v]
    if wrong:
        raise InputError(path, f"not the {task}/{plane} model trained on all train exams: " + ", ".join(wrong))
    prep = meta.get("preprocessing")
    if not isinstance(prep, Mapping) or not {"in_plane", "image_size"} <= set(prep):
        raise InputError(path, "checkpoint records no preprocessing parameters (meta.preprocessing): retrain it")
    return ckpt, dict(prep)


def load_stacker(path: str | os.PathLike, task: str, checkpoints: Mapping[str, str | os.PathLike]):
    """The ``task`` stacker of ``mrnet_evaluate`` (``medflow.mrnet.stacking.Stacker``), checked against the plane
    checkpoints it will stack (plane -> path): ``InputError`` for another pipeline's or task's file, a plane
    it lacks, or plane models other than those it was fitted and evaluated with (their SHA-256 differs)."""
    from medflow.lineage import file_sha256
    from medflow.mrnet.stacking import Stacker

    st = Stacker.load(path)
    if st.extra.get("pipeline") != PIPELINE or st.extra.get("task") != task:
        raise InputError(
            path,
            f"a stacker of pipeline {st.extra.get('pipeline')!r}, task {st.extra.get('task')!r}, not "
            f"{PIPELINE!r}, {task!r}: mrnet_evaluate writes one per task",
        )
    if set(st.planes) != set(checkpoints):
        raise InputError(path, f"stacks planes {st.planes}, the models given are {sorted(checkpoints)}")
    recorded = st.extra.get("checkpoint_sha256") or {}
    differ = [p for p, ck in checkpoints.items() if p in recorded and recorded[p] != file_sha256(ck)]
    if differ:
        raise InputError(
            path,
            f"fitted with other {', '.join(differ)} model(s) than {', '.join(str(checkpoints[p]) for p in differ)}: "
            "evaluate those models again (mrnet_evaluate) or point predict.mrnet.models at their folder",
        )
    return st


@dataclass(frozen=True)
class PredictParams:
    """``mrnet_predict``: ``input`` (the folder or CSV of new exams), ``models`` (config ``predict.mrnet.models``,
    for the lineage), ``cams`` (config ``predict.cams``: exams drawn per task), ``batch_slices`` (slices per
    packed batch: speed only) and the ``tasks`` and ``planes`` whose checkpoints the inputs list."""

    input: str
    models: str = ""
    cams: int = 0
    batch_slices: int = 96
    tasks: tuple[str, ...] = TASKS
    planes: tuple[str, ...] = PLANES


def stored(prob: np.ndarray) -> np.ndarray:
    """Probabilities (N,) as a prediction file stores them (``FLOAT_FORMAT``) and reads them back, float64."""
    return np.array([float(FLOAT_FORMAT % v) for v in np.asarray(prob, dtype=np.float64)])


def _plane_table(exams: pd.DataFrame, plane: str) -> pd.DataFrame:
    """New exams -> the exam table of one plane (``medflow.mrnet.data``): id, path, label (unused), slices."""
    return pd.DataFrame(
        {"id": exams["id"], "path": exams[f"path_{plane}"], "label": 0, "slices": exams[f"slices_{plane}"]}
    )


def predict_new_exams(
    inputs: Mapping[str, Any], outputs: Mapping[str, str | os.PathLike], params: PredictParams, job
) -> dict[str, Any]:
    """Predict every usable new exam with each task's three plane models and its stacker.

    ``inputs``: ``checkpoints`` (one per task x plane, task by task, in ``params.tasks`` x ``params.planes``
    order: ``train/<task>/<plane>/fold_all/model.pt``) and ``stackers`` (one per task: ``evaluate/<task>/
    stacker.json``). The exams (``params.input``) are read and checked as in training, with the ``in_plane``
    and ``image_size`` each checkpoint records (``medflow.ingest.mrnet.discover_new``).

    ``outputs``: ``predictions`` (CSV, one row per predicted exam in input order: ``exam``, then per task
    ``<task>_<plane>`` for each plane and ``<task>_stacked``), ``challenge`` (the MRNet challenge's file: no
    header, one row per input exam in input order, the stacked P of each task in ``params.tasks`` order; an
    excluded exam's row is empty, so a submission can never shift rows), ``excluded`` (CSV ``exam, reason``),
    ``cams`` (folder: ``<task>_<exam>.png`` for the ``params.cams`` exams of highest stacked P per task),
    ``summary`` (JSON ``n_predicted, n_excluded, class_mix`` (per task, stacked P >= 0.5), ``figures``) and
    ``lineage`` (JSON: the twelve models). One MLflow run (``log_prediction``) when ``job.track``.
    Returns ``{"predictions", "excluded"}`` (DataFrames) and ``"summary"``.
    """
    from medflow import io
    from medflow.ingest.mrnet import discover_new
    from medflow.lineage import model_record, write_lineage
    from medflow.mrnet.cam import save_exam_cams
    from medflow.train import select_device

    tasks, planes = list(params.tasks), list(params.planes)
    ckpt_paths = list(inputs["checkpoints"])
    if len(ckpt_paths) != len(tasks) * len(planes) or len(inputs["stackers"]) != len(tasks):
        raise ValueError(
            f"expected {len(tasks) * len(planes)} checkpoints and {len(tasks)} stackers ({tasks} x {planes})"
        )
    paths = {t: {p: ckpt_paths[i * len(planes) + j] for j, p in enumerate(planes)} for i, t in enumerate(tasks)}
    # Every check before any model is built (building one takes seconds): checkpoints, stackers, the exams.
    ckpts: dict[str, dict[str, Any]] = {}
    preps: dict[str, dict[str, Any]] = {}
    for t in tasks:
        for p in planes:
            ckpts[f"{t}_{p}"], preps[f"{t}_{p}"] = load_plane_checkpoint(paths[t][p], t, p)
    stackers = {t: load_stacker(s, t, paths[t]) for t, s in zip(tasks, inputs["stackers"])}
    in_planes = {prep["in_plane"] for prep in preps.values()}
    if len(in_planes) != 1:
        raise InputError(ckpt_paths[0], f"the models were trained on series of different sizes: {preps}")
    new = discover_new(params.input, int(in_planes.pop()))
    exams = new.exams
    records = [model_record(f"{t}_{p}", paths[t][p], ckpts[f"{t}_{p}"]) for t in tasks for p in planes]
    records += [model_record(f"{t}_stacker", s, {}) for t, s in zip(tasks, inputs["stackers"])]
    models = {t: {p: load_model(ckpts[f"{t}_{p}"]) for p in planes} for t in tasks}
    device = select_device(job.threads)
    table = pd.DataFrame({"exam": exams["id"]})
    for t in tasks:
        for p in planes:
            prob = predict_exams(
                models[t][p],
                "",
                p,
                _plane_table(exams, p),
                size=int(preps[f"{t}_{p}"]["image_size"]),
                batch_slices=int(params.batch_slices),
                device=device,
                threads=job.threads,
                bf16=job.bf16,
            )
            table[f"{t}_{p}"] = stored(prob)
        table[f"{t}_stacked"] = stackers[t].predict_proba(table[[f"{t}_{p}" for p in planes]].set_axis(planes, axis=1))
    with io.atomic_path(outputs["predictions"]) as tmp:
        table.to_csv(tmp, index=False, float_format=FLOAT_FORMAT)
    stacked = table.set_index("exam")[[f"{t}_stacked" for t in tasks]]
    lines = [
        ",".join(FLOAT_FORMAT % v for v in stacked.loc[e]) if e in stacked.index else "," * (len(tasks) - 1)
        for e in new.order
    ]
    with io.atomic_path(outputs["challenge"]) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines))
    with io.atomic_path(outputs["excluded"]) as tmp:
        new.excluded.to_csv(tmp, index=False)
    if len(new.excluded):
        log.warning(
            "%d exams excluded (%s): their rows in the challenge file are empty", len(new.excluded), outputs["excluded"]
        )

    figures = []
    cam_dir = Path(outputs["cams"])
    cam_dir.mkdir(parents=True, exist_ok=True)
    rows = exams.set_index("id")
    for t in tasks:
        top = table.sort_values(f"{t}_stacked", ascending=False, kind="stable").head(int(params.cams))
        for _, r in top.iterrows():
            out = cam_dir / f"{t}_{r['exam']}.png"
            planes_p = ", ".join(f"{p} {r[f'{t}_{p}']:.2f}" for p in planes)
            save_exam_cams(
                models[t],
                {p: int(preps[f"{t}_{p}"]["image_size"]) for p in planes},
                {p: rows.loc[r["exam"], f"path_{p}"] for p in planes},
                out,
                title=f"{t}: exam {r['exam']}, P {r[f'{t}_stacked']:.2f} ({planes_p})",
            )
            figures.append(str(out))

    mix = {t: int((table[f"{t}_stacked"] >= 0.5).sum()) for t in tasks}
    summary = {"n_predicted": len(table), "n_excluded": len(new.excluded), "class_mix": mix, "figures": figures}
    io.write_json(outputs["summary"], summary)
    log.info("%d exams predicted, %d excluded; positive at 0.5: %s", len(table), len(new.excluded), mix)

    rule = job.rule or RULE
    settings = {**asdict(params), "checkpoints": {f"{t}_{p}": str(paths[t][p]) for t in tasks for p in planes}}
    write_lineage(outputs["lineage"], records, {**settings, "preprocessing": preps}, rule)
    if job.track:
        from medflow import tracking

        tracking.log_prediction(
            PIPELINE,
            rule,
            models=records,
            artifacts=[outputs[k] for k in ("predictions", "challenge", "excluded", "summary", "lineage", "cams")],
            params={"input": params.input, "models": params.models or "this workflow's", "cams": params.cams},
            metrics={
                "n_predicted": len(table),
                "n_excluded": len(new.excluded),
                **{f"n_{t}_positive": n for t, n in mix.items()},
            },
            rule=job.rule,
        )
    return {"predictions": table, "excluded": new.excluded, "summary": summary}
