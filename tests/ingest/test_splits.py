import pandas as pd
import pytest

from medflow.ingest.splits import assign_splits, ids_in, read_split, write_split


def test_stratified_patient_split_is_deterministic_and_order_free():
    ids = [f"P{i:03d}" for i in range(40)]
    grades = ["HGG" if i % 4 else "LGG" for i in range(40)]
    fr = {"train": 0.6, "val": 0.2, "test": 0.2}
    a = assign_splits(ids, fr, seed=1, strata=grades)
    b = assign_splits(ids[::-1], fr, seed=1, strata=grades[::-1])
    assert a == b
    assert sorted(a) == sorted(ids)
    for split, share in fr.items():
        members = [i for i in ids if a[i] == split]
        assert len(members) == pytest.approx(40 * share, abs=1)
        lgg = [i for i in members if grades[ids.index(i)] == "LGG"]
        assert len(lgg) == pytest.approx(10 * share, abs=1), "each split gets its share of each class"
    assert assign_splits(ids, fr, seed=2, strata=grades) != a


def test_small_strata_still_reach_every_split():
    out = assign_splits(["a", "b", "c", "d"], {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    assert sorted(out.values()) == ["test", "train", "train", "val"]


def test_write_and_read_split(tmp_path):
    df = write_split(tmp_path / "split.csv", {"0002": "val", "0001": "train"}, extra={"label": [1, 0]})
    assert list(df["id"]) == ["0001", "0002"]
    back = read_split(tmp_path / "split.csv")
    assert ids_in(back, "train") == ["0001"], "ids keep leading zeros"
    assert list(pd.read_csv(tmp_path / "split.csv").columns) == ["id", "split", "label"]
