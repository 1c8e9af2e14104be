"""An RBF-kernel SVM that stays linear in the rows: Nystroem features and a linear SVM on them.

The score stage uses it in place of `sklearn.svm.SVC` past `adapt.classifiers.SVC_EXACT_MAX_ROWS`
training rows, where the exact kernel's fit time (between the square and the cube of the rows)
would dominate a run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.kernel_approximation import Nystroem
from sklearn.svm import LinearSVC


class ApproxRBFSVC(ClassifierMixin, BaseEstimator):
    """`n_components` Nystroem landmarks of the RBF kernel, then a linear SVM with penalty `C`.
    `gamma="scale"` is 1 / (dims * variance) of the training rows, as in SVC."""

    def __init__(
        self,
        C: float = 1.0,
        gamma: float | str = "scale",
        n_components: int = 1000,
        random_state: int = 0,
    ) -> None:
        self.C = C
        self.gamma = gamma
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> ApproxRBFSVC:
        X = np.asarray(X, dtype=np.float64)
        gamma = self.gamma
        if gamma == "scale":
            var = float(X.var())
            gamma = 1.0 / (X.shape[1] * var) if var > 0 else 1.0
        self.map_ = Nystroem(
            gamma=gamma,
            n_components=min(self.n_components, len(X)),
            random_state=self.random_state,
        ).fit(X)
        self.svm_ = LinearSVC(C=self.C).fit(self.map_.transform(X), y)
        self.classes_ = self.svm_.classes_
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        return self.svm_.decision_function(self.map_.transform(np.asarray(X, dtype=np.float64)))

    def predict(self, X: Any) -> np.ndarray:
        return self.svm_.predict(self.map_.transform(np.asarray(X, dtype=np.float64)))
