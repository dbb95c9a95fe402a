"""The teacher's exact answers: what a handled request is answered with, and agreement.

Labels are normalised for training (``Card_Arrival.`` and ``card_arrival`` are one
class), but a client compares strings, so a handled answer is rendered from the
teacher's own words: for each label, its most frequent raw answer, kept whole in the
manifest. Agreement, in calibration, in the test split and in every figure the
gate certifies, is agreement of that rendered answer with the answer the teacher
actually gave, compared exactly (as parsed JSON for a JSON task, where key order and
spacing are not part of the answer).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np

from router.chat import same_answer
from router.traces import Trace

Format = Literal["text", "json"]


def raw_answer(trace: Trace) -> str:
    """What the teacher wrote; a trace file without it stands for its label."""
    return trace.raw_output if trace.raw_output is not None else trace.label


def canonical_answers(traces: Sequence[Trace]) -> dict[str, str]:
    """Each label's most frequent raw answer (ties: the first seen)."""
    counts: dict[str, Counter[str]] = {}
    for trace in traces:
        counts.setdefault(trace.label, Counter())[raw_answer(trace)] += 1
    return {label: c.most_common(1)[0][0] for label, c in counts.items()}


def agreement_mask(
    predicted: Sequence[str],
    traces: Sequence[Trace],
    answers: dict[str, str],
    output_format: Format = "text",
) -> np.ndarray:
    """For each trace: would the answer rendered for the predicted label be the teacher's?"""
    return np.array(
        [
            label in answers and same_answer(answers[label], raw_answer(t), output_format)
            for label, t in zip(predicted, traces, strict=True)
        ],
        dtype=bool,
    )
