#!/usr/bin/env bash
# Plays the `rabbitmq:3` image on kubesim: the machine's RabbitMQ broker (Debian package
# rabbitmq-server, installed by e2e/install-tools.sh) on the pod's address and first
# containerPort, its data in the pod's directory, so it lives and dies with the pod.
#
# Honours the image's own settings: RABBITMQ_DEFAULT_USER and RABBITMQ_DEFAULT_PASS (default
# guest/guest), and, as the image does, lets that user connect from other addresses.
set -euo pipefail

addr="${LISTEN_ADDR:?kubesim sets LISTEN_ADDR to the pod address and port}"
ip="${addr%:*}"
port="${addr##*:}"
server=/usr/lib/rabbitmq/bin/rabbitmq-server
[[ -x "$server" ]] || server="$(command -v rabbitmq-server)" ||
    { echo "rabbitmq-server not found: run e2e/install-tools.sh" >&2; exit 127; }

dir="$PWD/rabbitmq"
mkdir -p "$dir"
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

# Erlang distribution needs a port of its own; any free one (the pod talks AMQP only).
dist_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

export HOME="$dir"
export RABBITMQ_NODENAME="rabbit-${ip//./-}@localhost"
export RABBITMQ_NODE_IP_ADDRESS="$ip"
export RABBITMQ_NODE_PORT="$port"
export RABBITMQ_DIST_PORT="$dist_port"
export RABBITMQ_MNESIA_BASE="$dir/mnesia"
export RABBITMQ_LOG_BASE="$dir/log"
export RABBITMQ_CONFIG_FILE="$dir/rabbitmq"
export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
# The Erlang VM replaces the script (as under systemd), so the kubelet's SIGTERM reaches the
# broker itself and a SIGKILL leaves no orphan.
export RUNNING_UNDER_SYSTEMD=true
exec "$server"
