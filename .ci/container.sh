#!/usr/bin/env bash
# What the Dockerfile's image does, checked without a container engine. CI has no Docker
# daemon (`docker build` answers "Cannot connect to the Docker daemon at
# unix:///var/run/docker.sock. Is the docker daemon running?"), and an engine installed
# from the package registry (Debian's podman) could not build the image either: its base,
# python:3.11-slim, comes from Docker Hub, which is not reachable from CI ("Could not
# resolve host: registry-1.docker.io"; only the pip, apt and npm registries are).
#
# 1. the project's files the Dockerfile copies, copied to a temp folder, built into a wheel;
# 2. a clean virtual environment from the system's Python (not the project's .venv, and no
#    source tree on its import path), the wheel installed into it with its dependencies from
#    the package registry (and asyncpg, as the image installs it);
# 3. as a non-root system user (tracer-ci, created when absent), from a folder of its own,
#    `tracer serve --config CONFIG --host 0.0.0.0`, as the image's CMD, with client keys set;
# 4. GET /healthz answers 200 (and the image's HEALTHCHECK command passes), GET /v1/models
#    answers with the key and 401 without it, /metrics answers; SIGTERM stops the server
#    cleanly (its whole shutdown logged; status 0, or 143 when uvicorn re-raises the signal).
#
# Usage: .ci/container.sh     (as root; exits non-zero, saying why, on any failure)
# TRACER_CI_PYTHON chooses the interpreter (default /usr/bin/python3: the user must be able
# to read it, and pyenv's under /root is not readable by anyone else). It takes one to two
# minutes, most of it pip installing the dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

PYTHON=${TRACER_CI_PYTHON:-/usr/bin/python3}
RUN_USER=tracer-ci
KEY="tracer-ci-key-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SERVER_PID=""

fail() { echo "container.sh: FAILED: $*" >&2; exit 1; }
step() { echo "container.sh: $*" >&2; }

[ "$(id -u)" -eq 0 ] || fail "run as root (it creates the user $RUN_USER and runs the server as it)"
[ -x "$PYTHON" ] || fail "no Python at $PYTHON (set TRACER_CI_PYTHON)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || fail "$PYTHON is $("$PYTHON" --version 2>&1); the project needs 3.11 or newer"

# The environment is some 30,000 files: on a tmpfs, installing and deleting it is quicker.
# A container's /dev/shm is often 64 MB, so only when it has room (TRACER_CI_TMP overrides).
TMP_BASE=${TRACER_CI_TMP:-/tmp}
if [ -z "${TRACER_CI_TMP:-}" ] && [ -d /dev/shm ] \
    && [ "$(df -Pk /dev/shm | awk 'NR == 2 {print $4}')" -gt $((3 * 1024 * 1024)) ]; then
    TMP_BASE=/dev/shm
fi
WORK=$(mktemp -d "$TMP_BASE/tracer-container.XXXXXX")
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf -- "$WORK"
}
trap cleanup EXIT
chmod 755 "$WORK"
started=$(date +%s)

# -- 1. the wheel, built from a copy of what the Dockerfile copies (the tree stays clean) ----
step "building the wheel in a new virtual environment from $PYTHON"
mkdir "$WORK/src" "$WORK/dist"
cp -r pyproject.toml README.md proxy router training "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
if ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then  # Debian splits venv's pip out
    step "installing Debian's python3-venv"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null \
        || fail "$PYTHON cannot make a virtual environment with pip, and apt-get install python3-venv failed"
fi
VENV="$WORK/venv"
"$PYTHON" -m venv "$VENV" || fail "$PYTHON -m venv failed"
# `pip wheel` builds in an isolated environment of its own: VENV stays clean.
"$VENV/bin/pip" wheel -q --no-deps -w "$WORK/dist" "$WORK/src" >"$WORK/build.log" 2>&1 \
    || { tail -n 30 "$WORK/build.log" >&2; fail "pip wheel could not build the project"; }
WHEEL=$(find "$WORK/dist" -name 'tracer_proxy-*.whl' | head -n 1)
[ -n "$WHEEL" ] || fail "no tracer_proxy wheel in $WORK/dist"
step "built $(basename "$WHEEL")"

# -- 2. a clean environment with the wheel and its dependencies ------------------------------
step "installing it and its dependencies from the package registry"
"$VENV/bin/pip" install -q --disable-pip-version-check "${WHEEL}[postgres]" \
    >"$WORK/install.log" 2>&1 \
    || { tail -n 30 "$WORK/install.log" >&2; fail "pip install of the wheel failed"; }
[ -x "$VENV/bin/tracer" ] || fail "the wheel installed no 'tracer' command"

# -- 3. a non-root user and a folder of its own ----------------------------------------------
if ! id -u "$RUN_USER" >/dev/null 2>&1; then
    step "creating the system user $RUN_USER"
    useradd --system --no-create-home --shell /usr/sbin/nologin "$RUN_USER"
fi
HOME_DIR="$WORK/home"
mkdir "$HOME_DIR"
chown "$RUN_USER": "$HOME_DIR"

as_user() {
    # A bare environment: no PYTHONPATH, no VIRTUAL_ENV, nothing of the project's.
    (cd "$HOME_DIR" && runuser -u "$RUN_USER" -- env -i PATH=/usr/bin:/bin HOME="$HOME_DIR" \
        LITELLM_LOCAL_MODEL_COST_MAP=True PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 "$@")
}

