#!/usr/bin/env bash
# Install what the dashboard's browser test needs, from the package registries only:
# Debian's chromium (the browser Playwright drives; `playwright install` would download
# a browser build of its own, which this machine cannot fetch) and Playwright for Python.
# Called by .ci/run before pytest, so CI never skips the test.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
fi
.venv/bin/pip install -q playwright  # in `.[dev]` too; here for a venv made without it
