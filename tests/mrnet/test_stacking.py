"""The stacker: scikit-learn's logistic regression, kept as JSON and reloaded without pickle."""

import json

import numpy as np
import pandas as pd
import pytest

from medflow.errors import InputError
from medflow.mrnet.stacking import Stacker


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = pd.DataFrame(
        {
            p: np.clip(0.5 + (y - 0.5) * s + rng.normal(0, 0.25, n), 0, 1)
            for p, s in (("axial", 0.1), ("coronal", 0.6), ("sagittal", 0.3))
        }
    )
    return X, y


def test_json_round_trip_matches_scikit_learn(tmp_path):
    from sklearn.linear_model import LogisticRegression

    X, y = _data()
    st = Stacker.fit(X, y, C=0.5, fit_on="out_of_fold")
    ref = LogisticRegression(C=0.5, class_weight="balanced", random_state=0).fit(X.to_numpy(), y)
    np.testing.assert_allclose(st.predict_proba(X), ref.predict_proba(X.to_numpy())[:, 1], rtol=1e-10)
    plain = Stacker.fit(X, y, C=0.5, class_weight="none")  # the tutorial's unweighted fit
    ref = LogisticRegression(C=0.5, random_state=0).fit(X.to_numpy(), y)
    np.testing.assert_allclose(plain.predict_proba(X), ref.predict_proba(X.to_numpy())[:, 1], rtol=1e-10)
    st.save(tmp_path / "stacker.json")
    data = json.loads((tmp_path / "stacker.json").read_text())
    assert data["planes"] == ["axial", "coronal", "sagittal"] and len(data["coef"]) == 3
    assert (
        isinstance(data["intercept"], float) and data["fit_on"] == "out_of_fold" and data["class_weight"] == "balanced"
    )
    back = Stacker.load(tmp_path / "stacker.json")
    assert back == st
    # Columns are matched by plane name, not position.
    np.testing.assert_allclose(back.predict_proba(X[["sagittal", "axial", "coronal"]]), st.predict_proba(X))
    assert st.coef[1] > st.coef[0], "the informative plane weighs more"


def test_bad_stacker_file_is_an_input_error(tmp_path):
    """The error names the file to fix (the one-line InputError a job prints)."""
    path = tmp_path / "stacker.json"
    path.write_text('{"planes": ["axial"], "coef": [1.0, 2.0], "intercept": 0.0}')
    with pytest.raises(InputError, match="do not match") as err:
        Stacker.load(path)
    assert err.value.path == str(path)
    path.write_text("not json")
    with pytest.raises(InputError, match="not a stacker JSON") as err:
        Stacker.load(path)
    assert err.value.path == str(path)


def test_defaults_are_the_balanced_unit_C_fit_and_record_what_it_was_fitted_on():
    """Called without options: scikit-learn's balanced fit at C = 1; the stacker records how many
    exams and positives it saw, and claims no fit set (out_of_fold/in_sample) it was not told."""
    from sklearn.linear_model import LogisticRegression

    X, y = _data(120, seed=3)
    st = Stacker.fit(X, y)
    ref = LogisticRegression(C=1.0, class_weight="balanced").fit(X.to_numpy(), y)
    np.testing.assert_allclose(st.coef, ref.coef_[0], rtol=1e-6)
    assert st.intercept == pytest.approx(ref.intercept_[0], rel=1e-6)
    assert (st.C, st.class_weight, st.fit_on) == (1.0, "balanced", "")
    assert (st.n_fit, st.n_fit_positive) == (120, int(y.sum())) and 0 < st.n_fit_positive < 120


def test_unknown_class_weight_is_refused_by_name():
    X, y = _data(20)
    with pytest.raises(ValueError, match="class_weight must be 'balanced' or 'none', got 'balance'"):
        Stacker.fit(X, y, class_weight="balance")


def test_nullable_float_probabilities_are_scored_like_plain_floats():
    """A table read with pandas' nullable dtypes (Float64, e.g. ``dtype_backend="numpy_nullable"``)
    gives the same probabilities as plain float64 columns."""
    X, y = _data(50)
    st = Stacker.fit(X, y)
    np.testing.assert_allclose(st.predict_proba(X.astype("Float64")), st.predict_proba(X), rtol=1e-12)


def test_balanced_weights_centre_the_threshold():
    """With 10 % positives, the unweighted fit leans to 'negative' at 0.5; the balanced one does not."""
    rng = np.random.default_rng(1)
    y = (rng.random(400) < 0.1).astype(int)
    X = pd.DataFrame(
        {p: np.clip(0.4 + 0.2 * y + rng.normal(0, 0.15, 400), 0, 1) for p in ("axial", "coronal", "sagittal")}
    )
    sens = {
        cw: ((Stacker.fit(X, y, class_weight=cw).predict_proba(X) >= 0.5) & (y == 1)).sum() / y.sum()
        for cw in ("none", "balanced")
    }
    assert sens["balanced"] > 0.7 > sens["none"]


def test_one_class_cannot_be_stacked():
    X, _ = _data(10)
    with pytest.raises(ValueError, match="only one class"):
        Stacker.fit(X, np.ones(10))
