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
