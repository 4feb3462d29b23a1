#!/usr/bin/env bash
# Benchmark 2: 1,000,000 events through outboxd (CDC) against the machine's
# own limits on the same data (pg_recvlogical, kcat), for outbox inserts and
# for logical decoding messages. Writes benchmarks/results/throughput.{json,md}
# and throughput-machine.txt. Extra flags go to throughput_bench, e.g.
#   benchmarks/run-throughput.sh --events=100000 --kinds=insert
source "$(dirname "$0")/lib.sh"
bench_deps
bench_build outboxd outbox-devbroker throughput_bench
mkdir -p "$results"
bench_machine "$results/throughput-machine.txt"
"$root/build/throughput_bench" --out="$results" "$@"
