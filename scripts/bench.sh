#!/usr/bin/env bash
# Runs the benchmarks: frame codec per message kind, the QUIC round trip beside
# plain TCP in the same run, and raft commits/failover of real coordinator processes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --locked -p shoal-protocol --bench frames -- --warm-up-time 1 --measurement-time 3
cargo bench --locked -p shoal-protocol --bench quic_rtt -- --warm-up-time 1 --measurement-time 5
# etcd (Debian's etcd-server) runs the same raft workload beside Shoal's, when it can be installed.
if [ ! -x /usr/bin/etcd ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server >/dev/null || echo "etcd-server not installed; comparison skipped"
fi
cargo build --release --locked
./target/release/shoal bench raft
