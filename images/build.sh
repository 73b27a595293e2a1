#!/usr/bin/env bash
# Builds every Flotilla container image, the operator (operator/Dockerfile) and each sample
# service (a target of services/Dockerfile each), and with --push pushes them to your registry. It is the one place images are built:
# the README's real-cluster walkthrough and e2e/kind/run.sh both call it. It sits at the top of
# the repository, beside charts/, because the charts install exactly what it builds and a
# newcomer looking for "where do the images come from" finds it there, not inside the test tree.
#
# Usage, from anywhere:
#   images/build.sh [--registry REGISTRY] [--engine docker|podman] [--push] [--dry-run]
#   images/build.sh --list [--registry REGISTRY]
#
#   --registry R  prefix every image with R (a host[:port][/path], e.g. registry.example.com/team):
#                 R/flotilla/operator:<version>, R/flotilla/users:<version>, ... Without it the
#                 images are flotilla/operator:<version>, ..., the charts' defaults (what
#                 e2e/kind/run.sh loads into kind). Give the charts the same R: image.registry
#                 (charts/flotilla) and imageRegistry (charts/flotilla-samples).
#   --engine E    docker or podman. Default: docker if it is on PATH, else podman.
#   --push        push every image after all of them built. Needs --registry.
#   --dry-run     print the build and push commands, one a line, and run nothing (needs no
#                 container engine; without one the commands are docker's).
#   --list        print the image references, one a line, and run nothing.
#
# The version is the charts' appVersion (charts/flotilla/Chart.yaml), so the charts' default tags
# name these images. Every build's context is the repository root; the commands run, and are
# printed, as typed at the repository root. Docker needs BuildKit (the buildx plugin): the
# Dockerfiles use cache mounts.
set -euo pipefail

here="${BASH_SOURCE[0]}"
[[ "$here" == */* ]] || here="./$here"
repo="$(cd "${here%/*}/.." && pwd)"
cd "$repo"

# Image name, Dockerfile and (for a Dockerfile of several images) build target of every image,
# in build order. The services' targets share one build stage, compiled once for all four.
images=(
    "flotilla/operator operator/Dockerfile"
    "flotilla/users services/Dockerfile users"
    "flotilla/auth services/Dockerfile auth"
    "flotilla/orders services/Dockerfile orders"
    "flotilla/shipping services/Dockerfile shipping"
)

fail() {
    echo "images/build.sh: $*" >&2
    exit 2
}

usage() {
    local line
    while IFS= read -r line; do
        [[ "$line" == "#!"* ]] && continue
        [[ "$line" == "#"* ]] || break
        line="${line#\#}"
        echo "${line# }"
    done <"$repo/images/build.sh"
}

registry=""
engine=""
push=0
dry_run=0
list=0
while (($#)); do
    case "$1" in
    --registry=*) registry="${1#*=}" ;;
    --registry)
        (($# > 1)) || fail "--registry needs a value, e.g. --registry registry.example.com/team"
        registry="$2"
        shift
        ;;
    --engine=*) engine="${1#*=}" ;;
    --engine)
        (($# > 1)) || fail "--engine needs a value: docker or podman"
        engine="$2"
        shift
        ;;
    --push) push=1 ;;
    --dry-run) dry_run=1 ;;
    --list) list=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) fail "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

registry="${registry%/}"
if [[ -n "$registry" ]]; then
    component='[a-z0-9]([a-z0-9._-]*[a-z0-9])?'
    if ! [[ "$registry" =~ ^$component(:[0-9]+)?(/$component)*$ ]]; then
        fail "--registry '$registry' is not a lower-case host[:port][/path] such as registry.example.com/team (no tag, no scheme)"
    fi
fi
if ((push)) && [[ -z "$registry" ]]; then
    fail "--push needs --registry: the registry to push to, e.g. --registry registry.example.com/team"
fi

case "$engine" in
docker | podman) ;;
"")
    if command -v docker >/dev/null; then
        engine=docker
    elif command -v podman >/dev/null; then
        engine=podman
    elif ((dry_run || list)); then
        engine=docker
    else
        fail "no container engine: install Docker or Podman (or pass --dry-run to only print the commands)"
    fi
    ;;
*) fail "unknown --engine '$engine': docker or podman" ;;
esac
if ! ((dry_run || list)) && ! command -v "$engine" >/dev/null; then
    fail "$engine is not on PATH (or pass --dry-run to only print the commands)"
fi

version=""
while IFS= read -r line; do
    if [[ "$line" =~ ^appVersion:[[:space:]]*\"?([^\"[:space:]]+)\"?[[:space:]]*$ ]]; then
        version="${BASH_REMATCH[1]}"
    fi
done <charts/flotilla/Chart.yaml
[[ -n "$version" ]] || fail "no appVersion in charts/flotilla/Chart.yaml"

prefix="${registry:+$registry/}"
references=()
dockerfiles=()
targets=()
for entry in "${images[@]}"; do
    read -r name dockerfile target <<<"$entry"
    references+=("$prefix$name:$version")
    dockerfiles+=("$dockerfile")
    targets+=("$target")
done

if ((list)); then
    printf '%s\n' "${references[@]}"
    exit 0
fi

# Prints a command as typed at the repository root; runs it unless this is a dry run.
run() {
    local line
    printf -v line '%q ' "$@"
    if ((dry_run)); then
        echo "${line% }"
    else
        echo "+ ${line% }" >&2
        "$@"
    fi
}

build=("$engine" build)
if [[ "$engine" == docker ]]; then
    build=(env DOCKER_BUILDKIT=1 docker build)
fi
for i in "${!references[@]}"; do
    dockerfile="${dockerfiles[$i]}"
    # BuildKit reads <Dockerfile>.dockerignore by itself; Podman is given it, so that neither
    # sends target/ into a build.
    ignore=()
    if [[ "$engine" == podman && -f "$dockerfile.dockerignore" ]]; then
        ignore=(--ignorefile "$dockerfile.dockerignore")
    fi
    target=()
    if [[ -n "${targets[$i]}" ]]; then
        target=(--target "${targets[$i]}")
    fi
    run "${build[@]}" --file "$dockerfile" "${ignore[@]}" "${target[@]}" --tag "${references[$i]}" .
done
if ((push)); then
    for reference in "${references[@]}"; do
        run "$engine" push "$reference"
    done
fi
