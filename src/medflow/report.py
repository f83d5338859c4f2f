"""The evaluation report: every pipeline's headline metrics, plots, MLflow runs, config and commit,
as one self-contained HTML page and one Markdown summary (results/report/)."""

from __future__ import annotations

import base64
import csv
import html
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from medflow import tracking

# Where each pipeline's headline numbers sit in its metrics.json: (label, path of keys).
# A path that is missing is shown as "n/a" rather than failing the report.
HEADLINES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "brats_segmentation": [
        ("Dice WT (mean)", ("mean", "WT", "dice")),
        ("Dice TC (mean)", ("mean", "TC", "dice")),
        ("Dice ET (mean)", ("mean", "ET", "dice")),
        ("HD95 WT (mean, mm)", ("mean", "WT", "hd95")),
        ("Dice WT, all-foreground-in-brain baseline", ("baselines", "all_foreground_in_brain", "mean", "WT", "dice")),
    ],
    "brats_grade": [
        ("patient AUC", ("patient", "auc")),
        ("patient balanced accuracy", ("patient", "balanced_accuracy")),
        ("slice AUC", ("slice", "auc")),
    ],
    "mrnet": [],  # one row per task from results/mrnet/summary.csv, see headline_rows
    "rsna": [
        ("AUC image + metadata", ("with_metadata", "auc")),
        ("AUC image only", ("image_only", "auc")),
    ],
    "oct": [
        ("accuracy", ("accuracy",)),
        ("macro recall", ("macro_recall",)),
    ],
}
TITLES = {
    "brats_segmentation": "BraTS segmentation (3D U-Net)",
    "brats_grade": "BraTS grade, LGG vs HGG (ResNet18, 4 channels)",
    "mrnet": "MRNet knee MRI (stacked planes)",
    "rsna": "RSNA pneumonia (two-input CNN)",
    "oct": "OCT retina (VGG16 transfer)",
}


