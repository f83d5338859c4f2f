"""Patient-level aggregation of slice probabilities."""

import numpy as np
import pytest

from medflow.grade.aggregate import aggregate

CASES = ["b", "a", "b", "a", "a", "c"]
PROB = [0.9, 0.2, 0.3, 0.4, 0.9, 0.6]


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("mean", {"a": 0.5, "b": 0.6, "c": 0.6}),
        ("median", {"a": 0.4, "b": 0.6, "c": 0.6}),
        ("max", {"a": 0.9, "b": 0.9, "c": 0.6}),
        ("vote", {"a": 1 / 3, "b": 0.5, "c": 1.0}),
    ],
)
def test_rules(rule, expected):
    df = aggregate(CASES, PROB, rule)
    assert df["id"].tolist() == ["a", "b", "c"]
    assert dict(zip(df["id"], df["prob"])) == pytest.approx(expected)
    assert df["n_slices"].tolist() == [3, 2, 1]


def test_result_does_not_depend_on_slice_order():
    order = np.random.default_rng(0).permutation(len(CASES))
    a = aggregate(CASES, PROB, "mean")
    b = aggregate(np.array(CASES)[order], np.array(PROB)[order], "mean")
    assert a.equals(b)


def test_labels_are_carried_per_patient_and_must_agree():
    df = aggregate(CASES, PROB, "max", labels=[1, 0, 1, 0, 0, 1])
    assert df["label"].tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="different labels"):
        aggregate(CASES, PROB, "max", labels=[1, 0, 0, 0, 0, 1])


def test_unknown_rule_and_empty_input_are_errors():
    with pytest.raises(ValueError, match="aggregation rule"):
        aggregate(CASES, PROB, "sum")
    with pytest.raises(ValueError):
        aggregate([], [], "mean")
