"""The evaluation report shows each pipeline's headline block (value, interval, n), plots, MLflow runs, config,
commit; and nothing from a metrics file outside its headline block."""

import math

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from medflow import io, report, tracking


def _entry(value, low, high, n):
    return {"value": value, "ci_low": low, "ci_high": high, "n": n}


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = tracking.resolve_uri("", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.create_store(uri)
    return uri


def _write(tmp_path, files, uri):
    report.write_report(
        files,
        tmp_path / "report" / "report.html",
        tmp_path / "report" / "summary.md",
        config={"seed": 42},
        commit="abc123",
        tracking_uri=uri,
    )
    return (tmp_path / "report" / "report.html").read_text(), (tmp_path / "report" / "summary.md").read_text()


def test_report_has_headlines_with_intervals_plots_runs_config_and_commit(tmp_path, store):
    seg = tmp_path / "brats" / "segmentation"
    (seg / "overlays" / "deeper").mkdir(parents=True)
    io.write_json(
        seg / "metrics.json",
        {"headline": {"dice_wt": _entry(0.81234, 0.7654, 0.85, 12), "hd95_wt": _entry(4.5, math.nan, math.nan, 12)}},
    )
    fig = plt.figure()
    fig.savefig(seg / "overlays" / "case1.png")
    fig.savefig(seg / "overlays" / "deeper" / "fold0_curves.png")  # two folders down: not collected
    mrnet = tmp_path / "mrnet"
    io.write_json(mrnet / "metrics.json", {"headline": {"auc_acl": _entry(0.90123, 0.8, 0.95, 120)}})
    with tracking.run("mrnet", "acl_axial", rule="mrnet_train"):
        pass
    html, md = _write(
        tmp_path, {"brats_segmentation": str(seg / "metrics.json"), "mrnet": str(mrnet / "metrics.json")}, store
    )
    assert "| BraTS segmentation (3D U-Net) | dice_wt | 0.812 | [0.765, 0.850] | 12 |" in md
    assert "| BraTS segmentation (3D U-Net) | hd95_wt | 4.500 | n/a | 12 |" in md  # NaN interval
    assert "| MRNet knee MRI (stacked planes) | auc_acl | 0.901 | [0.800, 0.950] | 120 |" in md
    assert "<td>dice_wt</td><td>0.812</td><td>[0.765, 0.850]</td><td>12</td>" in html
    assert "<td>auc_acl</td><td>0.901</td><td>[0.800, 0.950]</td><td>120</td>" in html
    for text in (html, md):
        assert "abc123" in text and "seed: 42" in text
        assert "acl_axial" in text and "#/experiments/" in text
    assert html.count("data:image/png;base64") == 1
    assert "](../brats/segmentation/overlays/case1.png)" in md


def test_report_shows_only_the_headline_block(tmp_path, store):
    rsna = tmp_path / "rsna"
    io.write_json(
        rsna / "metrics.json",
        {
            "headline": {"auc_with_metadata": _entry(0.77, 0.7, 0.83, 300)},
            "image_only": {"auc": 0.6543},
            "sensitivity_at_spec90": 0.4321,
            "n_images": 999,
        },
    )
    html, md = _write(tmp_path, {"rsna": str(rsna / "metrics.json")}, store)
    for text in (html, md):
        assert "auc_with_metadata" in text and "0.770" in text
        for hidden in ("image_only", "0.654", "sensitivity_at_spec90", "0.432", "n_images", "999"):
            assert hidden not in text


def test_a_metrics_file_without_headline_block_is_one_row_not_a_crash(tmp_path, store):
    oct_dir, grade, mrnet = tmp_path / "oct", tmp_path / "grade", tmp_path / "mrnet"
    io.write_json(oct_dir / "metrics.json", {"accuracy": 0.8765, "macro_recall": 0.5})
    io.write_json(grade / "metrics.json", {"headline": {"auc": {"value": 0.9}}})
    mrnet.mkdir()
    (mrnet / "summary.csv").write_text("task,auc_stacked\nacl,0.9012\n")  # an old registered CSV
    fig = plt.figure()
    fig.savefig(oct_dir / "confusion.png")
    html, md = _write(
        tmp_path,
        {
            "oct": str(oct_dir / "metrics.json"),
            "brats_grade": str(grade / "metrics.json"),
            "mrnet": str(mrnet / "summary.csv"),
        },
        store,
    )
    assert "| OCT retina (VGG16 transfer) | no headline block | n/a | n/a | n/a |" in md
    grade_rows = [line for line in md.splitlines() if line.startswith("| BraTS grade")]
    assert len(grade_rows) == 1 and "malformed headline block" in grade_rows[0]
    mrnet_rows = [line for line in md.splitlines() if line.startswith("| MRNet")]
    assert len(mrnet_rows) == 1 and "not a readable JSON" in mrnet_rows[0]
    for text in (html, md):
        assert "0.877" not in text and "0.901" not in text
    assert html.count("data:image/png;base64") == 1  # its plots are still shown
    assert "<td>no headline block</td><td>n/a</td><td>n/a</td><td>n/a</td>" in html


def test_headline_rows_format():
    entry = {
        "headline": {"auc": _entry(0.5, 0.25, 0.75, 7), "dice_et": _entry(math.nan, math.nan, 0.3, 0)},
        "problem": None,
    }
    assert report.headline_rows(entry) == [("auc", "0.500", "[0.250, 0.750]", "7"), ("dice_et", "n/a", "n/a", "0")]
    assert report.headline_rows({"headline": {}, "problem": None}) == [("empty headline block", "n/a", "n/a", "n/a")]


def test_registered_plots_outside_the_metrics_folder_are_shown(tmp_path, store):
    # MRNet's metrics file is the summary's; its per-task ROC curves lie elsewhere and are registered.
    summary, roc = tmp_path / "mrnet" / "summary", tmp_path / "mrnet" / "evaluate" / "acl" / "roc.png"
    io.write_json(summary / "metrics.json", {"headline": {"acl_auc": _entry(0.9, 0.8, 0.95, 40)}})
    roc.parent.mkdir(parents=True)
    plt.figure().savefig(roc)
    files = {"mrnet": str(summary / "metrics.json")}
    report.write_report(files, tmp_path / "r.html", tmp_path / "r.md", {}, "abc", store, plots={"mrnet": [str(roc)]})
    assert "](mrnet/evaluate/acl/roc.png)" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "r.html").read_text().count("data:image/png;base64") == 1
    _, md = _write(tmp_path, files, store)  # not registered: not found
    assert "roc.png" not in md


