#!/usr/bin/env bash
# The one test command. On a fresh machine it installs what the tests need (helm, promtool, a Python
# venv with the schema validators), builds the workspace, and runs every test: unit tests, controller
# tests against kubesim, chart checks, and the e2e suite (on kubesim unless FLOTILLA_E2E_KUBECONFIG
# names a real cluster). It ends with nextest's summary line.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# The tools install in the background while the workspace builds (the build needs none of
# them; both take a while on a fresh machine, one on the network, the other on the CPU).
tools_log="$(mktemp)"
echo "==> installing test tools (in the background, while the workspace builds)"
bash e2e/install-tools.sh >"$tools_log" 2>&1 &
tools_pid=$!
wait_for_tools() {
    local status=0
    wait "$tools_pid" || status=$?
    tools_pid=""
    cat "$tools_log"
    rm -f "$tools_log"
    if [[ "$status" != 0 ]]; then
        echo "installing the test tools failed" >&2
        exit "$status"
    fi
}
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
    echo "==> starting PostgreSQL on 127.0.0.1:$port"
    runuser -u postgres -- "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U flotilla >/dev/null
    runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w \
        -o "-k $pg_dir -h 127.0.0.1 -p $port" start >/dev/null
    runuser -u postgres -- "$pg_bin/createdb" -h 127.0.0.1 -p "$port" -U flotilla flotilla
    export TEST_POSTGRES_URL="postgres://flotilla@127.0.0.1:$port/flotilla"
}

# RabbitMQ for the messaging tests that never stop their broker: one broker for the run, and a
# virtual host per test (`flotilla_testkit::rabbitmq::Broker::shared`), instead of a broker
# started (an Erlang VM booted) for each. Started by the same entrypoint as the tests' own
# brokers, stopped when this script exits. Tests that stop, kill or restart a broker still
# start their own.
mq_dir=""
mq_pid=""
stop_rabbitmq() {
    if [[ -n "$mq_pid" ]]; then
        kill -TERM "$mq_pid" 2>/dev/null || true
        wait "$mq_pid" 2>/dev/null || true
    fi
    if [[ -n "$mq_dir" ]]; then
        rm -rf "$mq_dir"
    fi
}
start_rabbitmq() {
    mq_dir="$(mktemp -d)"
    local port
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    local addr="127.0.0.1:$port"
    echo "==> starting RabbitMQ on $addr for the messaging tests"
    (cd "$mq_dir" && LISTEN_ADDR="$addr" exec "$repo/e2e/kubesim/images/rabbitmq.sh") \
        >"$mq_dir/broker.log" 2>&1 &
    mq_pid=$!
    local waited=0
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if ! kill -0 "$mq_pid" 2>/dev/null || ((waited >= 600)); then
            cat "$mq_dir/broker.log" >&2
            echo "RabbitMQ did not start" >&2
            exit 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    # One virtual host per test that asks for one, all made in one rabbitmqctl call.
    python3 - "$mq_dir" <<'PY'
import json, sys
names = [f"flotilla-test-{n}" for n in range(64)]
perms = [dict(user="guest", vhost=n, configure=".*", write=".*", read=".*") for n in names]
with open(f"{sys.argv[1]}/definitions.json", "w") as f:
    json.dump({"vhosts": [{"name": n} for n in names], "permissions": perms}, f)
with open(f"{sys.argv[1]}/vhosts", "w") as f:
    f.write("".join(n + "\n" for n in names))
PY
    (cd "$mq_dir" && LISTEN_ADDR="$addr" "$repo/e2e/kubesim/images/rabbitmq.sh" ctl --quiet \
        import_definitions "$mq_dir/definitions.json") >/dev/null
    mkdir "$mq_dir/leases"
    echo "$addr" >"$mq_dir/address"
    export FLOTILLA_TEST_RABBITMQ_DIR="$mq_dir"
}

cleanup() {
    if [[ -n "$tools_pid" ]]; then
        kill "$tools_pid" 2>/dev/null || true
    fi
    stop_rabbitmq
    stop_postgres
}
trap cleanup EXIT

if ! command -v cargo-nextest >/dev/null 2>&1; then
    echo "==> installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

echo "==> checking formatting"
cargo fmt --all -- --check

echo "==> building the workspace"
cargo build --workspace --all-targets --locked

wait_for_tools
start_postgres
export FLOTILLA_REQUIRE_POSTGRES=1
start_rabbitmq

echo "==> running the tests"
cargo nextest run --workspace --locked --no-fail-fast