def _get(d: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(d, Mapping) or key not in d:
            return None
        d = d[key]
    return d


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "n/a" if v is None else str(v)
    if isinstance(v, (int, float)):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    return str(v)


def headline_rows(pipeline: str, metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, formatted value) rows for one pipeline's metrics file."""
    if pipeline == "mrnet":  # the summary table: one row per task
        return [(f"{r['task']}: stacked AUC ({r.get('stacker_fit_on', '')})", _fmt(float(r["auc_stacked"]))) for r in metrics["rows"]]
    rows = [(label, _fmt(_get(metrics, path))) for label, path in HEADLINES.get(pipeline, [])]
    if not rows or all(v == "n/a" for _, v in rows):  # unknown layout: show its top-level numbers
        rows = [(k, _fmt(v)) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return rows


def mlflow_runs(uri: str, ui: str) -> list[dict[str, str]]:
    """Every run in the medflow experiments, newest first, with a link into the MLflow UI."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    rows = []
    for name in tracking.EXPERIMENTS:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            continue
        for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=500):
            rows.append(
                {
                    "experiment": name,
                    "run": run.info.run_name or run.info.run_id,
                    "status": run.info.status,
                    "rule": run.data.tags.get("snakemake_rule", ""),
                    "url": ui.rstrip("/") + "/" + tracking.run_url(run.info.run_id, exp.experiment_id),
                }
            )
    return rows


def collect(metrics_files: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """pipeline -> {"metrics": dict, "dir": folder, "plots": [png paths]} from each registered metrics
    file (JSON, or a CSV summary table read as {"rows": [...]}). Plots are the PNGs beside it and one
    folder down (overlays/, eda/, <task>/), not the per-fold training curves deeper in."""
    out = {}
    for pipeline, path in metrics_files.items():
        folder = Path(path).parent
        plots = sorted(str(p) for p in [*folder.glob("*.png"), *folder.glob("*/*.png")])
        if str(path).endswith(".csv"):
            with open(path, newline="") as f:
                metrics = {"rows": list(csv.DictReader(f))}
        else:
            metrics = json.loads(Path(path).read_text())
        out[pipeline] = {"metrics": metrics, "dir": str(folder), "plots": plots}
    return out


def write_report(
    metrics_files: Mapping[str, str],
    out_html: str | os.PathLike,
    out_md: str | os.PathLike,
    config: Mapping[str, Any],
    commit: str,
    tracking_uri: str,
    mlflow_ui: str = "http://127.0.0.1:5000",
    max_plots: int = 12,
) -> None:
    from medflow import io

    data = collect(metrics_files)
    try:
        runs = mlflow_runs(tracking_uri, mlflow_ui)
    except Exception as exc:  # a remote server that is down must not lose the report
        runs = [{"experiment": "(unavailable)", "run": str(exc).splitlines()[0], "status": "", "rule": "", "url": ""}]
    config_yaml = yaml.safe_dump(dict(config), sort_keys=False)
    out_html, out_md = Path(out_html), Path(out_md)

    # Markdown: relative links, readable in a repository browser.
    md = ["# medflow evaluation report", "", f"- git commit: `{commit}`", f"- MLflow: `{tracking_uri}` (open with `mlflow ui --backend-store-uri '{tracking_uri}'`)", ""]
    md += ["## Headline metrics", "", "| pipeline | metric | value |", "|---|---|---|"]
    for pipeline, d in data.items():
        for label, value in headline_rows(pipeline, d["metrics"]):
            md.append(f"| {TITLES.get(pipeline, pipeline)} | {label} | {value} |")
    for pipeline, d in data.items():
        md += ["", f"## {TITLES.get(pipeline, pipeline)}", ""]
        md.append(f"Metrics: [{Path(metrics_files[pipeline]).name}]({os.path.relpath(metrics_files[pipeline], out_md.parent)})")
        md += [""] + [f"![{Path(p).stem}]({os.path.relpath(p, out_md.parent)})" for p in d["plots"][:max_plots]]
    md += ["", "## MLflow runs", "", "| experiment | run | rule | status |", "|---|---|---|---|"]
    md += [f"| {r['experiment']} | [{r['run']}]({r['url']}) | {r['rule']} | {r['status']} |" for r in runs]
    md += ["", "## Config", "", "```yaml", config_yaml.rstrip(), "```", ""]
    with io.atomic_path(out_md) as tmp:
        tmp.write_text("\n".join(md))

    # HTML: self-contained (plots embedded), so it can be sent as one file.
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>medflow report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}img{max-width:48%;margin:4px}"
        "pre{background:#f5f5f5;padding:1em;overflow:auto}</style></head><body>",
        "<h1>medflow evaluation report</h1>",
        f"<p>git commit <code>{e(commit)}</code> &middot; MLflow <code>{e(tracking_uri)}</code></p>",
        "<h2>Headline metrics</h2><table><tr><th>pipeline</th><th>metric</th><th>value</th></tr>",
    ]
    for pipeline, d in data.items():
        for label, value in headline_rows(pipeline, d["metrics"]):
            parts.append(f"<tr><td>{e(TITLES.get(pipeline, pipeline))}</td><td>{e(label)}</td><td>{e(value)}</td></tr>")
    parts.append("</table>")
    for pipeline, d in data.items():
        parts.append(f"<h2>{e(TITLES.get(pipeline, pipeline))}</h2>")
        for p in d["plots"][:max_plots]:
            b64 = base64.b64encode(Path(p).read_bytes()).decode()
            parts.append(f"<img alt='{e(Path(p).stem)}' title='{e(Path(p).name)}' src='data:image/png;base64,{b64}'>")
    parts.append("<h2>MLflow runs</h2><table><tr><th>experiment</th><th>run</th><th>rule</th><th>status</th></tr>")
    for r in runs:
        link = f"<a href='{e(r['url'])}'>{e(r['run'])}</a>" if r["url"] else e(r["run"])
        parts.append(f"<tr><td>{e(r['experiment'])}</td><td>{link}</td><td>{e(r['rule'])}</td><td>{e(r['status'])}</td></tr>")
    parts.append(f"</table><h2>Config</h2><pre>{e(config_yaml)}</pre></body></html>")
    with io.atomic_path(out_html) as tmp:
        tmp.write_text("\n".join(parts))
