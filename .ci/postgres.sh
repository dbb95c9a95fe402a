#!/usr/bin/env bash
# A throw-away PostgreSQL server for the store's PostgreSQL tests (tests/proxy/postgres_server.py).
#
#   .ci/postgres.sh start ENVFILE   install Debian's postgresql if absent, create a cluster in a
#                                   new temp folder, start it on a free port of 127.0.0.1, create
#                                   a role and a database, and write to ENVFILE:
#                                     export TRACER_TEST_PG_URL=postgresql+asyncpg://...
#                                     export TRACER_TEST_PG_DIR=/tmp/tracer-pg.XXXXXX
#   .ci/postgres.sh stop DIR        stop the cluster in DIR and delete DIR (a no-op when it is gone)
#
# In .ci/run:
#   pg_env=$(mktemp) && .ci/postgres.sh start "$pg_env" && source "$pg_env" && rm -f "$pg_env"
#   trap '.ci/postgres.sh stop "${TRACER_TEST_PG_DIR:-}"' EXIT
#
# PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user that
# Debian's package creates; as anyone else, to that user. Durability is switched off (fsync,
# full-page writes): the cluster lives for one CI run.
set -euo pipefail

MARKER=.tracer-ci-postgres  # only a folder holding this file is ever deleted by `stop`

die() { echo "postgres.sh: $*" >&2; exit 1; }

bindir() {
    local dir
    for dir in $(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

# Run a command as the cluster's owner, from the cluster's folder (root's home is unreadable).
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        (cd "$DIR" && runuser -u postgres -- "$@")
    else
        (cd "$DIR" && "$@")
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop_cluster() {
    local dir=$1
    [ -n "$dir" ] && [ -d "$dir" ] || return 0
    [ -f "$dir/$MARKER" ] || die "refusing to stop or delete $dir: not made by .ci/postgres.sh"
    DIR=$dir
    if [ -f "$dir/data/postmaster.pid" ]; then
        local bin
        bin=$(bindir) || die "no PostgreSQL binaries to stop $dir with"
        if ! as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null; then
            # Never leave a server running on a deleted folder: immediate shutdown.
            echo "postgres.sh: pg_ctl stop failed; sending the postmaster SIGQUIT" >&2
            kill -QUIT "$(head -n 1 "$dir/data/postmaster.pid")" 2>/dev/null || true
            sleep 1
        fi
    fi
    rm -rf -- "$dir"
}

start_cluster() {
    local envfile=$1 bin password port attempt

    if ! bin=$(bindir); then
        [ "$(id -u)" -eq 0 ] || die "postgresql is not installed and only root can apt-get it"
        echo "postgres.sh: installing Debian's postgresql" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends postgresql >/dev/null
        bin=$(bindir) || die "apt-get installed postgresql, but no initdb/pg_ctl under /usr/lib/postgresql"
    fi
    if [ "$(id -u)" -eq 0 ]; then
        getent passwd postgres >/dev/null || die "no 'postgres' user to own the cluster"
    fi

    DIR=$(mktemp -d /tmp/tracer-pg.XXXXXX)
    touch "$DIR/$MARKER"
    # From here on, a failure stops and deletes what was made.
    STARTED=0
    trap '[ "$STARTED" = 1 ] || stop_cluster "$DIR"' EXIT
    mkdir "$DIR/sock"
    password=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
    printf '%s\n' "$password" >"$DIR/pwfile"
    chmod 700 "$DIR"
    [ "$(id -u)" -ne 0 ] || chown -R postgres: "$DIR"

    # Local socket: trust (the setup below, as the owner); TCP: the password.
    as_owner "$bin/initdb" -D "$DIR/data" -U postgres -A trust --auth-host=scram-sha-256 \
        -E UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 \
        || { cat "$DIR/initdb.log" >&2; false; }

    for attempt in 1 2 3; do
        port=$(free_port)
        if as_owner "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 start -o \
            "-c listen_addresses=127.0.0.1 -p $port -k $DIR/sock -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
            >/dev/null; then
            break
        fi
        echo "postgres.sh: start on port $port failed (attempt $attempt):" >&2
        tail -n 5 "$DIR/server.log" >&2 || true
        [ "$attempt" -lt 3 ] || false
    done

    as_owner "$bin/psql" -q -X -h "$DIR/sock" -p "$port" -U postgres -d postgres \
        -v ON_ERROR_STOP=1 -v pw="$password" >/dev/null <<'SQL'
CREATE ROLE tracer LOGIN CREATEDB PASSWORD :'pw';
CREATE DATABASE tracer OWNER tracer;
SQL
    rm -f "$DIR/pwfile"

    local url="postgresql+asyncpg://tracer:$password@127.0.0.1:$port/tracer"
    # The URL works over TCP with the password, as the tests will use it.
    PGPASSWORD=$password "$bin/psql" -q -X -h 127.0.0.1 -p "$port" -U tracer -d tracer \
        -v ON_ERROR_STOP=1 -c 'SELECT 1' >/dev/null

    umask 077
    {
        printf 'export TRACER_TEST_PG_URL=%q\n' "$url"
        printf 'export TRACER_TEST_PG_DIR=%q\n' "$DIR"
    } >"$envfile"
    STARTED=1
    echo "postgres.sh: PostgreSQL $("$bin/pg_ctl" --version | awk '{print $3}') on 127.0.0.1:$port (cluster $DIR); stop: .ci/postgres.sh stop $DIR" >&2
}

case "${1:-}" in
    start)
        [ $# -eq 2 ] || die "usage: $0 start ENVFILE"
        start_cluster "$2"
        ;;
    stop)
        [ $# -eq 2 ] || die "usage: $0 stop DIR"
        stop_cluster "$2"
        ;;
    *)
        die "usage: $0 start ENVFILE | $0 stop DIR"
        ;;
esac
