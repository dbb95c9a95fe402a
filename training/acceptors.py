"""The learned acceptor: P(surrogate agrees with teacher) from acceptor features.

A logistic regression on degree-2 polynomial features of
`router.acceptor.ACCEPTOR_FEATURES`: smooth scores (few ties, so fine
thresholds), fast to train on a validation split, exported as a quadratic form.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from router.acceptor import ACCEPTOR_FEATURES
from training.onnx_graph import IR_VERSION, OPSET


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
    """The fitted acceptor as a quadratic form: "acceptor_features" [N, 4] -> "probabilities".

    Degree-2 features, standardised, into a logistic regression, is
    sigmoid(c + sum_i x_i (x Q + g)_i): one MatMul and a few element-wise ops,
    where skl2onnx's rendering of the same pipeline runs some thirty kernels, each
    with its own overhead on a one-row prediction.
    """
    poly: PolynomialFeatures = model.steps[0][1]
    scaler: StandardScaler = model.steps[1][1]
    lr: LogisticRegression = model.steps[2][1]
    weights = lr.coef_[0] / scaler.scale_  # per polynomial term, in raw units
    const = float(lr.intercept_[0] - weights @ scaler.mean_)
    n = len(ACCEPTOR_FEATURES)
    quad = np.zeros((n, n))
    lin = np.zeros(n)
    for w, powers in zip(weights, poly.powers_, strict=True):
        used = np.flatnonzero(powers)
        if len(used) == 0:
            const += w
        elif powers.sum() == 1:
            lin[used[0]] += w
        elif len(used) == 1:
            quad[used[0], used[0]] += w
        else:
            quad[used[0], used[1]] += w
    x = "acceptor_features"
    nodes = [
        helper.make_node("MatMul", [x, "q"], ["xq"]),
        helper.make_node("Add", ["xq", "g"], ["xq_g"]),
        helper.make_node("Mul", ["xq_g", x], ["terms"]),
        helper.make_node("ReduceSum", ["terms", "axis1"], ["form"], keepdims=1),
        helper.make_node("Add", ["form", "c"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p_agree"]),
        helper.make_node("Sub", ["one", "p_agree"], ["p_disagree"]),
        helper.make_node("Concat", ["p_disagree", "p_agree"], ["probabilities"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(quad.astype(np.float32), "q"),
        numpy_helper.from_array(lin.astype(np.float32), "g"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(const, np.float32), "c"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    graph = helper.make_graph(
        nodes,
        "tracer_acceptor",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [None, n])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        inits,
    )
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET[""])])
    out.ir_version = IR_VERSION
    onnx.checker.check_model(out)
    return out
