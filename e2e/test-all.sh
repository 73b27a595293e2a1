#!/usr/bin/env bash
# The one test command. On a fresh machine it installs what the tests need (helm, promtool, a Python
# venv with the schema validators), builds the workspace, and runs every test: unit tests, controller
# tests against kubesim, chart checks, and the e2e suite (on kubesim unless FLOTILLA_E2E_KUBECONFIG
# names a real cluster). It ends with nextest's summary line.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

echo "==> installing test tools"
bash e2e/install-tools.sh
export PATH="$repo/.tools/bin:$repo/.tools/venv/bin:$PATH"

# PostgreSQL for the users service's round trip on its second backend: a throwaway cluster on a
# loopback port, stopped when this script exits. A TEST_POSTGRES_URL set by the caller wins.
pg_bin=""
pg_dir=""
stop_postgres() {
    if [[ -n "$pg_dir" ]]; then
        runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast stop >/dev/null 2>&1 || true
        rm -rf "$pg_dir"
    fi
}
start_postgres() {
    if [[ -n "${TEST_POSTGRES_URL:-}" ]]; then
        return
    fi
    if [[ "$(id -u)" != 0 ]]; then
        echo "starting a test PostgreSQL needs root (or set TEST_POSTGRES_URL)" >&2
        exit 1
    fi
    if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
        echo "==> installing PostgreSQL"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    fi
    pg_bin="$(dirname "$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n 1)")"
    local port="${FLOTILLA_TEST_POSTGRES_PORT:-55432}"
    pg_dir="$(mktemp -d)"
    chown postgres "$pg_dir"
    trap stop_postgres EXIT
    echo "==> starting PostgreSQL on 127.0.0.1:$port"
    runuser -u postgres -- "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U flotilla >/dev/null
    runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w \
        -o "-k $pg_dir -h 127.0.0.1 -p $port" start >/dev/null
    runuser -u postgres -- "$pg_bin/createdb" -h 127.0.0.1 -p "$port" -U flotilla flotilla
    export TEST_POSTGRES_URL="postgres://flotilla@127.0.0.1:$port/flotilla"
}
start_postgres
export FLOTILLA_REQUIRE_POSTGRES=1

if ! command -v cargo-nextest >/dev/null 2>&1; then
    echo "==> installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

echo "==> checking formatting"
cargo fmt --all -- --check

echo "==> building the workspace"
cargo build --workspace --all-targets --locked

echo "==> running the tests"
cargo nextest run --workspace --locked --no-fail-fast
