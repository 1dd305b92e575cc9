#!/usr/bin/env bash
# Runs the benchmarks: frame codec per message kind, and the QUIC round trip beside
# plain TCP in the same run. Figures go to stdout (criterion's HTML in target/criterion).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --locked -p shoal-protocol --bench frames -- --warm-up-time 1 --measurement-time 3
cargo bench --locked -p shoal-protocol --bench quic_rtt -- --warm-up-time 1 --measurement-time 5
