"""OCT evaluation tables: per-class precision/recall and the top-k predictions per image."""

import numpy as np
import pytest

from medflow.oct.evaluate import multiclass_report, top_k_table

CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]


def test_multiclass_report_per_class_precision_recall():
    y = [0, 0, 1, 1, 2, 3]
    pred = [0, 1, 1, 1, 3, 3]
    r = multiclass_report(y, pred, CLASSES)
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["per_class"]["CNV"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert r["per_class"]["DME"]["precision"] == pytest.approx(2 / 3) and r["per_class"]["DME"]["recall"] == 1.0
    assert r["per_class"]["DRUSEN"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}  # never predicted
    assert r["macro_recall"] == pytest.approx((0.5 + 1 + 0 + 1) / 4)
    assert r["n"] == 6


def test_top_k_table_orders_classes_by_probability():
    p = np.array([[0.1, 0.6, 0.2, 0.1], [0.25, 0.05, 0.3, 0.4]])
    df = top_k_table(["a", "b"], np.log(p), CLASSES, k=3)
    assert list(df.columns) == ["id", "top1", "prob1", "top2", "prob2", "top3", "prob3", "p_CNV", "p_DME", "p_DRUSEN", "p_NORMAL"]
    assert df.loc[0, ["top1", "top2", "top3"]].tolist() == ["DME", "DRUSEN", "CNV"]
    assert df.loc[1, ["top1", "top2", "top3"]].tolist() == ["NORMAL", "DRUSEN", "CNV"]
    assert df.loc[1, "prob1"] == pytest.approx(0.4)
    assert np.allclose(df[[f"p_{c}" for c in CLASSES]].sum(axis=1), 1)
    assert len(top_k_table(["a", "b"], np.log(p), CLASSES, k=9).filter(like="top").columns) == 4
