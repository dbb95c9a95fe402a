"""Offline learning: teacher traces -> a parity-gated ONNX artifact.

Entry points (stable):

    from training.fit import fit, FitOptions, FitResult
    result = fit("traces.jsonl", Path("out/model"), FitOptions(target=0.95))
    result.status      # "deployed" | "refused"
    result.manifest    # the manifest dict written to out/model/manifest.json
    result.out_dir     # Path

`fit(traces, out_dir, options=None, **overrides)` takes a JSONL path, a list
of `training.traces.Trace`, or (text, label) pairs. FitOptions fields:
target (alpha, 0.95), confidence (1 - delta, 0.95), min_coverage (0.2),
embedder ("tfidf" | encoder folder | "tfidf+FOLDER"), encoder_weight, seed,
test_size (0.1), calibration_size (0.25), validation_size (0.15), labels
(closed label set), candidates, acceptors, ood_quantile (0.01), refit, task,
quiet. The directory is written beside out_dir and renamed into place, so a
crashed fit never leaves a valid-looking artifact. A refusal writes only a
manifest with status "refused" and the reason.

CLI: `training.cli.fit_command(argv)` / `eval_command(argv)` (the `tracer fit`
and `tracer eval` subcommands), also `python -m training fit|eval ...`.
Data: `training.datasets.load_labelled(path_or_dir, split)`.
"""
