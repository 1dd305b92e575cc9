#!/usr/bin/env bash
# Fetches the two models (sha256-verified, into ./models), builds Shoal (release) and runs
# the embedded default: one coordinator and one node in one process, gateway on
# http://127.0.0.1:8080, serving every model in ./models. Extra arguments go to `shoal up`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-models.sh ./models
cargo build --release --locked
exec ./target/release/shoal up --models ./models "$@"
