#!/usr/bin/env bash
# Prints the Secrets the sample services read, each value freshly random, so no usable secret
# ships in this repository. Create them once, in the namespace the samples go to:
#
#   services/deploy/secrets.sh | kubectl create -f -
#
# `create` refuses Secrets that already exist, so running it again changes nothing.
#   users-secrets:    admin-token (users' /admin/faults), service-token (auth's credential for
#                     users' credential check; users and auth both read it)
#   auth-secrets:     signing-key (the Ed25519 key auth signs tokens with; only auth reads it),
#                     admin-token
#   auth-public-keys: public-keys (the signing key's public half; users and orders verify
#                     tokens with it and cannot mint any)
#   orders-secrets:   admin-token
#   shipping-secrets: admin-token
#   rabbitmq-credentials: username, password (the broker's user, rabbitmq.yaml) and url (the
#                     AMQP URL with them, for orders and shipping)
set -euo pipefail

random() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

header() {
    printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n' "$1"
    printf '  labels:\n    app.kubernetes.io/name: %s\n    app.kubernetes.io/part-of: flotilla-samples\n' "$2"
    printf 'type: Opaque\nstringData:\n'
}

secret() {
    local name=$1 app=$2
    shift 2
    header "$name" "$app"
    local key
    for key in "$@"; do
        printf '  %s: "%s"\n' "$key" "$(random 32)"
    done
}

# A multi-line value (a PEM block) as a YAML literal block.
block() {
    printf '  %s: |\n' "$1"
    sed 's/^/    /'
}

signing_key="$(openssl genpkey -algorithm ed25519)"

secret users-secrets users admin-token service-token
secret auth-secrets auth admin-token
printf '%s\n' "$signing_key" | block signing-key
header auth-public-keys auth
printf '%s\n' "$signing_key" | openssl pkey -pubout | block public-keys
secret orders-secrets orders admin-token
secret shipping-secrets shipping admin-token
broker_password="$(random 24)"
header rabbitmq-credentials rabbitmq
printf '  username: "flotilla"\n  password: "%s"\n' "$broker_password"
printf '  url: "amqp://flotilla:%s@rabbitmq:5672/%%2f"\n' "$broker_password"
