#!/usr/bin/env bash
# Benchmark 6: the first event after a start and after a standby takeover,
# beside the single-event latency of an idle outboxd and the instrument's
# own floor (a producer in the benchmark to the same consumer), 7 times
# each, min/median/max (~3 min). Writes
# benchmarks/results/first-event.{json,md} and first-event-machine.txt; with
# --broker=apache (a single-node Apache Kafka instead of the dev broker, the
# floor included) first-event-apache.{json,md} and
# first-event-apache-machine.txt. Extra flags go to first_event_bench, e.g.
#   benchmarks/run-first-event.sh --reps=3 --phases=start
#   benchmarks/run-first-event.sh --broker=apache
#   benchmarks/run-first-event.sh --reps=1 --phases=start \
#     --outboxd_args=--log-level=debug --kafka_debug=broker,topic,metadata,msg
# (outboxd's logs stay in /tmp/outboxd-bench-first-event).
# Refuses to run on a loaded machine (exit 3) unless --force (README).
source "$(dirname "$0")/lib.sh"
bench_args_init "$@"
bench_deps
bench_build outboxd outbox-devbroker first_event_bench
bench_broker_deps
bench_guard
bench_run first-event first_event_bench
