# Shared by the benchmark wrappers: installs the benchmark-only dependency
# (gnuplot) on top of scripts/install-deps.sh, builds the given targets into
# build/ through scripts/build.sh, records the machine the results ran on,
# and guards against measuring on a loaded machine (README "Load guard").
#
# A wrapper does:
#   source "$(dirname "$0")/lib.sh"
#   bench_args_init "$@"            # bench_args = "$@" without --force
#   bench_build <targets>
#   bench_broker_deps               # the Kafka jars when --broker=apache
#   bench_guard                     # waits, or exits 3 when the load is high
#   stem=<name>$(bench_suffix)      # <name>-apache with --broker=apache
#   bench_machine "$results/$stem-machine.txt"
#   ... run the benchmark with "${bench_args[@]}" ...
#   bench_finish "$results/<name>-machine.txt" <json and md files written>
# or, for a benchmark that writes <name>[-apache].{json,md} only, the last
# four steps in one: bench_run <name> <binary>.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
results="$root/benchmarks/results"

# The 1-minute load average above which a benchmark refuses to run.
bench_max_load=${OUTBOXD_BENCH_MAX_LOAD:-1.0}
bench_force=${OUTBOXD_BENCH_FORCE:-}
[[ $bench_force == 0 ]] && bench_force=""
bench_args=()
bench_forced_at=""  # the 1-minute load when --force overrode the guard
bench_load_before=""
bench_start_epoch=$(date +%s)

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

# Strips --force from the wrapper's arguments into bench_force; the rest go
# to the benchmark binary as "${bench_args[@]}".
bench_args_init() {
  bench_args=()
  local a
  for a in "$@"; do
    if [[ $a == --force ]]; then
      bench_force=1
    else
      bench_args+=("$a")
    fi
  done
}

# The broker the arguments choose (--broker=dev|apache, as live_bench,
# first_event_bench and latency_bench take it; default dev).
bench_broker() {
  local a b=dev next=""
  for a in "${bench_args[@]}"; do
    if [[ -n $next ]]; then
      b=$a
      next=""
    elif [[ $a == --broker=* ]]; then
      b=${a#--broker=}
    elif [[ $a == --broker ]]; then
      next=1
    fi
  done
  echo "$b"
}

# The suffix of the result files' names: "" on the dev broker, "-apache" on
# Apache Kafka, so that one run does not overwrite the other's results.
bench_suffix() {
  local b
  b=$(bench_broker)
  [[ $b == dev ]] || echo "-$b"
}

# With --broker=apache: the Kafka jars (scripts/fetch-kafka.sh, cached in
# .cache/kafka-libs), fetched before the load guard rather than during the
# run.
bench_broker_deps() {
  if [[ $(bench_broker) == apache ]]; then
    "$root/scripts/fetch-kafka.sh" >/dev/null
  fi
}

bench_load1() { cut -d' ' -f1 /proc/loadavg; }
bench_load3() { cut -d' ' -f1-3 /proc/loadavg; }
# True when the number $1 is above the number $2.
bench_above() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; }

# Refuses to measure on a loaded machine: when the 1-minute load average is
# above bench_max_load, waits up to 60 s for it to drop, then exits 3 with
# one line saying why and how to override. With --force (or
# OUTBOXD_BENCH_FORCE=1) it runs anyway and the results say "forced at load
# X". Call it right before the measurement (after the build, which loads the
# machine itself).
bench_guard() {
  local load waited=0
  load=$(bench_load1)
  if bench_above "$load" "$bench_max_load"; then
    if [[ -n $bench_force ]]; then
      bench_forced_at=$load
      echo "benchmarks: load average $load is above the limit" \
        "$bench_max_load; running anyway (forced), results are marked" >&2
    else
      echo "benchmarks: load average $load is above the limit" \
        "$bench_max_load; waiting up to 60 s for it to drop" >&2
      while ((waited < 60)) && bench_above "$load" "$bench_max_load"; do
        sleep 5
        waited=$((waited + 5))
        load=$(bench_load1)
      done
      if bench_above "$load" "$bench_max_load"; then
        echo "benchmarks: refusing to run: 1-minute load average $load is" \
          "above the limit $bench_max_load (OUTBOXD_BENCH_MAX_LOAD); run on a" \
          "quiet machine, or override with --force or OUTBOXD_BENCH_FORCE=1" \
          "(the results are then marked forced)" >&2
        exit 3
      fi
    fi
  fi
  bench_load_before=$(bench_load3)
}

