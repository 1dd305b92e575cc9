#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` (the peer of `shoal bench tools`) from the llama.cpp
# sources vendored in the llama-cpp-python sdist on PyPI (the version setup.sh pins), so it
# needs only PyPI and Debian: a plain CPU build (-march=native, no BLAS, no GPU, no curl).
#
#   scripts/compare/build-llama-server.sh [DIR]    (default DIR: <repo>/.bench-venv/llama-server)
#
# Prints the path of the binary. Idempotent: an existing binary is kept. ~10 min on 2 cores.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
DIR="${1:-$REPO/.bench-venv/llama-server}"
VERSION="$(sed -n 's/^LLAMA_CPP_PYTHON_VERSION=//p' "$HERE/setup.sh")"
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
if [ ! -d "llama_cpp_python-$VERSION" ]; then
  # The sdist's metadata step needs scikit-build-core; only the archive is used.
  python3 -c "import scikit_build_core" 2>/dev/null || python3 -m pip install --quiet scikit-build-core >&2 \
    || python3 -m pip install --quiet --break-system-packages scikit-build-core >&2
  python3 -m pip download --quiet --no-deps --no-build-isolation --no-binary :all: \
    "llama-cpp-python==$VERSION" -d . >&2
  tar xzf "llama_cpp_python-$VERSION.tar.gz"
fi
SRC="llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$SRC" -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_BLAS=OFF \
  -DGGML_CUDA=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF >&2
cmake --build build --target llama-server -j "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" >&2
echo "$BIN"
