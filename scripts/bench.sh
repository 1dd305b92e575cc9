#!/usr/bin/env bash
# Runs the benchmarks: frame codec per message kind, the QUIC round trip beside
# plain TCP in the same run, and raft commits/failover of real coordinator processes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --locked -p shoal-protocol --bench frames -- --warm-up-time 1 --measurement-time 3
cargo bench --locked -p shoal-protocol --bench quic_rtt -- --warm-up-time 1 --measurement-time 5
cargo build --release --locked
./target/release/shoal bench raft
