"""Candidate surrogates: linear SVM, logistic regression, MLP, tree ensemble.

Each candidate is trained once on a given data set, predicts probabilities
over all `n_classes` label indices, and exports a fused ONNX head
(`training.onnx_graph.build_head`). Wide sparse features are reduced with
TruncatedSVD for the MLP and the trees (the projection goes into the head).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.ensemble import ExtraTreesClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.svm import LinearSVC

from training.onnx_graph import OPSET, SPARSE_MIN_DIM, build_head

Matrix = Any  # a dense array or a scipy sparse matrix (scipy has no type information)


class Reducer:
    """Dense low-dimensional view of the features: identity for narrow dense
    features, TruncatedSVD for wide or sparse ones."""

    def __init__(self, dim: int, n_components: int = 128, seed: int = 0) -> None:
        self.dim = dim
        self.n_components = n_components
        self.seed = seed
        self.svd: TruncatedSVD | None = None

    @property
    def identity(self) -> bool:
        return self.dim <= max(self.n_components, 1024)

    def fit(self, x: Matrix) -> Reducer:
        if not self.identity:
            self.svd = TruncatedSVD(self.n_components, n_iter=2, random_state=self.seed)
            self.svd.fit(x)
        return self

    def transform(self, x: Matrix) -> np.ndarray:
        if self.svd is None:
            return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)
        return self.svd.transform(x).astype(np.float32)

    def projection(self) -> np.ndarray:
        if self.svd is None:
            return np.eye(self.dim, dtype=np.float32)
        return self.svd.components_.T.astype(np.float32)


def _full_proba(proba: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((proba.shape[0], n_classes), dtype=np.float32)
    out[:, classes] = proba
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class Candidate:
    """Base: subclasses set `name` and implement fit / predict_proba / to_onnx."""

    name: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    uses_reducer: bool = False
    n_classes: int = 0

    def fit(self, x: Matrix, y: np.ndarray, n_classes: int, reducer: Reducer) -> Candidate:
        raise NotImplementedError

    def predict_proba(self, x: Matrix, reducer: Reducer) -> np.ndarray:
        raise NotImplementedError

    def tune(self, x_val: Matrix, y_val: np.ndarray, reducer: Reducer) -> None:
        """Optional post-hoc tuning on validation data (e.g. temperature)."""

    def to_onnx(
        self,
        dim: int,
        reducer: Reducer,
        centroids: np.ndarray | None,
        ood_block: tuple[int, int] | None = None,
    ) -> onnx.ModelProto:
        raise NotImplementedError


def _check_all_classes(y: np.ndarray, n_classes: int) -> None:
    if len(np.unique(y)) != n_classes:
        raise ValueError("export needs a model trained on every class")


@dataclass
class LinearSVM(Candidate):
    """LinearSVC (one-vs-rest hinge loss), probabilities by a tempered softmax."""

    name: str = "linear_svm"
    C: float = 0.5
    dense_C: float = 2.0
    temperature: float = 5.0

    def __post_init__(self) -> None:
        self.params = {"C": self.C}

    def fit(self, x: Matrix, y: np.ndarray, n_classes: int, reducer: Reducer) -> LinearSVM:
        self.n_classes = n_classes
        # Dense sentence embeddings want a weaker regularisation than sparse TF-IDF
        # (Banking77, MiniLM: C=2 beats C=0.5 by 1.5 points of coverage at 0.95).
        c = self.C if sp.issparse(x) else self.dense_C
        self.params["C"] = c
        self.model = LinearSVC(C=c, max_iter=2000, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(x, y)
        return self

    def _weights(self) -> tuple[np.ndarray, np.ndarray]:
        coef = self.model.coef_
        inter = self.model.intercept_
        classes = self.model.classes_
        if coef.shape[0] == 1:  # binary: one decision value d -> logits [-d/2, d/2]
            coef = np.vstack([-coef[0] / 2, coef[0] / 2])
            inter = np.array([-inter[0] / 2, inter[0] / 2])
        w = np.zeros((coef.shape[1], self.n_classes), dtype=np.float32)
        b = np.full(self.n_classes, -1e4, dtype=np.float32)
        w[:, classes] = coef.T
        b[classes] = inter
        return w, b

    def _logits(self, x: Matrix) -> np.ndarray:
        w, b = self._weights()
        return np.asarray(x @ w) + b

    def predict_proba(self, x: Matrix, reducer: Reducer) -> np.ndarray:
        return _softmax(self.temperature * self._logits(x)).astype(np.float32)

    def tune(self, x_val: Matrix, y_val: np.ndarray, reducer: Reducer) -> None:
        z = self._logits(x_val)
        best = (np.inf, self.temperature)
        for t in np.logspace(-0.5, 2, 26):
            p = _softmax(t * z)
            nll = -np.log(np.clip(p[np.arange(len(y_val)), y_val], 1e-12, None)).mean()
            best = min(best, (float(nll), float(t)))
        self.temperature = best[1]
        self.params["temperature"] = round(self.temperature, 4)

    def to_onnx(
        self,
        dim: int,
        reducer: Reducer,
        centroids: np.ndarray | None,
        ood_block: tuple[int, int] | None = None,
    ) -> onnx.ModelProto:
        w, b = self._weights()
        return build_head(
            dim, self.n_classes, w, b, self.temperature, centroids=centroids, ood_block=ood_block
        )


@dataclass
class LogReg(Candidate):
    """Multinomial logistic regression; on reduced features when they are wide."""

    name: str = "logreg"
    C: float = 10.0

    def __post_init__(self) -> None:
        self.params = {"C": self.C}

    def fit(self, x: Matrix, y: np.ndarray, n_classes: int, reducer: Reducer) -> LogReg:
        self.n_classes = n_classes
        self.uses_reducer = not reducer.identity
        xr = reducer.transform(x)
        self.model = LogisticRegression(C=self.C, max_iter=100)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(xr, y)
        return self

    def predict_proba(self, x: Matrix, reducer: Reducer) -> np.ndarray:
        p = self.model.predict_proba(reducer.transform(x))
        return _full_proba(p, self.model.classes_, self.n_classes)

    def to_onnx(
        self,
        dim: int,
        reducer: Reducer,
        centroids: np.ndarray | None,
        ood_block: tuple[int, int] | None = None,
    ) -> onnx.ModelProto:
        coef, inter = self.model.coef_, self.model.intercept_
        if coef.shape[0] == 1:  # binary LR: softmax([0, z]) == sigmoid(z)
            coef = np.vstack([np.zeros_like(coef[0]), coef[0]])
            inter = np.array([0.0, inter[0]])
        w_red = np.zeros((coef.shape[1], self.n_classes), dtype=np.float32)
        b = np.full(self.n_classes, -1e4, dtype=np.float32)
        w_red[:, self.model.classes_] = coef.T
        b[self.model.classes_] = inter
        w = reducer.projection() @ w_red  # LR on a linear projection is linear in x
        return build_head(dim, self.n_classes, w, b, 1.0, centroids=centroids, ood_block=ood_block)


def _skl_sub_model(model: Any, n_in: int) -> onnx.ModelProto:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    return convert_sklearn(
        model,
        initial_types=[("reduced", FloatTensorType([None, n_in]))],
        options={id(model): {"zipmap": False}},
        target_opset=OPSET,
    )


@dataclass
class SkModelOnReduced(Candidate):
    """An sklearn classifier on the reduced features, exported with skl2onnx."""

    uses_reducer: bool = True

    def make(self) -> Any:
        raise NotImplementedError

    def fit(self, x: Matrix, y: np.ndarray, n_classes: int, reducer: Reducer) -> SkModelOnReduced:
        self.n_classes = n_classes
        self.model = self.make()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(reducer.transform(x), y)
        self._y = y
        return self

    def predict_proba(self, x: Matrix, reducer: Reducer) -> np.ndarray:
        p = self.model.predict_proba(reducer.transform(x))
        return _full_proba(p, self.model.classes_, self.n_classes)

    def to_onnx(
        self,
        dim: int,
        reducer: Reducer,
        centroids: np.ndarray | None,
        ood_block: tuple[int, int] | None = None,
    ) -> onnx.ModelProto:
        _check_all_classes(self._y, self.n_classes)
        proj = reducer.projection()
        sub = _skl_sub_model(self.model, proj.shape[1])
        return build_head(
            dim,
            self.n_classes,
            proj,
            sub_model=sub,
            centroids=centroids,
            ood_block=ood_block,
            sparse=dim >= SPARSE_MIN_DIM,
        )


@dataclass
class MLP(SkModelOnReduced):
    name: str = "mlp"
    hidden: int = 256
    max_iter: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        self.params = {"hidden": self.hidden, "max_iter": self.max_iter}

    def make(self) -> Any:
        return MLPClassifier(
            hidden_layer_sizes=(self.hidden,),
            alpha=1e-3,
            batch_size=128,
            learning_rate_init=2e-3,
            max_iter=self.max_iter,
            random_state=self.seed,
        )


@dataclass
class Trees(SkModelOnReduced):
    name: str = "extra_trees"
    n_estimators: int = 60
    min_samples_leaf: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        self.params = {"n_estimators": self.n_estimators, "min_samples_leaf": self.min_samples_leaf}

    def make(self) -> Any:
        return ExtraTreesClassifier(
            n_estimators=self.n_estimators,
            min_samples_leaf=self.min_samples_leaf,
            max_features="sqrt",
            n_jobs=2,
            random_state=self.seed,
        )
