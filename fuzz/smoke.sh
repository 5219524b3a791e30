#!/usr/bin/env bash
# CI smoke: builds every fuzz target, then runs each for 10 s on its corpus
# (9 targets: about 1.5 minutes of fuzzing after the build). See README.md.
exec "$(dirname "$0")/run.sh" "${FUZZ_SMOKE_SECONDS:-10}"
