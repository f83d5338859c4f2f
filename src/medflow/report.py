"""The evaluation report: every pipeline's headline metrics, plots, MLflow runs, config and commit,
as one self-contained HTML page and one Markdown summary (results/report/)."""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from medflow import tracking
from medflow.errors import InputError
from medflow.evaluation.headline import read_headline

TITLES = {
    "brats_segmentation": "BraTS segmentation (3D U-Net)",
    "brats_grade": "BraTS grade, LGG vs HGG (ResNet18, 4 channels)",
    "mrnet": "MRNet knee MRI (stacked planes)",
    "rsna": "RSNA pneumonia (two-input CNN)",
    "oct": "OCT retina (VGG16 transfer)",
}


def _fmt(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.3f}"


def headline_rows(entry: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, value, "[ci_low, ci_high]", n) rows of one collected pipeline; one row naming the problem
    when its metrics file has no usable headline block."""
    if entry["headline"] is None:
        return [(entry["problem"], "n/a", "n/a", "n/a")]
    if not entry["headline"]:
        return [("empty headline block", "n/a", "n/a", "n/a")]
    rows = []
    for name, m in entry["headline"].items():
        low, high = m["ci_low"], m["ci_high"]
        ci = "n/a" if math.isnan(low) or math.isnan(high) else f"[{_fmt(low)}, {_fmt(high)}]"
        rows.append((name, _fmt(m["value"]), ci, str(m["n"])))
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


def collect(
    metrics_files: Mapping[str, str], plots: Mapping[str, Sequence[str]] | None = None
) -> dict[str, dict[str, Any]]:
    """pipeline -> {"headline": block or None, "problem": why there is none, "dir": folder, "plots": [pngs]}.

    Only the ``headline`` block of each metrics file is read (``medflow.evaluation.headline``); a file
    without one is reported, not fatal. Plots are the pipeline's registered PNGs (``plots``: what its rules
    file registers as final outputs) and the PNGs beside its metrics file and one folder down (overlays/)."""
    out = {}
    for pipeline, path in metrics_files.items():
        folder = Path(path).parent
        found = [*(plots or {}).get(pipeline, ()), *folder.glob("*.png"), *folder.glob("*/*.png")]
        plots_ = sorted({str(p) for p in found})
        try:
            block, problem = read_headline(path), None
        except InputError as exc:
            block, problem = None, exc.problem
        out[pipeline] = {"headline": block, "problem": problem, "dir": str(folder), "plots": plots_}
    return out


def collect_predictions(summaries: Mapping[str, str] | None) -> dict[str, dict[str, Any]]:
    """pipeline -> {"n_predicted", "n_excluded", "class_mix", "figures", "dir", "problem"} from each predict
    stage's summary.json (``medflow.lineage``'s sibling contract); an unreadable summary is reported, not fatal."""
    from medflow import io

    out = {}
    for pipeline, path in (summaries or {}).items():
        entry: dict[str, Any] = {"dir": str(Path(path).parent), "problem": None}
        try:
            data = io.read_json(path)
            entry.update(
                n_predicted=int(data["n_predicted"]),
                n_excluded=int(data["n_excluded"]),
                class_mix={str(k): int(v) for k, v in dict(data.get("class_mix") or {}).items()},
                figures=[str(f) for f in data.get("figures") or [] if Path(f).is_file()],
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            entry.update(n_predicted=0, n_excluded=0, class_mix={}, figures=[], problem=f"{path}: {exc}")
        out[pipeline] = entry
    return out


def _mix(class_mix: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in class_mix.items()) or "—"


def write_report(
    metrics_files: Mapping[str, str],
    out_html: str | os.PathLike,
    out_md: str | os.PathLike,
    config: Mapping[str, Any],
    commit: str,
    tracking_uri: str,
    mlflow_ui: str = "http://127.0.0.1:5000",
    max_plots: int = 12,
    plots: Mapping[str, Sequence[str]] | None = None,
    predictions: Mapping[str, str] | None = None,
    max_prediction_figures: int = 4,
) -> None:
    """``predictions``: pipeline -> the summary.json of its predict stage (new, unlabeled data), shown in a
    "Predictions" section: counts, class mix and up to ``max_prediction_figures`` overlays/CAMs each."""
    from medflow import io

    data = collect(metrics_files, plots)
    predicted = collect_predictions(predictions)
    try:
        runs = mlflow_runs(tracking_uri, mlflow_ui)
    except Exception as exc:  # a remote server that is down must not lose the report
        runs = [{"experiment": "(unavailable)", "run": str(exc).splitlines()[0], "status": "", "rule": "", "url": ""}]
    config_yaml = yaml.safe_dump(dict(config), sort_keys=False)
    out_html, out_md = Path(out_html), Path(out_md)

    # Markdown: relative links, readable in a repository browser.
    md = [
        "# medflow evaluation report",
        "",
        f"- git commit: `{commit}`",
        f"- MLflow: `{tracking_uri}` (open with `mlflow ui --backend-store-uri '{tracking_uri}'`)",
        "",
    ]
    md += ["## Headline metrics", "", "95% bootstrap intervals over test patients/cases/exams; n = their number.", ""]
    md += ["| pipeline | metric | value | 95% CI | n |", "|---|---|---|---|---|"]
    for pipeline, d in data.items():
        for name, value, ci, n in headline_rows(d):
            name = name.replace("|", "\\|")  # a problem text must not split the Markdown row
            md.append(f"| {TITLES.get(pipeline, pipeline)} | {name} | {value} | {ci} | {n} |")
    for pipeline, d in data.items():
        md += ["", f"## {TITLES.get(pipeline, pipeline)}", ""]
        rel = os.path.relpath(metrics_files[pipeline], out_md.parent)
        md.append(f"Metrics: [{Path(metrics_files[pipeline]).name}]({rel})")
        md += [""] + [f"![{Path(p).stem}]({os.path.relpath(p, out_md.parent)})" for p in d["plots"][:max_plots]]
    if predicted:
        md += [
            "",
            "## Predictions on new data",
            "",
            "| pipeline | predicted | excluded | class mix |",
            "|---|---|---|---|",
        ]
        for pipeline, p in predicted.items():
            mix = p["problem"] or _mix(p["class_mix"])
            md.append(f"| {TITLES.get(pipeline, pipeline)} | {p['n_predicted']} | {p['n_excluded']} | {mix} |")
        for p in predicted.values():
            figures = p["figures"][:max_prediction_figures]
            md += [""] + [f"![{Path(f).stem}]({os.path.relpath(f, out_md.parent)})" for f in figures]
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
        "<h2>Headline metrics</h2><p>95% bootstrap intervals over test patients/cases/exams; n = their number.</p>",
        "<table><tr><th>pipeline</th><th>metric</th><th>value</th><th>95% CI</th><th>n</th></tr>",
    ]
    for pipeline, d in data.items():
        for row in headline_rows(d):
            cells = "".join(f"<td>{e(c)}</td>" for c in (TITLES.get(pipeline, pipeline), *row))
            parts.append(f"<tr>{cells}</tr>")
    parts.append("</table>")
    for pipeline, d in data.items():
        parts.append(f"<h2>{e(TITLES.get(pipeline, pipeline))}</h2>")
        for p in d["plots"][:max_plots]:
            b64 = base64.b64encode(Path(p).read_bytes()).decode()
            parts.append(f"<img alt='{e(Path(p).stem)}' title='{e(Path(p).name)}' src='data:image/png;base64,{b64}'>")
    if predicted:
        parts.append("<h2>Predictions on new data</h2><table><tr><th>pipeline</th><th>predicted</th>")
        parts.append("<th>excluded</th><th>class mix</th></tr>")
        for pipeline, p in predicted.items():
            mix = p["problem"] or _mix(p["class_mix"])
            cells = (TITLES.get(pipeline, pipeline), p["n_predicted"], p["n_excluded"], mix)
            parts.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
        for pipeline, p in predicted.items():
            for f in p["figures"][:max_prediction_figures]:
                b64 = base64.b64encode(Path(f).read_bytes()).decode()
                parts.append(f"<img alt='{e(Path(f).stem)}' title='{e(pipeline)}' src='data:image/png;base64,{b64}'>")
    parts.append("<h2>MLflow runs</h2><table><tr><th>experiment</th><th>run</th><th>rule</th><th>status</th></tr>")
    for r in runs:
        link = f"<a href='{e(r['url'])}'>{e(r['run'])}</a>" if r["url"] else e(r["run"])
        cells = f"<td>{e(r['experiment'])}</td><td>{link}</td><td>{e(r['rule'])}</td><td>{e(r['status'])}</td>"
        parts.append(f"<tr>{cells}</tr>")
    parts.append(f"</table><h2>Config</h2><pre>{e(config_yaml)}</pre></body></html>")
    with io.atomic_path(out_html) as tmp:
        tmp.write_text("\n".join(parts))
