#!/usr/bin/env bash
# Prints the Secrets the sample services read, each value freshly random, so no usable secret
# ships in this repository. Create them once, in the namespace the samples go to:
#
#   services/deploy/secrets.sh | kubectl create -f -
#
# `create` refuses Secrets that already exist, so running it again changes nothing.
#   users-secrets: admin-token (users' /admin/faults), service-token (auth's credential for
#                  users' credential check; users and auth both read it)
#   auth-secrets:  jwt-secret (signs tokens; auth, users and orders read it), admin-token
#   orders-secrets: admin-token
set -euo pipefail

random() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

secret() {
    local name=$1 app=$2
    shift 2
    printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n' "$name"
    printf '  labels:\n    app.kubernetes.io/name: %s\n    app.kubernetes.io/part-of: flotilla-samples\n' "$app"
    printf 'type: Opaque\nstringData:\n'
    local key
    for key in "$@"; do
        printf '  %s: "%s"\n' "$key" "$(random 32)"
    done
}

secret users-secrets users admin-token service-token
secret auth-secrets auth jwt-secret admin-token
secret orders-secrets orders admin-token
