"""Logistic regression over the three planes' probabilities, stored as JSON (never a pickle).

Features are the plane models' probabilities in ``planes`` order, as in the MRNet tutorial. The
stacker is fitted with scikit-learn and applied with numpy from its JSON coefficients, so a saved
stacker needs neither scikit-learn nor unpickling to be used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medflow import io
from medflow.errors import InputError
from medflow.ingest.mrnet import PLANES


@dataclass
class Stacker:
    planes: list[str]
    coef: list[float]
    intercept: float
    fit_on: str = ""  # "out_of_fold" or "in_sample"
    C: float = 1.0
    class_weight: str = "balanced"  # "balanced" or "none"
    n_fit: int = 0
    n_fit_positive: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        X: pd.DataFrame,
        y: Sequence[int],
        *,
        C: float = 1.0,
        class_weight: str = "balanced",
        fit_on: str = "",
        seed: int = 0,
    ) -> Stacker:
        """``X``: one column of probabilities per plane (its column order is kept), ``y``: 0/1.

        ``class_weight`` ``balanced`` weighs the classes equally, as the plane models' losses do, so 0.5
        means the same for the stack as for each plane; ``none`` is the tutorial's plain fit, whose
        output leans to the majority class."""
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(y).astype(int)
        if len(np.unique(y)) < 2:
            raise ValueError(f"cannot fit the stacker: its {len(y)} exams hold only one class")
        if class_weight not in ("balanced", "none"):
            raise ValueError(f"class_weight must be 'balanced' or 'none', got {class_weight!r}")
        lr = LogisticRegression(C=C, class_weight=None if class_weight == "none" else "balanced", random_state=seed)
        lr.fit(X.to_numpy(dtype=float), y)
        return cls(
            list(X.columns),
            lr.coef_[0].tolist(),
            float(lr.intercept_[0]),
            fit_on,
            float(C),
            class_weight,
            len(y),
            int(y.sum()),
        )

    def decision(self, X: pd.DataFrame) -> np.ndarray:
        return X[self.planes].to_numpy(dtype=float) @ np.asarray(self.coef) + self.intercept

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """P(positive) per row of ``X`` (columns named by plane, any order)."""
        return 1.0 / (1.0 + np.exp(-self.decision(X)))

    def save(self, path: str | os.PathLike) -> None:
        io.write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Stacker:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            st = cls(**data)
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise InputError(path, f"not a stacker JSON ({e.__class__.__name__}: {e})") from None
        if len(st.planes) != len(st.coef) or not set(st.planes) <= set(PLANES):
            raise InputError(path, f"planes {st.planes} do not match coefficients {st.coef}")
        return st
