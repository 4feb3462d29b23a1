# Shared by the benchmark wrappers: installs the benchmark-only dependency
# (gnuplot) on top of scripts/install-deps.sh, builds the given targets into
# build/ through scripts/build.sh, and records the machine the results ran on.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
results="$root/benchmarks/results"

bench_deps() {
  if ! command -v gnuplot >/dev/null 2>&1; then
    local sudo=""
    [[ $(id -u) -ne 0 ]] && sudo=sudo
    echo "benchmarks: installing gnuplot-nox" >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
      --no-install-recommends gnuplot-nox >&2 || {
      DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
        --no-install-recommends gnuplot-nox >&2
    }
  fi
}

bench_build() {
  "$root/scripts/build.sh" "$@" >&2
}

# machine.txt: what every result file was measured on.
bench_machine() {
  local out="$1"
  {
    echo "date:     $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc:    $(nproc)"
    echo "cpu:      $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "memory:   $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "kernel:   $(uname -sr)"
    echo "load:     $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, at the start)"
    echo "git:      $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet -- src || echo ' (src modified)')"
    echo "postgres: $(/usr/lib/postgresql/15/bin/postgres --version)"
    echo "librdkafka: $(pkg-config --modversion rdkafka)"
  } >"$out"
}
