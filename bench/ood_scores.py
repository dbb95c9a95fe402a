"""Which cheap out-of-distribution score separates CLINC150's out-of-scope queries best?

Issue 3 asks that >= 80% of CLINC150's out-of-scope test queries be deferred while
in-scope coverage stays >= 97%. The trainer's OOD check is the largest cosine
similarity to a class centroid, cut at a quantile of in-scope validation scores. This
script compares that score with other scores that cost one small matrix product per
input, on the MiniLM embeddings (the OOD block of the joined features):

- cosine to class centroids (the trainer's check), and to centroids of the centred
  embeddings;
- cosine to k-means sub-centroids of each class (2, 4, 8 per class);
- shared-covariance Mahalanobis distance to the class means (Ledoit-Wolf);
- max softmax probability, max logit and energy (log-sum-exp of logits) of a logistic
  regression on the embeddings;
- z-scored cosine plus z-scored max logit;
- for reference only (a scan over all 15,000 training rows, too slow to serve): cosine
  to the nearest training input, and the mean of the nearest five.

Each score is cut at quantiles 0.01-0.05 of the in-scope validation scores; the rows
give the share of in-scope test queries flagged and of out-of-scope test queries
flagged, and the AUROC. Fits on train, cuts on val, reads test and oos_test.

    .venv/bin/python bench/ood_scores.py
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "datasets" / "clinc150"
ENCODER = REPO.parent / "shared" / "models" / "all-MiniLM-L6-v2-onnx-int8"
QUANTILES = (0.01, 0.02, 0.03, 0.05)
Score = Callable[[np.ndarray], np.ndarray]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def encode(texts: Sequence[str]) -> np.ndarray:
    from router.encoder import SentenceEncoder
    from router.text import normalize_text

    enc = SentenceEncoder(ENCODER / "model.onnx", ENCODER / "tokenizer.json", intra_op_threads=2)
    norm = [normalize_text(t) for t in texts]
    return np.vstack([enc.encode(norm[i : i + 256]) for i in range(0, len(norm), 256)])


def scores(x_train: np.ndarray, y: np.ndarray, x_val: np.ndarray) -> dict[str, Score]:
    from scipy.special import logsumexp
    from sklearn.cluster import KMeans
    from sklearn.covariance import LedoitWolf
    from sklearn.linear_model import LogisticRegression

    k = int(y.max()) + 1
    out: dict[str, Score] = {}

    def centroid_cosine(x: np.ndarray, shift: np.ndarray) -> Score:
        c = np.zeros((k, x.shape[1]))
        np.add.at(c, y, unit(x - shift))
        c = unit(c)
        return lambda z: (unit(z - shift) @ c.T).max(axis=1)

    out["cosine to class centroids (trainer)"] = centroid_cosine(x_train, np.zeros(1))
    out["cosine to centroids, centred"] = centroid_cosine(x_train, x_train.mean(axis=0))
    u = unit(x_train)
    for m in (2, 4, 8):
        subs = [
            KMeans(m, n_init=3, random_state=0).fit(u[y == c]).cluster_centers_ for c in range(k)
        ]
        cents = unit(np.vstack(subs))
        out[f"cosine to {m} sub-centroids a class"] = lambda z, c=cents: (unit(z) @ c.T).max(1)
    means = np.zeros((k, x_train.shape[1]))
    np.add.at(means, y, x_train)
    means /= np.bincount(y)[:, None]
    w = np.linalg.cholesky(LedoitWolf().fit(x_train - means[y]).precision_)
    mw = means @ w
    mw2 = (mw**2).sum(axis=1)

    def mahalanobis(z: np.ndarray) -> np.ndarray:
        zw = z @ w
        return -((zw**2).sum(axis=1)[:, None] - 2 * zw @ mw.T + mw2[None]).min(axis=1)

    out["Mahalanobis to class means (Ledoit-Wolf)"] = mahalanobis
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lr = LogisticRegression(C=10.0, max_iter=300).fit(x_train, y)
    out["max probability (logistic regression)"] = lambda z: lr.predict_proba(z).max(axis=1)
    out["max logit"] = lambda z: lr.decision_function(z).max(axis=1)
    out["energy (log-sum-exp of logits)"] = lambda z: logsumexp(lr.decision_function(z), axis=1)
    cos, logit = out["cosine to class centroids (trainer)"], out["max logit"]
    cv, lv = cos(x_val), logit(x_val)
    out["z-cosine + z-max logit"] = lambda z: (
        (cos(z) - cv.mean()) / cv.std() + (logit(z) - lv.mean()) / lv.std()
    )
    out["(scan) cosine to nearest training input"] = lambda z: (unit(z) @ u.T).max(axis=1)
    out["(scan) mean cosine to nearest 5"] = lambda z: np.sort(unit(z) @ u.T, axis=1)[:, -5:].mean(
        axis=1
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DATA))
    p.parse_args(argv)
    from sklearn.metrics import roc_auc_score

    from training.datasets import load_labelled

    if not ENCODER.is_dir():
        raise SystemExit(f"needs the MiniLM encoder at {ENCODER}")
    split = {s: load_labelled(DATA, s) for s in ("train", "val", "test", "oos_test")}
    started = time.monotonic()
    x = {s: encode([t for t, _ in pairs]) for s, pairs in split.items()}
    print(f"encoded {sum(len(v) for v in x.values())} queries in "
          f"{time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
    labels = sorted({y for _, y in split["train"]})
    y = np.array([labels.index(lab) for _, lab in split["train"]])
    head = " | ".join(f"q {q}: in-scope / out-of-scope flagged" for q in QUANTILES)
    print(f"\n| score | AUROC | {head} |")
    print("|---|---|" + "---|" * len(QUANTILES))
    for name, score in scores(x["train"], y, x["val"]).items():
        sv, st, so = score(x["val"]), score(x["test"]), score(x["oos_test"])
        truth = np.r_[np.ones(len(st)), np.zeros(len(so))]
        auc = roc_auc_score(truth, np.r_[st, so])
        cells = []
        for q in QUANTILES:
            cut = np.quantile(sv, q)
            cells.append(f"{100 * np.mean(st < cut):.1f}% / {100 * np.mean(so < cut):.1f}%")
        print(f"| {name} | {auc:.3f} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
