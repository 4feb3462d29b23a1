#!/usr/bin/env bash
# Fetches the Java side of the Kafka test rig (tests/kafka/pom.xml: the
# Apache Kafka broker, kafka-clients, an SLF4J binding) into
# .cache/kafka-libs once, and prints that folder (scripts/fetch-jars.sh).
#
#   libs=$(scripts/fetch-kafka.sh)   # then: java -cp "$libs/*" ...
#   KAFKA_LIBS=/some/dir scripts/fetch-kafka.sh   # another folder
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exec "$root/scripts/fetch-jars.sh" "$root/tests/kafka/pom.xml" \
  "${KAFKA_LIBS:-$root/.cache/kafka-libs}" fetch-kafka
