"""Progress and summary of a fit, printed with rich to stderr."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.table import Table


class Progress:
    def __init__(self, quiet: bool = False) -> None:
        self.console = Console(stderr=True, quiet=quiet, highlight=False)
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def log(self, message: str) -> None:
        self.console.print(f"[dim]{self.elapsed():6.1f}s[/dim] {message}")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.log(f"[bold]{name}[/bold] ...")
        t0 = time.perf_counter()
        yield
        dt = time.perf_counter() - t0
        self.timings[name] = round(dt, 3)
        self.log(f"{name} done in {dt:.1f}s")

    def candidates(self, rows: list[dict[str, Any]], alpha: float) -> None:
        table = Table(title=f"candidates on validation (coverage at alpha={alpha})")
        for col in ("candidate", "acceptor", "accuracy", "coverage", "agreement", "fit s"):
            table.add_column(
                col, justify="right" if col not in ("candidate", "acceptor") else "left"
            )
        for r in rows:
            table.add_row(
                r["candidate"],
                r["acceptor"],
                f"{r['accuracy']:.3f}",
                f"{r['coverage']:.3f}",
                "-" if r["agreement"] is None else f"{r['agreement']:.3f}",
                f"{r['fit_seconds']:.1f}",
            )
        self.console.print(table)

    def summary(self, manifest: dict[str, Any]) -> None:
        # A fit certifies; only a proxy deploys (serves) what a fit certified.
        status = {"deployed": "certified"}.get(manifest["status"], manifest["status"])
        table = Table(title=f"tracer fit: {status.upper()}")
        table.add_column("item")
        table.add_column("value", justify="right")
        data = manifest.get("data", {})
        for key in (
            "n_read",
            "n_used",
            "empty_input",
            "invalid_label",
            "duplicates",
            "conflicting_dropped",
        ):
            if key in data:
                table.add_row(f"traces: {key}", str(data[key]))
        for name, size in manifest.get("splits", {}).items():
            table.add_row(f"split: {name}", str(size))
        table.add_row("alpha / delta", f"{manifest['alpha']} / {manifest['delta']}")
        table.add_row("embedder", str(manifest.get("embedder", {}).get("id", "-")))
        chosen = manifest.get("selection", {}).get("chosen") or {}
        table.add_row(
            "surrogate", f"{chosen.get('candidate', '-')} + {chosen.get('acceptor', '-')}"
        )
        cal = manifest.get("calibration") or {}
        if cal:
            table.add_row(
                "threshold", "-" if cal.get("threshold") is None else f"{cal['threshold']:.6f}"
            )
            table.add_row("calibration coverage", f"{cal.get('coverage', 0):.3f}")
            if cal.get("agreement") is not None:
                table.add_row(
                    "calibration agreement (lower bound)",
                    f"{cal['agreement']:.3f} ({cal['lower_bound']:.3f})",
                )
        test = manifest.get("test") or {}
        if test.get("n"):
            table.add_row("test coverage", f"{test['coverage']:.3f}")
            agr = test.get("agreement_handled")
            table.add_row("test agreement on handled", "-" if agr is None else f"{agr:.3f}")
        if manifest["status"] in ("refused", "failed"):
            table.add_row(manifest["status"], str(manifest["refusal"]["reason"]))
        table.add_row("time", f"{self.elapsed():.1f}s")
        self.console.print(table)
