#!/usr/bin/env bash
# Installs dependencies (if missing) and builds outboxd into build/.
#   scripts/build.sh                 # everything, tests included
#   scripts/build.sh outboxd ...     # only these targets
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build build -j "$(nproc)" "${targets[@]}"
