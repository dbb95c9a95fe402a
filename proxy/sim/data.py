"""The demo's stream: labelled rows from a data set, and how much of it a day, from the data.

`tracer demo --data SET` with no `--per-day` or `--days` sizes the stream by the data:
enough requests a day, for the number of labels, that the surrogate can be certified on
most of the traffic by day 3 or 4, and at least four days of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from .clients import Row


class DemoError(Exception):
    """A problem the person running the demo can act on; printed without a traceback."""


LABELLED_SPLITS = ("train", "val", "test")  # what a pooled stream draws from


def load_rows(data: str | None, n: int | None, seed: int = 0, pooled: bool = False) -> list[Row]:
    """``n`` labelled rows (None: all there are): the synthetic intents, or the train split
    of ``data`` (every labelled split with ``pooled``), shuffled."""
    if data is None:
        from .synthetic import make_intents

        return make_intents(n or 2400, seed=seed)
    path = Path(data)
    if not path.exists():
        raise DemoError(f"no data at {path} (give a data set folder or a .csv/.jsonl/.tsv file)")
    from training.datasets import load_labelled

    splits = LABELLED_SPLITS if pooled and path.is_dir() else ("train",)
    found: dict[str, str] = {}
    for split in splits:
        try:
            pairs = load_labelled(path, split)
        except (OSError, ValueError, KeyError) as exc:
            if split != "train":
                continue  # a split this data set lacks, or an unlabelled one
            raise DemoError(f"cannot read labelled data from {path}: {exc}") from None
        found.update((t, y) for t, y in pairs if t.strip() and y.strip() and t not in found)
    rows = list(found.items())
    if not rows:
        raise DemoError(f"{path} holds no labelled rows")
    random.Random(seed).shuffle(rows)  # files are often sorted by label
    return rows if n is None else rows[:n]


@dataclass(frozen=True)
class StreamDefaults:
    per_day: int
    days: int
    audit_boost: int


# A TF-IDF surrogate certifies most of a task at alpha 0.95 once it has seen some 100
# traces a label; a day of about 40 a label gets there by day 3 or 4 (Banking77: 77 labels,
# 3,100 a day). Small label sets keep the demo's 400 a day for 6 days.
PER_LABEL_A_DAY = 40
MIN_PER_DAY, MAX_PER_DAY, MAX_DAYS, MIN_DAYS = 400, 5000, 6, 4


def stream_defaults(n_rows: int | None, n_labels: int) -> StreamDefaults:
    """Requests a day, days, and tasks[].audit_boost for a stream of ``n_rows`` labelled
    rows (None: as many as asked) over ``n_labels`` labels."""
    per_day = -(-PER_LABEL_A_DAY * n_labels // 100) * 100  # rounded up to a hundred
    per_day = max(MIN_PER_DAY, min(MAX_PER_DAY, per_day))
    if n_rows is not None and n_rows // per_day < MIN_DAYS:
        per_day = max(100, n_rows // MIN_DAYS // 100 * 100)
    days = MAX_DAYS if n_rows is None else max(1, min(MAX_DAYS, n_rows // per_day))
    # A young task samples min(1, audit_boost / sampled traces) of its traffic; with many
    # labels it stays young longer (more sampled traces calibrate, and judge candidates).
    return StreamDefaults(per_day, days, max(1000, PER_LABEL_A_DAY * n_labels))
