"""How pure are the regions a lane is certified on? Clusters against predicted labels.

Offline, on Banking77 (train split shuffled with seed 0, as `bench/lanes.py`): a
surrogate is fitted on the first 3,000 rows at `--target`; the next 4,000 are scored,
and each one the surrogate defers (in distribution) becomes a check of the simulated
smaller model of `bench/lanes.py` (1% / 15% / 40% wrong by intent, from the seeded
table, the same inputs every time). The checks are then certified by the proxy's own
procedure (`proxy.lane_certify.certify`, round 1) three ways: with each check's region
being its cluster (a lane answering alone), the surrogate's predicted label, and its
cluster among only the checks where the lane's answer is one of the surrogate's two
guesses (a lane that confirms). Printed: the group each picks on the first half and what the second
half says of it.

    .venv/bin/python bench/lane_regions.py --target 0.90
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lanes as lane_bench

from proxy.lane_certify import Check, certify, first_half, round_delta
from proxy.sim.teacher import SimulatedTeacher
from router import Router
from router.settings import FitOptions
from training.datasets import load_labelled
from training.fit import fit


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(lane_bench.DATASET))
    p.add_argument("--target", type=float, default=0.90)
    p.add_argument("--fit-rows", type=int, default=3000)
    p.add_argument("--check-rows", type=int, default=4000)
    args = p.parse_args(argv)
    rows = load_labelled(args.data, "train")
    random.Random(0).shuffle(rows)
    labels = sorted({y for _, y in rows})
    noise = lane_bench.noise_table(labels, 0)
    with tempfile.TemporaryDirectory() as tmp:
        options = FitOptions(target=args.target, labels=labels, quiet=True)
        if fit(rows[: args.fit_rows], Path(tmp), options).status != "deployed":
            print("the surrogate was refused: nothing to compare")
            return 1
        router = Router.load(Path(tmp))
    stream = rows[args.fit_rows : args.fit_rows + args.check_rows]
    decisions = router.predict_batch([t for t, _ in stream])
    small = SimulatedTeacher(dict(stream), labels=labels, noise_by_label=noise)
    checks, by_cluster, by_label, confirming = [], [], [], []
    for (text, label), d in zip(stream, decisions, strict=True):
        said = small.answer_label(text)
        checks.append(Check("small", text, said == label, said))
        lane_eligible = not d.handled and not d.ood
        by_cluster.append(d.cluster if lane_eligible else None)
        by_label.append(labels.index(d.label) if lane_eligible else None)
        confirming.append(d.cluster if lane_eligible and said in d.guesses else None)
    eligible = [c for c, r in zip(checks, by_cluster, strict=True) if r is not None]
    print(f"alpha {args.target}: the surrogate handles "
          f"{sum(d.handled for d in decisions) / len(decisions):.3f}; {len(eligible)} deferred "
          f"in-distribution checks, the smaller model agreeing on "
          f"{sum(c.agrees for c in eligible) / max(1, len(eligible)):.3f}")  # fmt: skip
    delta = round_delta(0.05, 1)
    ways = (("cluster", by_cluster), ("predicted label", by_label),
            ("cluster, where the lane confirms a guess", confirming))  # fmt: skip
    for name, regions in ways:
        cert = certify(checks, regions, ["small"], args.target, delta, 1)
        group = cert.groups.get("small") if cert is not None else None
        if group is None:
            print(f"  by {name}: nothing testable")
            continue
        share = group.n / max(1, sum(not first_half(c.input) for c in eligible))
        print(f"  by {name}: {len(group.clusters)} regions picked on the first half; on the "
              f"second half {group.agreed}/{group.n} agree ({group.agreed / max(1, group.n):.3f}), "
              f"lower bound {group.lower or 0:.3f}: "
              f"{'certified' if group.certified else 'not certified'}; "
              f"{share:.2f} of the second half's eligible checks")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
