#!/usr/bin/env bash
# Installs outboxd's build and test dependencies from Debian 12 packages.
# Idempotent: does nothing when everything is already there.
set -euo pipefail

packages=(
  build-essential cmake pkg-config git ca-certificates procps
  libpq-dev librdkafka-dev nlohmann-json3-dev libabsl-dev libspdlog-dev
  libfmt-dev libgtest-dev libgmock-dev libbenchmark-dev
  postgresql-15 postgresql-client-15 kcat
  libcpp-httplib-dev prometheus-cpp-dev protobuf-compiler libprotobuf-dev curl python3-yaml
  # scripts/check-format.sh (pinned: another major version formats differently)
  clang-format-14
  # The real-Kafka test rig (scripts/fetch-kafka.sh, scripts/kafka-cluster.sh);
  # the JDK's compiler runs tests/kafka/*.java as single-file programs.
  openjdk-17-jre-headless openjdk-17-jdk-headless maven
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# The server package must not start a cluster of its own: tests and the demo
# make throwaway ones.
$sudo mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | \
  $sudo tee /etc/postgresql-common/createcluster.d/outboxd.conf >/dev/null
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
