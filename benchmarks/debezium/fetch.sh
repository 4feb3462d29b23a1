#!/usr/bin/env bash
# Fetches the Java side of the Debezium benchmark (benchmarks/debezium/pom.xml:
# Kafka Connect, Debezium's PostgreSQL connector with its Outbox Event Router,
# an SLF4J binding) into .cache/debezium-libs once, and prints that folder
# (scripts/fetch-jars.sh).
#
#   libs=$(benchmarks/debezium/fetch.sh)   # then: java -cp "$libs/*" ...
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
exec "$root/scripts/fetch-jars.sh" "$root/benchmarks/debezium/pom.xml" \
  "${DEBEZIUM_LIBS:-$root/.cache/debezium-libs}" "debezium fetch"
