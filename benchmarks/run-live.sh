#!/usr/bin/env bash
# Benchmark 5: live-rate throughput, one event per transaction over 4 writer
# connections at 3,000/s, 8,000/s and as fast as the machine commits, 15 s
# each, outboxd (CDC) running: committed and published rates, outboxd CPU
# per event, context switches, peak RSS (~1 min). Writes
# benchmarks/results/live.{json,md} and live-machine.txt; with
# --broker=apache (a single-node Apache Kafka instead of the dev broker)
# live-apache.{json,md} and live-apache-machine.txt. Extra flags go to
# live_bench, e.g.
#   benchmarks/run-live.sh --rates=1000,max --duration=5s --modes=cdc,poll10ms
#   benchmarks/run-live.sh --broker=apache
#   benchmarks/run-live.sh --broker=apache --rates=3000,8000 --reps=2 \
#     --latency --fetch_wait_ms=100 \
#     --variants="default:,linger5:--kafka-property=linger.ms=5"
#
# --vs-debezium: the whole path beside Debezium (Kafka Connect + Outbox
# Event Router at its defaults) on one Apache Kafka node, each on its own
# slot and measured alone under the same load: 3,000/s and 8,000/s, 10 s
# of load to settle (JIT) then 20 s measured,
# 2 runs each in alternated order after a broker warm-up, then a latency
# run of each (~15 min). Writes live-vs-debezium-apache.{json,md} and
# live-vs-debezium-apache-machine.txt; later flags override, e.g.
#   benchmarks/run-live.sh --vs-debezium --reps=1 --rates=3000
# Refuses to run on a loaded machine (exit 3) unless --force (README).
source "$(dirname "$0")/lib.sh"
vs_debezium=""
args=()
for a in "$@"; do
  if [[ $a == --vs-debezium ]]; then vs_debezium=1; else args+=("$a"); fi
done
bench_args_init "${args[@]}"
bench_deps
if [[ -n $vs_debezium ]]; then
  bench_build outboxd live_bench
  libs=$("$root/benchmarks/debezium/fetch.sh")
  # The broker's JVM as kafka-server-start.sh runs it (1 GB heap, full JIT,
  # G1 aiming at 20 ms pauses), not the test rig's small C1-only one with
  # the serial collector, whose pauses reach the latency's tail
  # (benchmarks/results/experiments/tail-apache.md).
  export KAFKA_HEAP=${KAFKA_HEAP:-1g}
  export KAFKA_JVM_OPTS=${KAFKA_JVM_OPTS:--Xms1g -XX:TieredStopAtLevel=4 \
-XX:-UseSerialGC -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
-XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent}
  bench_args=(--broker=apache --debezium --connect_libs="$libs"
    --connect_log4j="$root/benchmarks/debezium/log4j2.properties"
    --stem=live-vs-debezium --variants=outboxd: --rates=3000,8000
    --duration=20s --settle=10s
    --reps=2 --latency --fetch_wait_ms=100 "${bench_args[@]}")
else
  bench_build outboxd outbox-devbroker live_bench
fi
bench_broker_deps
bench_guard
bench_run "$([[ -n $vs_debezium ]] && echo live-vs-debezium || echo live)" \
  live_bench
