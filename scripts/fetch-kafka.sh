#!/usr/bin/env bash
# Fetches the Java side of the Kafka test rig (tests/kafka/pom.xml: the
# Apache Kafka broker, kafka-clients, an SLF4J binding) into
# .cache/kafka-libs once, and prints that folder. Maven runs only when the
# folder is missing or was filled from a different pom (a stamp holds the
# pom's hash), so a complete folder costs nothing and needs no network.
#
#   libs=$(scripts/fetch-kafka.sh)   # then: java -cp "$libs/*" ...
#   KAFKA_LIBS=/some/dir scripts/fetch-kafka.sh   # another folder
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pom="$root/tests/kafka/pom.xml"
libs=${KAFKA_LIBS:-$root/.cache/kafka-libs}
hash=$(sha256sum "$pom" | cut -d' ' -f1)

if [[ -f "$libs/.stamp" && $(<"$libs/.stamp") == "$hash" ]]; then
  echo "$libs"
  exit 0
fi

for tool in java mvn; do
  command -v "$tool" >/dev/null || {
    echo "fetch-kafka: $tool not found (scripts/install-deps.sh installs it)" >&2
    exit 1
  }
done

mkdir -p "$(dirname "$libs")"
# One fetch at a time per folder (tests may start clusters in parallel).
exec 9>"$libs.lock"
flock 9
if [[ -f "$libs/.stamp" && $(<"$libs/.stamp") == "$hash" ]]; then
  echo "$libs"
  exit 0
fi
echo "fetch-kafka: resolving $(grep -o '<kafka.version>[^<]*' "$pom" | cut -d'>' -f2) jars into $libs" >&2
tmp=$(mktemp -d "$libs.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
  -DoutputDirectory="$tmp" >&2
echo "$hash" >"$tmp/.stamp"
rm -rf "$libs"
mv "$tmp" "$libs"
trap - EXIT
echo "$libs"
