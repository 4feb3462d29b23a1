#!/usr/bin/env bash
# Benchmark 1: commit-to-consumer latency of each publisher mode (cdc, poll
# at 1 s / 100 ms / 10 ms, notify) at 100, 1,000 and 10,000 events/s.
# Writes benchmarks/results/latency.{json,csv,md}, latency_cdf.{dat,gp,png}
# and latency-machine.txt; with --broker=apache (a single-node Apache Kafka
# instead of the dev broker) latency-apache.{json,csv,md},
# latency-apache_cdf.{dat,gp,png} and latency-apache-machine.txt. Extra flags
# go to latency_bench, e.g.
#   benchmarks/run-latency.sh --modes=cdc,poll100ms --rates=1000 --duration=5s
#   benchmarks/run-latency.sh --broker=apache
# Refuses to run on a loaded machine (exit 3) unless --force (README).
source "$(dirname "$0")/lib.sh"
bench_args_init "$@"
bench_deps
bench_build outboxd outbox-devbroker latency_bench
bench_broker_deps
bench_guard
mkdir -p "$results"
name="latency$(bench_suffix)"
stem="$results/$name"
bench_machine "$stem-machine.txt"
set +e
"$root/build/latency_bench" --out="$results" "${bench_args[@]}"
rc=$?
set -e
bench_finish "$stem-machine.txt" "$stem.json" "$stem.md"
if [[ -f "${stem}_cdf.gp" ]]; then
  (cd "$results" && gnuplot "${name}_cdf.gp")
fi
echo "wrote $stem.md and ${stem}_cdf.png" >&2
exit $rc
