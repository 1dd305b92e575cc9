#!/usr/bin/env bash
# Builds Shoal (release) and runs the embedded default: one coordinator and one node in
# one process, gateway on http://127.0.0.1:8080. Extra arguments go to `shoal up`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
exec ./target/release/shoal up "$@"
