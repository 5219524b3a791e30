#!/usr/bin/env bash
# CI smoke: builds every fuzz target, then runs each for 10 s on its corpus
# (9 targets: about 1.5 minutes of fuzzing after the build), with a fixed
# libFuzzer seed so a red run can be repeated. See README.md.
FUZZ_SEED=${FUZZ_SEED:-1} exec "$(dirname "$0")/run.sh" "${FUZZ_SMOKE_SECONDS:-10}"
