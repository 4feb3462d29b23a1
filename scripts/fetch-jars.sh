#!/usr/bin/env bash
# Resolves the runtime jars of a Maven pom into a folder once, and prints the
# folder. Maven runs only when the folder is missing or was filled from a
# different pom (a stamp holds the pom's hash), so a complete folder costs
# nothing and needs no network. One fetch at a time per folder.
#
#   scripts/fetch-jars.sh POM DIR LABEL   # LABEL names it in messages
# The Java rigs call it through scripts/fetch-kafka.sh (the test broker) and
# benchmarks/debezium/fetch.sh (Kafka Connect + Debezium).
set -euo pipefail
(($# == 3)) || { echo "usage: $0 POM DIR LABEL" >&2; exit 2; }
pom=$1 libs=$2 label=$3
hash=$(sha256sum "$pom" | cut -d' ' -f1)

complete() { [[ -f "$libs/.stamp" && $(<"$libs/.stamp") == "$hash" ]]; }

if complete; then
  echo "$libs"
  exit 0
fi
for tool in java mvn; do
  command -v "$tool" >/dev/null || {
    echo "$label: $tool not found (scripts/install-deps.sh installs it)" >&2
    exit 1
  }
done
mkdir -p "$(dirname "$libs")"
exec 9>"$libs.lock"
flock 9
if complete; then
  echo "$libs"
  exit 0
fi
echo "$label: resolving the jars of $pom into $libs" >&2
tmp=$(mktemp -d "$libs.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
  -DincludeScope=runtime -DoutputDirectory="$tmp" >&2
echo "$hash" >"$tmp/.stamp"
rm -rf "$libs"
mv "$tmp" "$libs"
trap - EXIT
echo "$libs"
