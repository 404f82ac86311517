#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer) for FUZZ_SECONDS each (20 by
# default), starting from its committed seeds (fuzz/seeds/<target>) and the corpus earlier
# runs left (fuzz/corpus/<target>, not committed). Fails on any crash, assertion, leak,
# timeout or out-of-memory, naming the input that caused it; prints what each target
# executed. `./scripts/fuzz.sh websocket tokens` runs only those targets.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export PATH="$HOME/.cargo/bin:$PATH"
seconds=${FUZZ_SECONDS:-20}
# cargo-fuzz's sanitizer and coverage flags are unstable; the stable toolchain takes them
# with RUSTC_BOOTSTRAP=1, so no nightly is needed (none can be fetched on a machine that
# reaches only package registries).
export RUSTC_BOOTSTRAP=1
# The same flags for build and run, or `run` rebuilds everything. Address sanitizer (the
# default) for the unsafe code underneath (zlib-rs, tokio, bytes); 16 codegen units make the
# build minutes shorter for a slightly slower run.
opts=(--codegen-units 16)
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi

start=$(date +%s)
echo "==> building ${#targets[@]} fuzz targets" >&2
cargo fuzz build "${opts[@]}"
echo "==> fuzz build: $(($(date +%s) - start)) s" >&2

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=()
printf '%-16s %12s %10s %8s\n' target executions exec/s crashes
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t"
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb: a bomb that allocates.
  if cargo fuzz run "${opts[@]}" "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$logs/$t" 2>&1; then
    crashes=0
  else
    crashes=1
    failed+=("$t")
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t" | tail -1)
  printf '%-16s %12s %10s %8s\n' "$t" "${execs:-?}" "${rate:-?}" "$crashes"
done
for t in "${failed[@]}"; do
  echo "==> fuzz target $t failed:" >&2
  grep -E -A25 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$logs/$t" | head -60 >&2 || tail -40 "$logs/$t" >&2
  echo "    reproduce: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${opts[*]} $t artifacts/$t/<file>)" >&2
done
echo "==> fuzzing: $(($(date +%s) - start)) s in all" >&2
[ ${#failed[@]} -eq 0 ]
