#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/, cargo-fuzz, nightly) and runs each for SECONDS on a copy
# of its committed corpus (fuzz/corpus/TARGET), one after another; fails on the first
# crash, leaving the input in fuzz/artifacts/TARGET/. New inputs go to the copy, so the
# committed corpora change only when someone merges them in on purpose (see the README's
# "Fuzzing").
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default: 20 seconds, every target
#
# Built without a sanitizer (`-s none`): every crate here forbids unsafe code, so
# AddressSanitizer adds build time and slows each run without finding more; the targets
# check their invariants with assertions, and debug assertions and overflow checks are on.
# Set FUZZ_BUILD_FLAGS (e.g. "--dev") to change the build, FUZZ_TARGET_DIR to build
# elsewhere than fuzz/target (CI keeps one across runs, so only this workspace's crates
# rebuild).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-20}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

# shellcheck disable=SC2206 # FUZZ_BUILD_FLAGS is a list of flags
flags=(-s none --target-dir "${FUZZ_TARGET_DIR:-fuzz/target}" ${FUZZ_BUILD_FLAGS:-})
cargo +nightly fuzz build "${flags[@]}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "fuzz/artifacts/$t"
  cp fuzz/corpus/"$t"/* "$work/$t/"
  echo "fuzz: $t for ${secs}s"
  if ! cargo +nightly fuzz run "${flags[@]}" "$t" "$work/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 \
    >"$work/$t.log" 2>&1; then
    cat "$work/$t.log" >&2
    echo "fuzz: $t failed; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)|DONE " "$work/$t.log" | tr '\n' ' '
  echo
done
