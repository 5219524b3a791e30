#!/usr/bin/env bash
# Builds every fuzz target once, then runs each in turn for SECONDS seconds
# (first argument, default 600) on its seed corpus, one at a time on one core,
# with the limits of issue 15: 1 s per input, 256 MiB of memory. New inputs go
# to a scratch directory (the checked-in corpus stays as it is); crashes go to
# fuzz/artifacts/<target>/, logs to fuzz/target/fuzz-logs/. Prints each target's final libFuzzer line
# (executions, cov:, ft:) and the time taken. Exits non-zero on any finding.
#
#   fuzz/run.sh 600          # long run: 10 minutes per target
#   fuzz/run.sh 600 pem      # one target
#   fuzz/smoke.sh            # CI: a few seconds per target
#
# FUZZ_PROFILE=dev builds without optimisation (the smoke does).
# FUZZ_SEED=<n> fixes libFuzzer's seed (the smoke does, so a CI run can be
# repeated); unset, each run explores differently.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# libFuzzer needs nightly-only rustc flags; allow them on stable for this crate only.
export RUSTC_BOOTSTRAP=1
t0=$SECONDS
# FUZZ_PROFILE=dev (the smoke) builds unoptimised: minutes less to compile,
# slower to run, which a few seconds per target do not mind.
profile=${FUZZ_PROFILE:-release}
case $profile in
  release) cargo fuzz build -s none; dir=release ;;
  dev) cargo fuzz build -s none --dev; dir=debug ;;
  *) echo "FUZZ_PROFILE must be release or dev, not $profile" >&2; exit 2 ;;
esac
echo "== fuzz build ($profile): $((SECONDS - t0))s"
bin=target/$(rustc -vV | sed -n 's/^host: //p')/$dir
targets=("$@")
((${#targets[@]})) || mapfile -t targets < <(cargo fuzz list)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
logs=target/fuzz-logs
mkdir -p "$logs"
t1=$SECONDS
failed=()
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target" "artifacts/$target"
  log="$logs/$target.log"
  start=$SECONDS
  # The binaries built above (not `cargo fuzz run`, which would rebuild
  # whenever the tree changes under a long run).
  if "$bin/$target" -artifact_prefix="artifacts/$target/" \
    -max_total_time="$seconds" -rss_limit_mb=256 -timeout=1 -print_final_stats=1 \
    ${FUZZ_SEED:+-seed="$FUZZ_SEED"} \
    "$scratch/$target" "corpus/$target" >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$target")
    tail -40 "$log"
  fi
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
  execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
  echo "== $target: $status in $((SECONDS - start))s, execs ${execs:-?}: ${done_line:-no DONE line}"
done
echo "== fuzzing: $((SECONDS - t1))s for ${#targets[@]} targets"
if ((${#failed[@]})); then
  echo "== findings in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
