"""The evaluation report collects every pipeline's headline metrics, plots, MLflow runs, config, commit."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from medflow import report, tracking


def test_report_has_headlines_plots_runs_config_and_commit(tmp_path, monkeypatch):
    seg = tmp_path / "brats" / "segmentation"
    (seg / "overlays").mkdir(parents=True)
    (seg / "metrics.json").write_text(json.dumps({"mean": {"WT": {"dice": 0.8123, "hd95": 4.5}}}))
    fig = plt.figure()
    fig.savefig(seg / "overlays" / "case1.png")
    mrnet = tmp_path / "mrnet"
    mrnet.mkdir()
    (mrnet / "summary.csv").write_text("task,auc_stacked,stacker_fit_on\nacl,0.9012,out_of_fold\n")
    uri = tracking.resolve_uri("", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.create_store(uri)
    with tracking.run("mrnet", "acl_axial", rule="mrnet_train"):
        pass
    report.write_report(
        {"brats_segmentation": str(seg / "metrics.json"), "mrnet": str(mrnet / "summary.csv")},
        tmp_path / "report" / "report.html", tmp_path / "report" / "summary.md",
        config={"seed": 42}, commit="abc123", tracking_uri=uri,
    )
    html = (tmp_path / "report" / "report.html").read_text()
    md = (tmp_path / "report" / "summary.md").read_text()
    for text in (html, md):
        assert "0.812" in text and "0.901" in text and "abc123" in text and "seed: 42" in text
        assert "acl_axial" in text and "#/experiments/" in text
    assert html.count("data:image/png;base64") == 1
    assert "](../brats/segmentation/overlays/case1.png)" in md
