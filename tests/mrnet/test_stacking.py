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
    X = pd.DataFrame({p: np.clip(0.5 + (y - 0.5) * s + rng.normal(0, 0.25, n), 0, 1)
                      for p, s in (("axial", 0.1), ("coronal", 0.6), ("sagittal", 0.3))})
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
    assert isinstance(data["intercept"], float) and data["fit_on"] == "out_of_fold" and data["class_weight"] == "balanced"
    back = Stacker.load(tmp_path / "stacker.json")
    assert back == st
    # Columns are matched by plane name, not position.
    np.testing.assert_allclose(back.predict_proba(X[["sagittal", "axial", "coronal"]]), st.predict_proba(X))
    assert st.coef[1] > st.coef[0], "the informative plane weighs more"


def test_bad_stacker_file_is_an_input_error(tmp_path):
    path = tmp_path / "stacker.json"
    path.write_text('{"planes": ["axial"], "coef": [1.0, 2.0], "intercept": 0.0}')
    with pytest.raises(InputError, match="do not match"):
        Stacker.load(path)
    path.write_text("not json")
    with pytest.raises(InputError, match="not a stacker JSON"):
        Stacker.load(path)


def test_balanced_weights_centre_the_threshold():
    """With 10 % positives, the unweighted fit leans to 'negative' at 0.5; the balanced one does not."""
    rng = np.random.default_rng(1)
    y = (rng.random(400) < 0.1).astype(int)
    X = pd.DataFrame({p: np.clip(0.4 + 0.2 * y + rng.normal(0, 0.15, 400), 0, 1) for p in ("axial", "coronal", "sagittal")})
    sens = {cw: ((Stacker.fit(X, y, class_weight=cw).predict_proba(X) >= 0.5) & (y == 1)).sum() / y.sum() for cw in ("none", "balanced")}
    assert sens["balanced"] > 0.7 > sens["none"]


def test_one_class_cannot_be_stacked():
    X, _ = _data(10)
    with pytest.raises(ValueError, match="only one class"):
        Stacker.fit(X, np.ones(10))
