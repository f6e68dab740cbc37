#!/usr/bin/env bash
# Runs the cargo-fuzz targets under fuzz/ for a while each; fails if any target crashes, hangs
# or allocates past its limit.
#
#   scripts/fuzz.sh                 every target, FUZZ_SECONDS each
#   scripts/fuzz.sh jwt media_range only these
#
# Installs cargo-fuzz from crates.io if missing (`cargo install --locked`, into ~/.cargo/bin).
# The stable toolchain builds the targets: RUSTC_BOOTSTRAP=1 lets it take the nightly flags
# cargo-fuzz passes (sanitizer, coverage). Each target starts from its committed seeds
# (fuzz/seeds/<target>/) and what earlier runs grew (fuzz/corpus/<target>/, gitignored);
# a crash leaves its input under fuzz/artifacts/<target>/ and the command to reproduce it in
# the output. Prints each target's number of executions (libFuzzer's final stats).
#
# Environment: FUZZ_SECONDS (default 60).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
all=(client_frame server_frame media_range upload_ticket jwt store_codec)

# The largest input worth mutating, per target: a client frame is at most 64 KiB
# (MAX_FRAME_BYTES) and the decoder refuses more first; the rest are short strings.
max_len() {
  case "$1" in
    client_frame) echo 65600 ;;
    server_frame) echo 16384 ;;
    media_range) echo 128 ;;
    upload_ticket | jwt) echo 2048 ;;
    store_codec) echo 4096 ;;
    *) echo "unknown fuzz target $1 (known: ${all[*]})" >&2; exit 2 ;;
  esac
}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (crates.io)" >&2
  cargo install cargo-fuzz --locked
fi

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${all[@]}")
for target in "${targets[@]}"; do
  max_len "$target" >/dev/null
done

export RUSTC_BOOTSTRAP=1
# One build of every target (they share their dependencies) before any clock starts.
cargo fuzz build

failed=()
summary=()
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target" "fuzz/seeds/$target"
  log="fuzz/artifacts/$target.log"
  mkdir -p fuzz/artifacts
  echo "fuzzing $target for ${seconds}s" >&2
  status=0
  cargo fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len="$(max_len "$target")" \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$' || true)"
  summary+=("$target: ${runs:-?} executions in ${seconds}s")
  if [[ "$status" != 0 ]]; then
    echo "fuzz target $target failed (exit $status); the end of its log ($log):" >&2
    tail -n 60 "$log" >&2
    failed+=("$target")
  fi
done

printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzzing failed: ${failed[*]}" >&2
  exit 1
fi
