"""Headline metrics: exact values, percentile bootstrap intervals (item and cluster), the metrics.json block."""

import json
import math
import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medflow import io
from medflow.errors import InputError
from medflow.evaluation.headline import auc_metric, bootstrap_metric, headline_block, mean_metric, read_headline


def _width(r):
    return r["ci_high"] - r["ci_low"]


def _auc_data(n, seed, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = rng.random(n) + 0.4 * y
    return y, (np.round(p, 1) if ties else p)


def test_value_is_the_metric_on_the_full_data_exactly():
    y, p = _auc_data(120, 1)
    r = bootstrap_metric(roc_auc_score, y, p, n_boot=50)
    assert r["value"] == roc_auc_score(y, p) and type(r["value"]) is float
    assert auc_metric(y, p, n_boot=50)["value"] == roc_auc_score(y, p)
    v = np.random.default_rng(2).random(37)
    v[::5] = np.nan
    assert mean_metric(v, n_boot=50)["value"] == np.nanmean(v)
    # fn receives the caller's own objects on the full data (a list stays a list)
    seen = []
    bootstrap_metric(lambda x: seen.append(type(x)) or 0.0, [1.0, 2.0, 3.0], n_boot=3)
    assert seen[0] is list and seen[1] is np.ndarray


def test_plain_types_out():
    r = mean_metric(np.arange(10.0), n_boot=20)
    assert set(r) == {"value", "ci_low", "ci_high", "n"}
    assert [type(r[k]) for k in ("value", "ci_low", "ci_high", "n")] == [float, float, float, int]
    json.dumps(r)


def test_hand_checked_two_items():
    # Resample means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5th/97.5th percentiles
    # are 0 and 1, the 30th/70th both 0.5.
    x = np.array([0.0, 1.0])
    r = bootstrap_metric(np.mean, x, n_boot=4000)
    assert (r["value"], r["ci_low"], r["ci_high"], r["n"]) == (0.5, 0.0, 1.0, 2)
    r = bootstrap_metric(np.mean, x, n_boot=4000, level=0.4)
    assert (r["ci_low"], r["ci_high"]) == (0.5, 0.5)


@pytest.mark.parametrize("metric", ["bootstrap", "mean"])
def test_bernoulli_interval_contains_value_and_matches_normal_width(metric):
    # Exactly 30 % ones, so the sample proportion is 0.3 and the normal width is 2 * 1.96 * sqrt(.21 / n).
    widths = {}
    for n in (100, 1600):
        x = (np.arange(n) % 10 < 3).astype(float)
        r = bootstrap_metric(np.mean, x, seed=3) if metric == "bootstrap" else mean_metric(x, seed=3)
        assert r["ci_low"] < r["value"] < r["ci_high"] and r["n"] == n
        assert r["value"] == pytest.approx(0.3)
        normal = 2 * 1.959964 * math.sqrt(0.21 / n)
        assert _width(r) == pytest.approx(normal, rel=0.12)
        widths[n] = _width(r)
    assert widths[1600] == pytest.approx(widths[100] / 4, rel=0.2)  # 1 / sqrt(n)


def test_level_sets_the_coverage():
    x = np.random.default_rng(4).random(200)
    w90, w95, w99 = (_width(mean_metric(x, level=lv)) for lv in (0.90, 0.95, 0.99))
    assert w90 < w95 < w99
    assert w90 / w95 == pytest.approx(1.645 / 1.960, rel=0.1)


def test_same_seed_same_interval_other_seed_another():
    y, p = _auc_data(120, 5)
    for f in (
        lambda s: bootstrap_metric(lambda a, b: np.mean(a == (b > 0.5)), y, p, n_boot=200, seed=s),
        lambda s: auc_metric(y, p, seed=s),
        lambda s: mean_metric(p, seed=s),
    ):
        assert f(7) == f(7)
        assert (f(7)["ci_low"], f(7)["ci_high"]) != (f(8)["ci_low"], f(8)["ci_high"])


def test_cluster_bootstrap_of_identical_copies_is_the_bootstrap_of_the_originals():
    # 30 patients with 5 identical images each: the images are not 150 independent observations.
    v = np.random.default_rng(6).random(30)
    copies, patient = np.repeat(v, 5), np.repeat(np.arange(30), 5)
    item = bootstrap_metric(np.mean, copies, seed=1)
    cluster = bootstrap_metric(np.mean, copies, groups=patient, seed=1)
    assert cluster["n"] == 30 and item["n"] == 150
    assert _width(cluster) > 1.8 * _width(item)  # sqrt(5) = 2.24 in expectation
    # the same draws over 30 units: exactly the item bootstrap of the 30 originals
    originals = bootstrap_metric(np.mean, v, seed=1)
    assert (cluster["ci_low"], cluster["ci_high"]) == pytest.approx((originals["ci_low"], originals["ci_high"]))
    fast = mean_metric(copies, groups=patient, seed=1)
    assert (fast["ci_low"], fast["ci_high"], fast["n"]) == pytest.approx((cluster["ci_low"], cluster["ci_high"], 30))


def test_groups_need_not_be_sorted_or_numeric():
    v = np.random.default_rng(7).random(40)
    ids = np.array([f"P{i % 8}" for i in range(40)])
    r = bootstrap_metric(np.mean, v, groups=ids, n_boot=300)
    fast = mean_metric(v, groups=ids, n_boot=300)
    assert r["n"] == fast["n"] == 8
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((fast["ci_low"], fast["ci_high"]))


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("grouped", [False, True])
def test_auc_metric_equals_the_generic_bootstrap_of_roc_auc_score(ties, grouped):
    y, p = _auc_data(60, 8, ties)
    groups = np.random.default_rng(9).integers(0, 20, 60) if grouped else None
    fast = auc_metric(y, p, groups=groups, n_boot=300, seed=2)
    slow = bootstrap_metric(roc_auc_score, y, p, groups=groups, n_boot=300, seed=2)
    assert fast["value"] == slow["value"] and fast["n"] == slow["n"]
    assert (fast["ci_low"], fast["ci_high"]) == pytest.approx((slow["ci_low"], slow["ci_high"]), abs=1e-12)


def test_auc_with_one_class_resamples_skips_them():
    # One positive in 8: about a third of the resamples have no positive; roc_auc_score raises on those.
    y = np.array([0, 0, 0, 1, 0, 0, 0, 0])
    p = np.array([0.1, 0.4, 0.2, 0.9, 0.3, 0.8, 0.5, 0.6])
    slow = bootstrap_metric(roc_auc_score, y, p, n_boot=400)
    fast = auc_metric(y, p, n_boot=400)
    assert slow["value"] == fast["value"] == roc_auc_score(y, p)
    assert 0.0 <= slow["ci_low"] < slow["ci_high"] <= 1.0
    assert (fast["ci_low"], fast["ci_high"]) == pytest.approx((slow["ci_low"], slow["ci_high"]))
    assert math.isnan(auc_metric(np.zeros(5, int), p[:5], n_boot=50)["value"])


def test_interval_is_nan_when_fewer_than_half_the_resamples_are_valid():
    x = np.arange(10.0)
    # valid only when item 0 is drawn first: 10 % of resamples (NaN or ValueError for the rest)
    rare_nan = lambda a: a.mean() if a[0] == 0 else float("nan")  # noqa: E731

    def rare_raise(a):
        if a[0] != 0:
            raise ValueError("no")
        return a.mean()

    for fn in (rare_nan, rare_raise):
        r = bootstrap_metric(fn, x, n_boot=300)
        assert r["value"] == 4.5 and math.isnan(r["ci_low"]) and math.isnan(r["ci_high"])
    # valid unless item 0 is drawn first: 90 %
    r = bootstrap_metric(lambda a: a.mean() if a[0] != 0 else float("nan"), x, n_boot=300)
    assert r["ci_low"] < r["ci_high"]


def test_mean_metric_skips_missing_scores():
    # ET Dice per case: NaN where a case has no enhancing tumour; n counts the scored cases.
    v = np.array([0.8, np.nan, 0.6, 0.7, np.nan, 0.9])
    r = mean_metric(v, n_boot=300)
    assert r["value"] == pytest.approx(0.75) and r["n"] == 4
    slow = bootstrap_metric(np.nanmean, v, n_boot=300)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((slow["ci_low"], slow["ci_high"]))
    grouped = mean_metric(v, groups=[0, 0, 1, 1, 2, 3], n_boot=50)
    assert grouped["n"] == 3  # group 2 has no score
    empty = mean_metric([np.nan, np.nan], n_boot=50)
    assert math.isnan(empty["value"]) and math.isnan(empty["ci_low"]) and empty["n"] == 0


def test_auc_of_120_items_is_fast():
    y, p = _auc_data(120, 10)
    t = time.perf_counter()
    auc_metric(y, p, groups=np.arange(120) // 3)
    auc_metric(y, p)
    assert time.perf_counter() - t < 1.0


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="one length"):
        bootstrap_metric(roc_auc_score, [0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="groups"):
        bootstrap_metric(np.mean, np.arange(4.0), groups=[0, 1])
    with pytest.raises(ValueError, match="n_boot"):
        mean_metric(np.arange(4.0), n_boot=0)
    with pytest.raises(ValueError, match="level"):
        mean_metric(np.arange(4.0), level=95)
    with pytest.raises(ValueError, match="0/1"):
        auc_metric([0, 2, 1], [0.1, 0.2, 0.3])


def test_headline_block_accepts_the_contract_and_returns_plain_data():
    block = headline_block(
        {
            "dice_wt": {"value": np.float32(0.5), "ci_low": 0.4, "ci_high": np.float64(0.6), "n": np.int64(12)},
            "auc_with_metadata": mean_metric(np.arange(5.0), n_boot=20),
        }
    )
    assert block["dice_wt"] == {"value": 0.5, "ci_low": pytest.approx(0.4), "ci_high": 0.6, "n": 12}
    assert type(block["dice_wt"]["n"]) is int and type(block["dice_wt"]["value"]) is float
    assert headline_block({"auc": {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}})


@pytest.mark.parametrize(
    "bad",
    [
        {"auc": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}},  # no n
        {"auc": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 3, "std": 0.1}},  # an extra key
        {"auc": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 3.0}},
        {"auc": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": -1}},
        {"auc": {"value": "0.5", "ci_low": 0.4, "ci_high": 0.6, "n": 3}},
        {"auc": {"value": True, "ci_low": 0.4, "ci_high": 0.6, "n": 3}},
        {"Dice WT": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 3}},
        {"auc": 0.5},
        [("auc", 0.5)],
    ],
)
def test_headline_block_rejects_anything_else(bad):
    with pytest.raises(ValueError):
        headline_block(bad)


def test_read_headline(tmp_path):
    good = tmp_path / "metrics.json"
    block = {
        "auc": auc_metric(*_auc_data(40, 11), n_boot=100),
        "auc_one_class": {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 5},
    }
    io.write_json(good, {"headline": block, "per_class": {"CNV": 0.9}})
    got = read_headline(good)
    assert got["auc"] == block["auc"] and math.isnan(got["auc_one_class"]["ci_low"])
    cases = {"none.json": {"auc": 0.9}, "bad.json": {"headline": {"auc": {"value": 0.9}}}, "list.json": [1, 2]}
    for name, content in cases.items():
        io.write_json(tmp_path / name, content)
    (tmp_path / "broken.json").write_text("{not json")
    for name, problem in [
        ("none.json", "no headline block"),
        ("bad.json", "malformed headline block"),
        ("list.json", "no headline block"),
        ("broken.json", "not a readable JSON"),
        ("missing.json", "does not exist"),
    ]:
        with pytest.raises(InputError, match=problem) as err:
            read_headline(tmp_path / name)
        assert err.value.path == str(tmp_path / name)
