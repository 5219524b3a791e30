#!/usr/bin/env bash
# CI smoke: builds every fuzz target, then runs each for 8 s on its corpus
# (9 targets: about 1.5 minutes of fuzzing after the build), with a fixed
# libFuzzer seed so a red run can be repeated, built unoptimised (the build
# is most of the smoke's time). See README.md.
FUZZ_PROFILE=${FUZZ_PROFILE:-dev} FUZZ_SEED=${FUZZ_SEED:-1} exec "$(dirname "$0")/run.sh" "${FUZZ_SMOKE_SECONDS:-8}"
