"""Patient-level splits: examples, and properties that must hold for every input (Hypothesis)."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

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


def test_exact_shares_are_met_exactly():
    """Fractions that divide the stratum give exactly those counts (weights need not sum to 1)."""
    out = assign_splits([str(i) for i in range(40)], {"train": 2, "val": 1, "test": 1}, seed=5)
    assert sorted(out.values()).count("train") == 20 and list(out.values()).count("val") == 10


def test_fractions_must_add_up_to_more_than_zero():
    with pytest.raises(ValueError, match=r"^split fractions must add up to more than 0$"):
        assign_splits(["a", "b"], {"train": 0.0, "val": 0.0}, seed=0)


def test_rerunning_with_the_seed_reproduces_the_split_and_another_seed_changes_it():
    """The split is written once and must come back the same when the ingest rule reruns."""
    ids = [f"BraTS20_{i:03d}" for i in range(30)]
    fr = {"train": 0.5, "val": 0.5}
    runs = [assign_splits(ids, fr, seed=s) for s in range(4)]
    assert runs == [assign_splits(ids, fr, seed=s) for s in range(4)]
    assert all(a != b for a, b in itertools.combinations(runs, 2)), "the seed decides the draw"


def test_strata_are_shuffled_independently():
    """Two classes of the same size, with ids in the same order, must not get the same pattern of
    splits (one permutation shared by all strata would tie e.g. LGG case k to HGG case k)."""
    ids = [f"H{i:02d}" for i in range(20)] + [f"L{i:02d}" for i in range(20)]
    strata = ["HGG"] * 20 + ["LGG"] * 20
    for seed in range(3):
        out = assign_splits(ids, {"train": 0.5, "val": 0.5}, seed, strata)
        assert [out[i] for i in ids[:20]] != [out[i] for i in ids[20:]], seed


def test_write_and_read_split(tmp_path):
    df = write_split(tmp_path / "split.csv", {"0002": "val", "0001": "train"}, extra={"label": [1, 0]})
    assert list(df["id"]) == ["0001", "0002"] and list(df["label"]) == [0, 1], "extra columns follow their id"
    back = read_split(tmp_path / "split.csv")
    assert ids_in(back, "train") == ["0001"], "ids keep leading zeros"
    assert list(pd.read_csv(tmp_path / "split.csv").columns) == ["id", "split", "label"]
    assert ids_in(pd.DataFrame({"id": [7, 8], "split": ["test", "val"]}), "test") == ["7"]
    write_split(tmp_path / "rsna.csv", {"b": "val", "a": "test"}, id_col="patientId")
    assert ids_in(read_split(tmp_path / "rsna.csv", id_col="patientId"), "test", id_col="patientId") == ["a"]


# ---- properties -------------------------------------------------------------------------------------

SPLIT_NAMES = ("train", "val", "test", "holdout")


@st.composite
def split_problems(draw):
    """(ids, strata, fractions, seed): up to 40 unique ids in up to 3 strata, 1-4 splits whose weights
    may be 0 (at least one is not) and need not add up to 1."""
    ids = draw(st.lists(st.text("abcxyz019-_", min_size=1, max_size=5), unique=True, max_size=40))
    strata = draw(st.lists(st.sampled_from(["HGG", "LGG", "NORMAL"]), min_size=len(ids), max_size=len(ids)))
    names = draw(st.lists(st.sampled_from(SPLIT_NAMES), min_size=1, max_size=4, unique=True))
    weights = draw(
        st.lists(st.integers(0, 10) | st.floats(0.01, 1.0), min_size=len(names), max_size=len(names)).filter(
            lambda w: sum(w) > 0
        )
    )
    return ids, strata, dict(zip(names, weights)), draw(st.integers(0, 2**32 - 1))


def shares(fractions, n):
    """Each split's exact share of a stratum of ``n`` ids (the fraction x n), normalised as documented."""
    w = np.array(list(fractions.values()), dtype=float)
    return dict(zip(fractions, w / w.sum() * n))


@given(split_problems())
def test_every_id_once_and_each_split_within_one_item_of_its_share_per_stratum(problem):
    ids, strata, fractions, seed = problem
    out = assign_splits(ids, fractions, seed, strata)
    assert sorted(out) == sorted(ids), "every id assigned exactly once"
    assert set(out.values()) <= set(fractions)
    for stratum in set(strata):
        members = [i for i, s in zip(ids, strata) if s == stratum]
        got = {name: sum(out[i] == name for i in members) for name in fractions}
        for name, share in shares(fractions, len(members)).items():
            assert abs(got[name] - share) < 1 + 1e-9, (stratum, name, got, share)
            if fractions[name] == 0:
                assert got[name] == 0, "a split of fraction 0 gets nothing"


@given(split_problems())
def test_every_nonzero_split_gets_an_id_whenever_the_shares_allow_it(problem):
    """Docstring: each non-zero split gets at least one id of a stratum "when the stratum has enough".
    Enough = some choice of counts, each within one item of its share (floor or ceil) and adding up
    to the stratum, gives every non-zero split one id (brute force over those choices)."""
    ids, strata, fractions, seed = problem
    out = assign_splits(ids, fractions, seed, strata)
    for stratum in set(strata):
        members = [i for i, s in zip(ids, strata) if s == stratum]
        share = shares(fractions, len(members))
        options = [sorted({math.floor(v), math.ceil(v)}) for v in share.values()]
        possible = any(
            sum(c) == len(members) and all(k > 0 for k, name in zip(c, share) if fractions[name] > 0)
            for c in itertools.product(*options)
        )
        if possible:
            got = {out[i] for i in members}
            assert got == {n for n in fractions if fractions[n] > 0}, (stratum, share)


@given(split_problems(), st.randoms(use_true_random=False))
def test_assignment_does_not_depend_on_the_input_order(problem, random):
    ids, strata, fractions, seed = problem
    pairs = list(zip(ids, strata))
    random.shuffle(pairs)
    shuffled = assign_splits([i for i, _ in pairs], fractions, seed, [s for _, s in pairs])
    assert shuffled == assign_splits(ids, fractions, seed, strata)


@given(split_problems())
def test_same_seed_same_split(problem):
    ids, strata, fractions, seed = problem
    assert assign_splits(ids, fractions, seed, strata) == assign_splits(list(ids), dict(fractions), seed, list(strata))
