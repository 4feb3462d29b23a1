#!/usr/bin/env bash
# Benchmark 2: 1,000,000 events through outboxd (CDC) against the machine's
# own limits on the same data (pg_recvlogical, kcat), for outbox inserts and
# for logical decoding messages. Writes benchmarks/results/throughput.{json,md}
# and throughput-machine.txt. Extra flags go to throughput_bench, e.g.
#   benchmarks/run-throughput.sh --events=100000 --kinds=insert
# Refuses to run on a loaded machine (exit 3) unless --force (README).
source "$(dirname "$0")/lib.sh"
bench_args_init "$@"
bench_deps
bench_build outboxd outbox-devbroker throughput_bench
bench_guard
mkdir -p "$results"
bench_machine "$results/throughput-machine.txt"
set +e
"$root/build/throughput_bench" --out="$results" "${bench_args[@]}"
rc=$?
set -e
bench_finish "$results/throughput-machine.txt" "$results/throughput.json" \
  "$results/throughput.md"
exit $rc