def test_report_has_a_predictions_section_with_counts_class_mix_and_figures(tmp_path, store):
    oct_dir = tmp_path / "oct"
    io.write_json(oct_dir / "evaluate" / "metrics.json", {"headline": {"accuracy": _entry(0.8, 0.7, 0.9, 32)}})
    fig = plt.figure()
    fig.savefig(oct_dir / "predict_cam.png")
    plt.close(fig)
    io.write_json(
        oct_dir / "predict" / "summary.json",
        {
            "n_predicted": 22,
            "n_excluded": 2,
            "class_mix": {"CNV": 10, "NORMAL": 12},
            "figures": [str(oct_dir / "predict_cam.png"), str(oct_dir / "gone.png")],
        },
    )
    io.write_json(tmp_path / "rsna" / "summary.json", {"n_predicted": 3})  # no n_excluded: reported, not fatal
    report.write_report(
        {"oct": str(oct_dir / "evaluate" / "metrics.json")},
        tmp_path / "report" / "report.html",
        tmp_path / "report" / "summary.md",
        config={},
        commit="abc",
        tracking_uri=store,
        predictions={"oct": str(oct_dir / "predict" / "summary.json"), "rsna": str(tmp_path / "rsna" / "summary.json")},
    )
    md = (tmp_path / "report" / "summary.md").read_text()
    html = (tmp_path / "report" / "report.html").read_text()
    assert "## Predictions on new data" in md
    assert "| OCT retina (VGG16 transfer) | 22 | 2 | CNV 10, NORMAL 12 |" in md
    assert "![predict_cam](../oct/predict_cam.png)" in md and "gone" not in md
    assert "n_excluded" in md.split("RSNA pneumonia (two-input CNN) |")[1].splitlines()[0]
    assert "<td>22</td><td>2</td><td>CNV 10, NORMAL 12</td>" in html and "alt='predict_cam'" in html
