"""`python -m training fit ...` / `python -m training eval ...`."""

from __future__ import annotations

import sys

from training.cli import eval_command, fit_command


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    commands = {"fit": fit_command, "eval": eval_command}
    if not args or args[0] not in commands:
        print("usage: python -m training {fit,eval} ...", file=sys.stderr)
        return 2
    return commands[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
