#!/usr/bin/env bash
# Fetches the Java side of the Debezium benchmark (benchmarks/debezium/pom.xml:
# Kafka Connect, Debezium's PostgreSQL connector with its Outbox Event Router,
# an SLF4J binding) into .cache/debezium-libs once, and prints that folder.
# Maven runs only when the folder is missing or was filled from a different
# pom (a stamp holds the pom's hash), so a complete folder needs no network.
#
#   libs=$(benchmarks/debezium/fetch.sh)   # then: java -cp "$libs/*" ...
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
pom="$here/pom.xml"
libs=${DEBEZIUM_LIBS:-$root/.cache/debezium-libs}
hash=$(sha256sum "$pom" | cut -d' ' -f1)

if [[ -f "$libs/.stamp" && $(<"$libs/.stamp") == "$hash" ]]; then
  echo "$libs"
  exit 0
fi
for tool in java mvn; do
  command -v "$tool" >/dev/null || {
    echo "debezium fetch: $tool not found (scripts/install-deps.sh installs it)" >&2
    exit 1
  }
done
mkdir -p "$(dirname "$libs")"
exec 9>"$libs.lock"
flock 9
if [[ -f "$libs/.stamp" && $(<"$libs/.stamp") == "$hash" ]]; then
  echo "$libs"
  exit 0
fi
echo "debezium fetch: resolving Kafka Connect + Debezium jars into $libs" >&2
tmp=$(mktemp -d "$libs.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
  -DincludeScope=runtime -DoutputDirectory="$tmp" >&2
echo "$hash" >"$tmp/.stamp"
rm -rf "$libs"
mv "$tmp" "$libs"
trap - EXIT
echo "$libs"
