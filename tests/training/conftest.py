from __future__ import annotations

from pathlib import Path

import pytest

from proxy.sim.synthetic import separable
from training.fit import FitResult, fit

FAST = {"quiet": True, "candidates": ["linear_svm"]}


@pytest.fixture(scope="session")
def deployed_artifact(tmp_path_factory: pytest.TempPathFactory) -> FitResult:
    """A small deployed artifact (TF-IDF + linear SVM) on an easily separable set."""
    out = tmp_path_factory.mktemp("training") / "model"
    return fit(separable(150), Path(out), **FAST)
