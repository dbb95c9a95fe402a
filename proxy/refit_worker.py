"""The refit worker: one fit, in its own process, so serving never shares a core's GIL.

Run by the refit loop as ``python -P -m proxy.refit_worker TRACES OUT OPTIONS_JSON``
(OPTIONS_JSON: `router.settings.FitOptions`). With the CLI's training verbs, this is
the one place where `proxy` imports `training`. Exit status: 0 deployed, 3 refused by
the parity gate, 4 a failed fit (its manifest says why), anything else a crash.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

REFUSED = 3
FAILED = 4


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3:
        print(
            "usage: python -m proxy.refit_worker TRACES.jsonl OUT_DIR OPTIONS_JSON", file=sys.stderr
        )
        return 2
    traces, out_dir, options = args
    from router.settings import FitOptions
    from training.fit import fit

    result = fit(traces, out_dir, FitOptions.from_json(options))
    if result.status == "failed":
        return FAILED
    return 0 if result.deployed else REFUSED


if __name__ == "__main__":
    sys.exit(main())
