#!/usr/bin/env bash
# Installs dependencies, builds, and runs the whole test suite with ctest
# (the real-Kafka tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
# The Apache Kafka jars for the `kafka` tests: fetched once, then reused.
scripts/fetch-kafka.sh >/dev/null
# PostgreSQL 16, 17 and 18 for the version matrix (ctest -L pg-matrix).
scripts/fetch-postgres.sh >/dev/null
cd build
ctest --output-on-failure --timeout 900 "$@"
