#!/usr/bin/env bash
# Runs the Flotilla e2e suite on a real Kubernetes cluster in Docker (kind):
#   1. create the kind cluster (kept if it already exists),
#   2. build the operator and sample-service images with images/build.sh (the one place images
#      are built) and load them into the cluster,
#   3. install the chart with those images, wait for the operator and run `helm test`,
#   4. scale the operator to two replicas and fail the leader over by deleting its pod (the other
#      replica must take the Lease within the lease duration), then back to one,
#   5. install the sample MicroServices,
#   6. run the whole e2e suite (the `suite`, `failover`, `plugin` and `events` targets) against
#      the cluster (`events` says it checks nothing there: it places its order over gRPC on a
#      cluster IP, which only kubesim exposes to the test runner).
#
# Needs docker, kind, kubectl, helm (v4) and cargo-nextest. Usage, from anywhere:
#   e2e/kind/run.sh            # set KEEP_CLUSTER=0 to delete the cluster afterwards
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cluster="${KIND_CLUSTER_NAME:-flotilla}"
namespace="flotilla-system"
kubeconfig="$repo/target/kind-$cluster.kubeconfig"

for tool in docker kind kubectl helm cargo; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool is required" >&2; exit 1; }
done

cleanup() {
    if [[ "${KEEP_CLUSTER:-1}" == 0 ]]; then
        kind delete cluster --name "$cluster"
    fi
}
trap cleanup EXIT

echo "==> cluster $cluster"
if ! grep -qx "$cluster" <<<"$(kind get clusters 2>/dev/null)"; then
    kind create cluster --name "$cluster" --config "$repo/e2e/kind/kind-config.yaml" --wait 120s
fi
mkdir -p "$(dirname "$kubeconfig")"
kind get kubeconfig --name "$cluster" >"$kubeconfig"
export KUBECONFIG="$kubeconfig"

echo "==> images"
# No registry: the images get the charts' default names (flotilla/operator:<appVersion>, ...), so
# both charts install them with their default values.
"$repo/images/build.sh" --engine docker
image_list="$("$repo/images/build.sh" --list)"
mapfile -t images <<<"$image_list"
for image in "${images[@]}"; do
    kind load docker-image --name "$cluster" "$image"
done

echo "==> operator chart"
# The images were loaded into the node, so they must never be pulled.
helm upgrade --install flotilla "$repo/charts/flotilla" \
    --namespace "$namespace" --create-namespace \
    --set image.pullPolicy=Never \
    --wait --timeout 5m
helm test flotilla --namespace "$namespace" --timeout 5m

echo "==> leader failover"
# The Lease holder is "<pod>_<suffix>"; the chart creates the Lease free.
lease_holder() {
    local identity
    identity="$(kubectl --namespace "$namespace" get lease flotilla-operator \
        -o jsonpath='{.spec.holderIdentity}')"
    echo "${identity%_*}"
}
helm upgrade flotilla "$repo/charts/flotilla" --namespace "$namespace" \
    --reuse-values --set replicaCount=2 --wait --timeout 5m
leader="$(lease_holder)"
echo "leader: $leader"
kubectl --namespace "$namespace" get pod "$leader" >/dev/null
kubectl --namespace "$namespace" delete pod "$leader" --wait=false
lease_duration=15
successor=""
for _ in $(seq $((lease_duration * 2))); do
    successor="$(lease_holder)"
    if [[ -n "$successor" && "$successor" != "$leader" ]]; then
        break
    fi
    sleep 0.5
done
if [[ -z "$successor" || "$successor" == "$leader" ]]; then
    echo "run.sh: no replica took the Lease within ${lease_duration}s of deleting $leader" >&2
    exit 1
fi
echo "new leader: $successor"
helm upgrade flotilla "$repo/charts/flotilla" --namespace "$namespace" \
    --reuse-values --set replicaCount=1 --wait --timeout 5m

echo "==> sample MicroServices"
# Pinned tags pull IfNotPresent, so the pods use the images loaded above.
helm upgrade --install flotilla-samples "$repo/charts/flotilla-samples" \
    --namespace flotilla-samples --create-namespace
kubectl --namespace flotilla-samples wait microservices --all --for=condition=Ready --timeout=5m

echo "==> e2e suite"
cd "$repo"
# The plugin test runs `kubectl flotilla`, the workspace's build of the plugin.
cargo build -p kubectl-flotilla
FLOTILLA_E2E_KUBECONFIG="$kubeconfig" cargo nextest run -p flotilla-e2e --test it \
    -E 'test(/^suite::/) | test(/^failover::/) | test(/^plugin::/) | test(/^events::/)'
