"""A refusal in plain words: what the parity gate's answer means, and what to do about it.

One function, `refusal_advice`, turns a refusal's code and figures (and what the fit was
asked: target, label set, embedder) into a few sentences. `tracer fit` prints it, the
demo prints it under a refused day, and `advice_for_manifest` reads the same things
from a refused artifact's manifest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Roughly what a TF-IDF surrogate needs before the gate certifies a useful share of a
# task at alpha 0.95 (Banking77: about 40 traces a label; an encoder, about half).
TRACES_PER_LABEL = 40


def _pct(x: Any) -> str:
    return f"{100 * float(x):.0f}%"


def refusal_advice(
    code: str,
    figures: Mapping[str, Any] | None = None,
    *,
    target: float | None = None,
    min_coverage: float | None = None,
    n_traces: int | None = None,
    n_labels: int | None = None,
    closed_labels: bool | None = None,
    embedder: str | None = None,
) -> str:
    """What a refusal (code + the figures it reached) means and what to do, in words."""
    f = dict(figures or {})
    alpha = f"{target:g}" if target is not None else "the target"
    wanted = (n_labels or 0) * TRACES_PER_LABEL
    more = "more traces (let more traffic through the teacher"
    more += (
        f"; about {wanted:,} for {n_labels} labels" if wanted and wanted > (n_traces or 0) else ""
    )
    more += ")"
    lower = f"a lower target than {alpha} (`target:` / `--target`), if that agreement is enough"
    closed = (
        ""
        if closed_labels
        else "a closed label set (`labels:` / `--labels`), so that odd spellings of an "
        "answer are not classes of their own"
    )
    encoder = (
        ""
        if embedder and embedder != "tfidf"
        else "the sentence-encoder embedder (`embedder: tfidf+hf:REPO` or a folder), which "
        "learns from fewer traces than TF-IDF"
    )
    options = [x for x in (more, lower, closed, encoder) if x]

    if code in ("too_few_traces", "too_few_labels"):
        meaning = "There is not enough to learn from yet"
        meaning += f" ({n_traces} usable traces)." if n_traces is not None else "."
        todo = [more]
    elif code == "too_few_calibration":
        meaning = (
            "The traces kept aside to check the model are too few to prove anything at "
            f"{alpha}, so nothing was tried (the closer the target is to 1, the more it takes)."
        )
        todo = [more, lower]
    elif code == "nothing_to_certify":
        meaning = (
            f"No model agreed with the teacher at {alpha} on any share of the traces held "
            "out to choose one: it has not seen enough examples of each answer."
        )
        todo = options
    elif code == "no_threshold":
        best = f.get("best_empirical_coverage")
        n = f.get("n_calibration")
        seen = f" ({_pct(best)} of them looked right)" if best else ""
        meaning = (
            f"The model answers some inputs well{seen}, but "
            + (f"{int(n)} held-out traces are" if n else "the held-out traces are")
            + f" too few to prove, with the confidence asked, agreement of at least {alpha}."
        )
        todo = options
    elif code == "coverage_below_minimum":
        got = f.get("best_certified_coverage")
        meaning = (
            f"The model is proven at {alpha}, but only on "
            + (_pct(got) if got is not None else "a small share")
            + " of the traffic, below the minimum worth serving"
            + (f" ({_pct(min_coverage)})." if min_coverage is not None else ".")
        )
        todo = [more, "a lower `min_coverage` (`--min-coverage`), to serve it anyway", *options[1:]]
    elif code == "failed":
        meaning = "The fit stopped on an error, not on the gate's judgement."
        todo = [
            "fixing what the error names (a proxy keeps each fit's log in "
            "`<artifacts.dir>/<task>/work/vNNNN.log`)"
        ]
    else:
        meaning = "The parity gate did not certify a model."
        todo = options
    nothing = "Until then the teacher answers every request, so nothing is lost."
    return f"{meaning} {nothing} What helps: " + "; or ".join(todo) + "."


def advice_for_manifest(
    manifest: Mapping[str, Any], closed_labels: bool | None = None
) -> str | None:
    """`refusal_advice` for a refused (or failed) artifact's manifest; None otherwise.

    A manifest does not record whether the label set was closed: say so if known.
    """
    refusal = manifest.get("refusal")
    if not isinstance(refusal, Mapping):
        return None
    options = manifest.get("options") or {}
    labels = manifest.get("labels")
    return refusal_advice(
        str(refusal.get("code", "")),
        {k: v for k, v in refusal.items() if isinstance(v, int | float)},
        target=options.get("target", manifest.get("alpha")),
        min_coverage=options.get("min_coverage", manifest.get("min_coverage")),
        n_traces=(manifest.get("data") or {}).get("n_used"),
        n_labels=len(labels) if isinstance(labels, list) else None,
        closed_labels=closed_labels,
        embedder=options.get("embedder"),
    )
