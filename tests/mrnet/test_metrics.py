"""The training jobs' own AUC (no scikit-learn import in every job) equals scikit-learn's."""

import numpy as np
import pytest

from medflow.mrnet.metrics import rank_auc


def test_rank_auc_equals_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for n in (5, 40, 300):
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        p = np.round(rng.random(n), 1)  # many ties
        assert rank_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert np.isnan(rank_auc([1, 1], [0.2, 0.4]))
