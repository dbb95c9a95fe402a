"""Model selection on validation: what it keeps for honest looks at validation later."""

from __future__ import annotations

from typing import Any

import numpy as np

from proxy.sim.synthetic import make_intents
from router.settings import FitOptions
from training import stages
from training.progress import Progress
from training.selection import select


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