# The installed package is what runs: from site-packages of the new environment.
where=$(as_user "$VENV/bin/python" -c 'import proxy, router, training; print(proxy.__file__)') \
    || fail "$RUN_USER cannot import the installed package"
case "$where" in
    "$VENV"/lib/python3*/site-packages/proxy/__init__.py) ;;
    *) fail "proxy imported from $where, not from the new environment's site-packages" ;;
esac
case "$(as_user "$VENV/bin/python" -c 'import sys; print(sys.path)')" in
    *"$REPO"*) fail "the source tree $REPO is on the server's import path" ;;
esac

PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
CONFIG="$WORK/config.yaml"
cat >"$CONFIG" <<YAML
# A minimal config: one upstream that nothing answers (port 9), one task on it.
model_list:
  - model_name: upstream
    litellm_params:
      model: openai/upstream
      api_base: http://127.0.0.1:9/v1
      api_key: sk-unreachable
tasks:
  - name: intents
    match: {model: intents}
    teacher: upstream
    labels: [card_arrival, card_not_working]
server:
  api_keys: ["$KEY"]
store:
  url: "sqlite+aiosqlite:///$HOME_DIR/tracer.db"
artifacts:
  dir: $HOME_DIR/artifacts
YAML
chmod 644 "$CONFIG"

# -- 4. serve, probe, stop --------------------------------------------------------------------
step "starting 'tracer serve' as $RUN_USER on 0.0.0.0:$PORT"
(
    cd "$HOME_DIR"
    exec runuser -u "$RUN_USER" -- env -i PATH=/usr/bin:/bin HOME="$HOME_DIR" \
        LITELLM_LOCAL_MODEL_COST_MAP=True PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
        "$VENV/bin/tracer" serve --config "$CONFIG" --host 0.0.0.0 --port "$PORT"
) >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

probe() {  # probe URL [KEY] -> prints "STATUS BODY"; status 000 when nothing answers
    "$PYTHON" - "$@" <<'PY'
import sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 2:
    request.add_header("Authorization", f"Bearer {sys.argv[2]}")
try:
    with urllib.request.urlopen(request, timeout=5) as reply:
        print(reply.status, reply.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.code, exc.read().decode())
except OSError as exc:
    print("000", exc)
PY
}

server_log() { echo "--- server log ---" >&2; tail -n 40 "$WORK/server.log" >&2; }
BASE="http://127.0.0.1:$PORT"
deadline=$(($(date +%s) + 60))
while :; do
    answer=$(probe "$BASE/healthz")
    [ "${answer%% *}" = 200 ] && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        server_log; fail "the server exited before /healthz answered"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        server_log; fail "GET /healthz did not answer 200 within 60 s (last: $answer)"
    fi
    sleep 0.3
done
step "GET /healthz: $answer"
# The Dockerfile's HEALTHCHECK command, as the user, on this port.
as_user "$VENV/bin/python" -c \
    "import urllib.request as r; r.urlopen('http://127.0.0.1:$PORT/healthz', timeout=4)" \
    || fail "the Dockerfile's HEALTHCHECK command failed against the running server"

answer=$(probe "$BASE/v1/models" "$KEY")
[ "${answer%% *}" = 200 ] || { server_log; fail "GET /v1/models with the key: $answer"; }
case "$answer" in
    *'"upstream"'*'"intents"'* | *'"intents"'*'"upstream"'*) ;;
    *) fail "GET /v1/models does not list the model and the task alias: $answer" ;;
esac
step "GET /v1/models (with the key): $answer"
answer=$(probe "$BASE/v1/models")
[ "${answer%% *}" = 401 ] || fail "GET /v1/models without a key answered ${answer%% *}, not 401"
answer=$(probe "$BASE/v1/models" "wrong-key")
[ "${answer%% *}" = 401 ] || fail "GET /v1/models with a wrong key answered ${answer%% *}, not 401"
answer=$(probe "$BASE/metrics")
[ "${answer%% *}" = 200 ] || fail "GET /metrics: ${answer%% *}"
case "$answer" in *tracer_*) ;; *) fail "GET /metrics holds no tracer_ metric" ;; esac
step "without a key: 401; /metrics: 200"

# The server runs as the user, not as root.
owner=$(ps -o user= -p "$(pgrep -P "$SERVER_PID" -n || echo "$SERVER_PID")" | tr -d ' ')
[ "$owner" = "$RUN_USER" ] || fail "the server runs as '$owner', not $RUN_USER"

step "stopping it with SIGTERM"
server=$(pgrep -P "$SERVER_PID" -n || true)  # runuser's child: the server itself
kill -TERM "${server:-$SERVER_PID}"
status=0
for _ in $(seq 1 150); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$SERVER_PID" 2>/dev/null; then
    server_log; fail "the server did not stop within 15 s of SIGTERM"
fi
wait "$SERVER_PID" || status=$?
SERVER_PID=""
# uvicorn shuts down gracefully, then re-raises the signal it caught: 143 is 128 + SIGTERM
# (tests/proxy/test_serve_cli.py accepts the same), and the log must show the whole shutdown.
case "$status" in
    0 | 143) ;;
    *) server_log; fail "the server exited with status $status after SIGTERM" ;;
esac
grep -q "Traceback" "$WORK/server.log" && { server_log; fail "the server log holds a traceback"; }
for line in "Application shutdown complete" "Finished server process"; do
    grep -q "$line" "$WORK/server.log" || { server_log; fail "the server never logged '$line'"; }
done
step "OK: wheel, clean install, non-root serve, health, keys, clean stop ($(($(date +%s) - started)) s)"
