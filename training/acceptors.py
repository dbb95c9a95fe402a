"""The learned acceptor: P(surrogate agrees with teacher) from acceptor features.

A logistic regression on degree-2 polynomial features of
`router.acceptor.ACCEPTOR_FEATURES`: smooth scores (few ties, so fine
thresholds), fast to train on a validation split, exported with skl2onnx.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from router.acceptor import ACCEPTOR_FEATURES
from training.onnx_graph import OPSET


def make_learned() -> Pipeline:
    return make_pipeline(
        PolynomialFeatures(2), StandardScaler(), LogisticRegression(C=1.0, max_iter=500)
    )


def fit_learned(features: np.ndarray, correct: np.ndarray) -> Pipeline | None:
    """None when the target has one class only (nothing to learn)."""
    if len(np.unique(correct)) < 2:
        return None
    model = make_learned()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features, correct.astype(np.int64))
    return model


def learned_scores(model: Pipeline | None, features: np.ndarray) -> np.ndarray:
    if model is None:
        return features[:, 0].astype(np.float64)
    return model.predict_proba(features)[:, 1]


def cross_fit_scores(
    features: np.ndarray, correct: np.ndarray, seed: int, folds: int = 2
) -> np.ndarray:
    """Out-of-fold acceptor scores, to judge the learned acceptor on data it did not see."""
    rng = np.random.default_rng(seed)
    fold = rng.permutation(len(features)) % folds
    out = np.zeros(len(features))
    for f in range(folds):
        tr, te = fold != f, fold == f
        out[te] = learned_scores(fit_learned(features[tr], correct[tr]), features[te])
    return out


def learned_to_onnx(model: Pipeline) -> onnx.ModelProto:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_sklearn(
            model,
            initial_types=[("acceptor_features", FloatTensorType([None, len(ACCEPTOR_FEATURES)]))],
            options={LogisticRegression: {"zipmap": False}},
            target_opset=OPSET,
        )
