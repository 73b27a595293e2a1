#!/usr/bin/env bash
# Plays the `rabbitmq:3` image on kubesim, and is the broker of the messaging tests
# (`flotilla_testkit::rabbitmq`): the machine's RabbitMQ broker (Debian package rabbitmq-server,
# installed by e2e/install-tools.sh) on LISTEN_ADDR (kubesim: the pod's address and first
# containerPort), its data in ./rabbitmq, so it lives and dies with the pod, and a broker started
# again in the same directory finds its queues and messages.
#
# Honours the image's own settings: RABBITMQ_DEFAULT_USER and RABBITMQ_DEFAULT_PASS (default
# guest/guest), and, as the image does, lets that user connect from other addresses.
# FLOTILLA_RABBITMQ_SERVER names a rabbitmq-server to run instead of the machine's.
#
# `rabbitmq.sh ctl ARGS...` runs rabbitmqctl ARGS against the broker of that address and
# directory.
set -euo pipefail

addr="${LISTEN_ADDR:?LISTEN_ADDR names the address and port to listen on (kubesim sets it)}"
ip="${addr%:*}"
port="${addr##*:}"
if [[ -n "${FLOTILLA_RABBITMQ_SERVER:-}" ]]; then
    server="$FLOTILLA_RABBITMQ_SERVER"
elif [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
    # Debian's script that runs as the calling user (the one in /usr/sbin switches to the
    # rabbitmq user, which cannot write the pod's directory).
    server=/usr/lib/rabbitmq/bin/rabbitmq-server
else
    server="$(command -v rabbitmq-server)" || {
        echo "rabbitmq-server not found: run e2e/install-tools.sh, or name it in FLOTILLA_RABBITMQ_SERVER" >&2
        exit 127
    }
fi

dir="$PWD/rabbitmq"
mkdir -p "$dir"
# The Erlang cookie lives in $HOME. The node name is unique per address: brokers of tests share
# 127.0.0.1 and differ by port.
export HOME="$dir"
export RABBITMQ_NODENAME="rabbit-${ip//./-}-${port}@localhost"
export RABBITMQ_NODE_IP_ADDRESS="$ip"
export RABBITMQ_NODE_PORT="$port"
export RABBITMQ_MNESIA_BASE="$dir/mnesia"
export RABBITMQ_LOG_BASE="$dir/log"
export RABBITMQ_CONFIG_FILE="$dir/rabbitmq"
export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"

if [[ "${1:-}" == ctl ]]; then
    shift
    ctl="$(dirname "$server")/rabbitmqctl"
    [[ -x "$ctl" ]] || ctl=rabbitmqctl
    exec "$ctl" "$@"
fi

user="${RABBITMQ_DEFAULT_USER:-guest}"
pass="${RABBITMQ_DEFAULT_PASS:-guest}"
cat >"$dir/rabbitmq.conf" <<CONF
log.console = true
log.file = false
loopback_users = none
default_user = $user
default_pass = $pass
CONF
echo '[].' >"$dir/enabled_plugins"

# Erlang distribution needs a port of its own; any free one (the broker's clients talk AMQP
# only; rabbitmqctl finds the node through epmd).
RABBITMQ_DIST_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export RABBITMQ_DIST_PORT
# The Erlang VM replaces the script (as under systemd), so SIGTERM (the kubelet's, a test's)
# reaches the broker itself and a SIGKILL leaves no orphan.
export RUNNING_UNDER_SYSTEMD=true
exec "$server"
