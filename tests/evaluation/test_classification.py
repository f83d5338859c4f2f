"""Binary metrics against a hand-counted confusion matrix, and the ROC / confusion plots."""

import itertools
import json

import numpy as np
import pytest
from sklearn import metrics as skm

from medflow.evaluation import classification

# 12 cases, threshold 0.5. Every count differs (tp=4, fn=1, fp=2, tn=5), so swapping sensitivity and
# specificity, or any two counts, changes the report. Two probabilities sit exactly at the threshold:
# a positive (counts as tp) and a negative (counts as fp) -- ">=" is the rule.
Y = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
P = [0.9, 0.8, 0.5, 0.7, 0.2, 0.5, 0.6, 0.1, 0.3, 0.4, 0.45, 0.05]
TP, FN, FP, TN = 4, 1, 2, 5


def brute_auc(y, p):
    """Mann-Whitney: the share of (positive, negative) pairs ranked correctly, ties counting half."""
    pos = [pi for yi, pi in zip(y, p) if yi == 1]
    neg = [pi for yi, pi in zip(y, p) if yi == 0]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg)) / (len(pos) * len(neg))


def test_binary_report_matches_a_hand_counted_confusion_matrix():
    rep = classification.binary_report(Y, P)
    assert rep["sensitivity"] == pytest.approx(TP / (TP + FN))  # 0.8
    assert rep["specificity"] == pytest.approx(TN / (TN + FP))  # 5/7
    assert rep["accuracy"] == pytest.approx((TP + TN) / 12)
    assert rep["balanced_accuracy"] == pytest.approx((0.8 + 5 / 7) / 2)
    assert rep["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(Y, np.array(P) >= 0.5))
    assert rep["n"] == 12 and rep["n_positive"] == 5
    # AUC is threshold-free: independent of the threshold, equal to the pair count and to scikit-learn.
    assert rep["auc"] == pytest.approx(brute_auc(Y, P)) and rep["auc"] == pytest.approx(skm.roc_auc_score(Y, P))
    # The metrics file is JSON with plain numbers.
    assert json.loads(json.dumps(rep)) == pytest.approx(rep)
    assert all(type(v) is float for k, v in rep.items() if k not in ("n", "n_positive"))
    assert type(rep["n"]) is int and type(rep["n_positive"]) is int


def test_threshold_is_inclusive_and_moves_the_counts():
    # Just above 0.5 the two cases at exactly 0.5 turn negative: tp 4 -> 3, fp 2 -> 1.
    above = classification.binary_report(Y, P, threshold=0.5 + 1e-9)
    assert above["sensitivity"] == pytest.approx(3 / 5) and above["specificity"] == pytest.approx(6 / 7)
    # At 0.3 (one negative exactly there): tp=4 (0.2 is below), fp=5 (0.5, 0.6, 0.3, 0.4, 0.45), tn=2.
    low = classification.binary_report(Y, P, threshold=0.3)
    assert low["sensitivity"] == pytest.approx(4 / 5) and low["specificity"] == pytest.approx(2 / 7)
    assert low["accuracy"] == pytest.approx(6 / 12)
    assert low["auc"] == above["auc"] == classification.binary_report(Y, P)["auc"]


def test_float_or_bool_labels_count_as_ints():
    # Labels read from CSVs as floats or bools must count the same as ints.
    rep = classification.binary_report(np.array(Y, float), P)
    assert rep["sensitivity"] == pytest.approx(0.8) and rep["n_positive"] == 5
    assert classification.binary_report(np.array(Y, bool), P) == pytest.approx(rep)


def test_float32_probabilities_count_by_their_value():
    # Model outputs are float32: float32(0.7) is 0.69999999 and stays below a 0.7 threshold, as its
    # float64 value does (a comparison in float32 would round the threshold to it instead).
    p32 = np.array(P, np.float32)
    rep = classification.binary_report(Y, p32, threshold=0.7)
    assert rep == pytest.approx(classification.binary_report(Y, p32.astype(np.float64), threshold=0.7))
    assert rep["sensitivity"] == pytest.approx(2 / 5)  # 0.9 and 0.8; not 0.7


def test_rates_when_counts_tie():
    # tp == fn and tn == fp: both rates are 0.5, not NaN (a difference is not a total).
    rep = classification.binary_report([1, 1, 0, 0, 0, 0], [0.9, 0.1, 0.8, 0.7, 0.2, 0.3])
    assert rep["sensitivity"] == 0.5 and rep["specificity"] == 0.5 and rep["accuracy"] == 0.5


@pytest.mark.filterwarnings("error")  # NaN by rule, not by a 0/0 or scikit-learn warning in the log
def test_one_class_gives_nan_auc_and_the_defined_rate():
    only_neg = classification.binary_report([0, 0, 0, 0], [0.1, 0.7, 0.2, 0.3])
    assert np.isnan(only_neg["auc"]) and np.isnan(only_neg["sensitivity"])
    assert only_neg["specificity"] == pytest.approx(3 / 4)
    assert only_neg["balanced_accuracy"] == pytest.approx(3 / 4)  # the mean of the rates that exist
    assert only_neg["accuracy"] == pytest.approx(3 / 4) and only_neg["n_positive"] == 0
    only_pos = classification.binary_report([1, 1, 1], [0.9, 0.4, 0.6])
    assert np.isnan(only_pos["auc"]) and np.isnan(only_pos["specificity"])
    assert only_pos["sensitivity"] == pytest.approx(2 / 3) and only_pos["balanced_accuracy"] == pytest.approx(2 / 3)
    single = classification.binary_report([1], [0.9])
    assert single["accuracy"] == 1.0 and single["n"] == 1


# A user's matplotlibrc must not change the figures: every setting below differs from what the plots ask for.
USER_RC = {
    "figure.dpi": 37,
    "savefig.dpi": 37,
    "savefig.format": "svg",
    "lines.linestyle": ":",
    "lines.linewidth": 3.0,
    "axes.prop_cycle": "cycler(color=['red'])",
    "legend.fontsize": 15,
    "legend.loc": "upper left",
    "image.cmap": "viridis",
    "text.color": "red",
}
PNG = b"\x89PNG\r\n\x1a\n"


def draw(monkeypatch, plot, *args, **kwargs):
    """Run ``plot`` under USER_RC and return (its result, the figure it drew), keeping the figure open."""
    import matplotlib
    import matplotlib.pyplot as plt

    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    with matplotlib.rc_context(USER_RC):
        result = plot(*args, **kwargs)
        (fig,) = figs
        fig.canvas.draw()
    monkeypatch.undo()  # restore pyplot.close
    return result, fig


def test_plot_roc_draws_each_two_class_curve_with_its_auc(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    y2, p2 = [0, 1, 0, 1, 1], [0.2, 0.9, 0.6, 0.4, 0.8]
    out = tmp_path / "roc.png"
    # The one-class pair (no ROC curve exists) sits between the others: it is skipped, the rest drawn.
    curves = {"model": (Y, P), "one class": ([1, 1], [0.3, 0.9]), "other": (y2, p2)}
    _, fig = draw(monkeypatch, classification.plot_roc, curves, out)
    assert out.read_bytes()[:8] == PNG
    assert plt.imread(out).shape[:2] == (450, 450)  # 4.5 in at 100 dpi
    ax = fig.axes[0]
    assert ax.get_title() == "ROC" and ax.get_xlabel() == "1 - specificity" and ax.get_ylabel() == "sensitivity"
    lines = ax.get_lines()
    assert len(lines) == 3  # two curves and the chance diagonal
    for line, (y, p) in zip(lines, [(Y, P), (y2, p2)]):
        fpr, tpr, _ = skm.roc_curve(y, p)
        assert np.allclose(line.get_xdata(), fpr) and np.allclose(line.get_ydata(), tpr)
    chance = lines[2]
    assert np.allclose(chance.get_xdata(), [0, 1]) and np.allclose(chance.get_ydata(), [0, 1])
    assert (
        chance.get_linestyle() == "--"
        and chance.get_linewidth() == 1
        and to_rgba(chance.get_color()) == to_rgba("grey")
    )
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        f"model (AUC {brute_auc(Y, P):.3f})",
        f"other (AUC {brute_auc(y2, p2):.3f})",
    ]
    assert all(t.get_fontsize() == 8 for t in legend.get_texts())
    box, frame = legend.get_window_extent(), ax.get_window_extent()  # lower right, off the curves
    assert box.x0 > (frame.x0 + frame.x1) / 2 and box.y1 < (frame.y0 + frame.y1) / 2
    plt.close(fig)
    # A path without a .png suffix still gets a PNG, with the given title.
    _, fig = draw(monkeypatch, classification.plot_roc, curves, tmp_path / "roc", title="T")
    assert (tmp_path / "roc").read_bytes()[:8] == PNG and fig.axes[0].get_title() == "T"
    plt.close(fig)


def test_plot_confusion_returns_and_draws_the_counts(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    y_true = [0, 0, 1, 2, 2, 2, 1]
    y_pred = [0, 1, 1, 2, 0, 2, 1]
    out = tmp_path / "cm.png"
    # Four classes, one never seen: it still gets its row and column of zeros.
    cm, fig = draw(monkeypatch, classification.plot_confusion, y_true, y_pred, ["a", "b", "c", "d"], out)
    expected = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]])
    assert np.array_equal(cm, expected)  # rows are true classes, columns predicted
    assert out.read_bytes()[:8] == PNG
    assert plt.imread(out).shape[:2] == (630, 680)  # (1.2 n + 1.5) x (1.2 n + 2) in at 100 dpi
    ax = fig.axes[0]
    assert ax.get_title() == "Confusion matrix" and ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    assert ax.images[0].get_cmap().name == "Blues" and np.array_equal(ax.images[0].get_array(), expected)
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells == {(i, j): str(expected[i, j]) for i in range(4) for j in range(4)}
    assert all(t.get_ha() == t.get_va() == "center" and to_rgba(t.get_color()) == to_rgba("black") for t in ax.texts)
    xticks = ax.get_xticklabels()
    assert [t.get_text() for t in xticks] == ["a", "b", "c", "d"]
    assert all(t.get_rotation() == 45 and t.get_ha() == "right" for t in xticks)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c", "d"]
    plt.close(fig)
    cm2, fig = draw(
        monkeypatch, classification.plot_confusion, y_true, y_pred, ["a", "b", "c", "d"], tmp_path / "cm", title="CM"
    )
    assert (
        np.array_equal(cm2, expected) and (tmp_path / "cm").read_bytes()[:8] == PNG and fig.axes[0].get_title() == "CM"
    )
    plt.close(fig)
