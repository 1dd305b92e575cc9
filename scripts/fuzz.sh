#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through libfuzzer-sys, on stable Rust; see docs/fuzzing.md).
#
#   ./scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   run each target (default: all, 600 s)
#   ./scripts/fuzz.sh --build                             only build the targets (CI builds them while the tests run)
#   ./scripts/fuzz.sh --seeds                             rewrite the seed corpora (fuzz/corpus/*/seed-*)
#   ./scripts/fuzz.sh --merge [TARGET...]                 minimise the committed corpora (set-cover merge
#                                                         on edges, then at most FUZZ_CORPUS_BYTES=320 KiB each)
#
# Builds the `fuzz/` crate (its own workspace) with sanitizer-coverage instrumentation into
# $CARGO_TARGET_DIR (default ./target-fuzz), runs each target on fuzz/corpus/TARGET (new
# inputs are added there), saves crashes to fuzz/artifacts/TARGET/, and prints one line per
# target. Exits non-zero if any target crashed. The tokenizer target needs the SmolLM2 model
# (./scripts/fetch-models.sh; SHOAL_MODELS_DIR, default ./models) and is skipped without it.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

ALL_TARGETS=(frame messages gguf safetensors tokenizer http_bodies)
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target-fuzz}"
export SHOAL_MODELS_DIR="${SHOAL_MODELS_DIR:-$root/models}"
# What cargo-fuzz passes, less its nightly-only sanitizer flags (no ASan: libFuzzer's own
# checks, Rust's panics, debug assertions and overflow checks find the bugs). The build
# profile (fuzz/Cargo.toml) turns on debug assertions and overflow checks.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
BIN="$CARGO_TARGET_DIR/$TRIPLE/release"

build() {
  echo "== building the fuzz targets ($CARGO_TARGET_DIR)"
  local started=$SECONDS
  # --target keeps RUSTFLAGS off build scripts and proc macros (as cargo-fuzz does).
  (cd fuzz && cargo build --release --locked --target "$TRIPLE" --bins)
  echo "== built in $((SECONDS - started)) s"
}

mode=run
case "${1:-}" in
  --build) build; exit 0 ;;
  --seeds) mode=seeds; shift ;;
  --merge) mode=merge; shift ;;
esac

if [ "$mode" = seeds ]; then
  build
  "$BIN/seeds"
  exit 0
fi

secs=600
if [ "$mode" = run ] && [[ "${1:-}" =~ ^[0-9]+$ ]]; then
  secs="$1"
  shift
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
  [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || { echo "error: unknown target '$t' (one of: ${ALL_TARGETS[*]})" >&2; exit 2; }
done

build

if [ "$mode" = merge ]; then
  for t in "${targets[@]}"; do
    tmp="$(mktemp -d)"
    "$BIN/$t" -set_cover_merge=1 -use_counters=0 -use_value_profile=0 -rss_limit_mb=2048 -timeout=10 "$tmp" "fuzz/corpus/$t" >/dev/null 2>&1
    before=$(ls "fuzz/corpus/$t" | wc -l)
    # Keep the seeds under their names; replace the rest by the minimised set (libFuzzer names
    # files by their SHA-1, so a seed's copy is recognised and dropped).
    seeds="$(for f in "fuzz/corpus/$t"/seed-*; do
      if [ -e "$f" ]; then sha1sum "$f" | cut -d' ' -f1; fi
    done)"
    find "fuzz/corpus/$t" -type f ! -name 'seed-*' -delete
    for f in "$tmp"/*; do
      [ -e "$f" ] || continue
      grep -qx "$(basename "$f")" <<<"$seeds" || cp "$f" "fuzz/corpus/$t/"
    done
    # Keep the committed corpus small (all of fuzz/corpus under 2 MiB): past the budget, the
    # largest non-seed inputs go first.
    budget="${FUZZ_CORPUS_BYTES:-327680}"
    total=$(cat "fuzz/corpus/$t"/* | wc -c)
    while [ "$total" -gt "$budget" ]; do
      biggest="$(find "fuzz/corpus/$t" -type f ! -name 'seed-*' -printf '%s %p\n' | sort -n | tail -n1)"
      [ -n "$biggest" ] || break
      rm -f "${biggest#* }"
      total=$((total - ${biggest%% *}))
    done
    echo "$t: $before -> $(ls "fuzz/corpus/$t" | wc -l) corpus files, $total bytes"
    rm -rf "$tmp"
  done
  exit 0
fi

gguf_model="$SHOAL_MODELS_DIR/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
crashed=0
summary=()
for t in "${targets[@]}"; do
  if [ "$t" = tokenizer ] && [ ! -f "$gguf_model" ]; then
    summary+=("$(printf '%-12s skipped: no %s (./scripts/fetch-models.sh)' "$t" "$gguf_model")")
    continue
  fi
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log="fuzz/artifacts/$t/last-run.log"
  before=$(find "fuzz/artifacts/$t" -type f ! -name '*.log' | wc -l)
  echo "== fuzzing $t for $secs s"
  rc=0
  "$BIN/$t" "fuzz/corpus/$t" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
    -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  after=$(find "fuzz/artifacts/$t" -type f ! -name '*.log' | wc -l)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
  added=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -n1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)
  crashes=$((after - before))
  if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
    crashes=1 # died without writing an artifact (e.g. the model failed to load)
  fi
  if [ "$crashes" -gt 0 ]; then
    crashed=1
    grep -E 'ERROR: libFuzzer|panicked at|^SUMMARY|Test unit written' "$log" | head -n 8 | sed 's/^/    /' || true
  fi
  summary+=("$(printf '%-12s execs %-10s exec/s %-7s cov %-6s ft %-6s new corpus %-5s crashes %s' \
    "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${added:-?}" "$crashes")")
done

echo "== fuzz summary ($secs s per target; logs in fuzz/artifacts/TARGET/last-run.log)"
printf '%s\n' "${summary[@]}"
exit "$crashed"
