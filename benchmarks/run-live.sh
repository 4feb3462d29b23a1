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
# Refuses to run on a loaded machine (exit 3) unless --force (README).
source "$(dirname "$0")/lib.sh"
bench_args_init "$@"
bench_deps
bench_build outboxd outbox-devbroker live_bench
bench_broker_deps
bench_guard
bench_run live live_bench
