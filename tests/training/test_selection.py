"""Model selection on validation: what it keeps for honest looks at validation later."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from proxy.sim.synthetic import make_intents
from router.settings import FitOptions
from training import stages
from training.progress import Progress
from training.selection import default_candidates, select


def test_the_winners_validation_names_come_from_its_fit_without_validation():
    opts = FitOptions(target=0.9, confidence=0.9, quiet=True)
    manifest: dict[str, Any] = {"data": {}}
    progress = Progress(quiet=True)
    cleaned = stages.load_and_clean(make_intents(900, seed=2), opts, manifest, progress)
    splits = stages.make_splits(cleaned, opts, manifest, progress)
    feats = stages.embed_splits(splits, opts, manifest, progress)
    chosen = select(feats, opts, 0.9, 0.1, progress)
    assert len(chosen.val_labels) == len(chosen.val_scores) == len(feats.y_val)
    row = next(
        r
        for r in chosen.rows
        if (r["candidate"], r["acceptor"]) == (chosen.winner.name, chosen.acceptor)
    )
    assert np.mean(chosen.val_labels == feats.y_val) == row["accuracy"]


def test_the_average_of_the_smooth_candidates_is_judged_beside_them():
    opts = FitOptions(
        target=0.9, confidence=0.9, quiet=True, candidates=("logreg", "knn", "ensemble")
    )
    manifest: dict[str, Any] = {"data": {}}
    progress = Progress(quiet=True)
    cleaned = stages.load_and_clean(make_intents(600, seed=3), opts, manifest, progress)
    feats = stages.embed_splits(stages.make_splits(cleaned, opts, manifest, progress), opts,
                                manifest, progress)  # fmt: skip
    chosen = select(feats, opts, 0.9, 0.1, progress)
    judged = {r["candidate"] for r in chosen.rows}
    assert judged == {"logreg", "knn", "ensemble"}
    row = next(r for r in chosen.rows if r["candidate"] == "ensemble")
    assert row["params"] == {"members": ["logreg", "knn"]}


def test_an_ensemble_needs_two_members():
    with pytest.raises(ValueError, match="two or more"):
        default_candidates(["extra_trees", "knn", "ensemble"], 0)
    assert [c.name for c in default_candidates(["linear_svm"], 0)] == ["linear_svm"]
