#!/usr/bin/env bash
# Benchmark 4: outboxd beside Debezium (Kafka Connect standalone +
# PostgreSQL connector + Outbox Event Router) on one throwaway PostgreSQL 15
# and one real 1-node Apache Kafka: record equality on 10,000 rows, then
# throughput on a 1,000,000-row backlog (pg_recvlogical, outboxd, Debezium at
# its defaults and tuned, one after the other), then commit-to-consumer
# latency at 100, 1,000 and 10,000 events/s. Writes
# benchmarks/results/vs-debezium.{json,md}, vs-debezium_cdf.{dat,gp,png} and
# vs-debezium-machine.txt (~15 min on 2 cores).
#
#   benchmarks/run-vs-debezium.sh                  # everything
#   benchmarks/run-vs-debezium.sh --equality-only  # the drop-in check alone:
#       exits 1 on any difference (writes vs-debezium-partial.{json,md})
#
# Other flags go to vs_debezium_bench, e.g. --events=200000 --duration=5s
# --phases=throughput --throughput_runs=outboxd,debezium-tuned.
# Refuses to run on a loaded machine (exit 3) unless --force (README).
source "$(dirname "$0")/lib.sh"
bench_args_init "$@"
args=()
for a in "${bench_args[@]}"; do
  case $a in
    --equality-only) args+=(--phases=equality) ;;
    *) args+=("$a") ;;
  esac
done

bench_deps
bench_build outboxd vs_debezium_bench
libs=$("$root/benchmarks/debezium/fetch.sh")
cluster=$root/scripts/kafka-cluster.sh

work=$(mktemp -d /tmp/outboxd-vs-debezium.XXXXXX)
kafka_dir="$work/kafka"
cleanup() {
  "$cluster" stop --dir "$kafka_dir" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
# The broker as kafka-server-start.sh runs it (1 GB heap, full JIT), not
# the test rig's small C1-only JVM: both publishers are measured against it.
bootstrap=$(KAFKA_HEAP=${KAFKA_HEAP:-1g} \
  KAFKA_JVM_OPTS=${KAFKA_JVM_OPTS:--XX:TieredStopAtLevel=4} \
  "$cluster" start --nodes 1 --dir "$kafka_dir" --partitions 4 \
  --watch-pid $$)
echo "run-vs-debezium: Kafka at $bootstrap, logs in $work" >&2
# The broker's JVM start-up loads the machine for a while: the guard waits.
bench_guard
broker_pid=$(<"$kafka_dir/node-0/pid")

mkdir -p "$results"
machine="$results/vs-debezium-machine.txt"
[[ " ${args[*]} " == *" --phases="* ]] && machine="$work/machine.txt"
bench_machine "$machine"
set +e
"$root/build/vs_debezium_bench" --out="$results" --bootstrap="$bootstrap" \
  --connect_libs="$libs" \
  --connect_log4j="$root/benchmarks/debezium/log4j2.properties" \
  --work_dir="$work/logs" --broker_pid="$broker_pid" "${args[@]}"
rc=$?
set -e
bench_finish "$machine" "$results/vs-debezium.json" "$results/vs-debezium.md" \
  "$results/vs-debezium-partial.json" "$results/vs-debezium-partial.md"
if [[ $rc -ne 0 && -n ${KEEP_LOGS:-} ]]; then
  cp -r "$work/logs" "$KEEP_LOGS"
  echo "run-vs-debezium: logs copied to $KEEP_LOGS" >&2
fi
if [[ -f "$results/vs-debezium_cdf.gp" && $machine == "$results/"* ]]; then
  (cd "$results" && gnuplot vs-debezium_cdf.gp)
fi
exit $rc