# machine.txt: what every result file was measured on.
bench_machine() {
  local out="$1"
  [[ -n $bench_load_before ]] || bench_load_before=$(bench_load3)
  {
    echo "date:     $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc:    $(nproc)"
    echo "cpu:      $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "memory:   $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "kernel:   $(uname -sr)"
    echo "load:     $bench_load_before (1/5/15 min, before the run; limit $bench_max_load)"
    if [[ -n $bench_forced_at ]]; then
      echo "forced:   forced at load $bench_forced_at (limit $bench_max_load)"
    fi
    echo "git:      $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet -- src || echo ' (src modified)')"
    echo "postgres: $(/usr/lib/postgresql/15/bin/postgres --version)"
    echo "librdkafka: $(pkg-config --modversion rdkafka)"
    echo "broker:   $(bench_broker)"
  } >"$out"
}

# Records the machine, runs build/<binary> --out=$results "${bench_args[@]}",
# finishes <name>$(bench_suffix).{json,md} and exits with the benchmark's
# exit code.
bench_run() {
  local name="$1" binary="$2" stem rc
  mkdir -p "$results"
  stem="$results/$name$(bench_suffix)"
  bench_machine "$stem-machine.txt"
  set +e
  "$root/build/$binary" --out="$results" "${bench_args[@]}"
  rc=$?
  set -e
  bench_finish "$stem-machine.txt" "$stem.json" "$stem.md"
  exit $rc
}

# After the run: the load average at the end goes into the machine file, and
# into every given .json (a "load_average" object: before, after, limit,
# forced_at, after_above_limit) and .md (a warning line at the top when the
# run was forced or the load after it is above the limit) that this run
# wrote. Files not written since the start of the script are left alone.
bench_finish() {
  local machine="$1"
  shift
  local after after1 warn="" f
  after=$(bench_load3)
  after1=${after%% *}
  echo "load:     $after (1/5/15 min, after the run)" >>"$machine"
  if bench_above "$after1" "$bench_max_load"; then
    warn="load average $after1 after the run is above the limit $bench_max_load (it includes the benchmark's own processes; on 2 cores much above 2 means something else ran too)"
    echo "warning:  $warn" >>"$machine"
    echo "benchmarks: warning: $warn" >&2
  fi
  for f in "$@"; do
    [[ -f $f ]] || continue
    (($(stat -c %Y "$f") >= bench_start_epoch)) || continue
    case $f in
      *.json)
        python3 - "$f" "$bench_load_before" "$after" "$bench_max_load" \
          "$bench_forced_at" <<'EOF'
import json, sys
path, before, after, limit, forced = sys.argv[1:6]
with open(path) as fh:
    doc = json.load(fh)
doc["load_average"] = {
    "before": [float(x) for x in before.split()],
    "after": [float(x) for x in after.split()],
    "limit": float(limit),
    "forced_at": float(forced) if forced else None,
    "after_above_limit": float(after.split()[0]) > float(limit),
}
with open(path, "w") as fh:
    json.dump(doc, fh, indent=2)
    fh.write("\n")
EOF
        ;;
      *.md)
        local head=""
        if [[ -n $bench_forced_at ]]; then
          head+="> **forced at load $bench_forced_at** (limit $bench_max_load): measured on a loaded machine, not comparable with quiet runs."$'\n\n'
        fi
        if [[ -n $warn ]]; then
          head+="> **warning**: $warn."$'\n\n'
        fi
        if [[ -n $head ]]; then
          { printf '%s' "$head"; cat "$f"; } >"$f.tmp" && mv "$f.tmp" "$f"
        fi
        ;;
    esac
  done
}
