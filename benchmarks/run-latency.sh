#!/usr/bin/env bash
# Benchmark 1: commit-to-consumer latency of each publisher mode (cdc, poll
# at 1 s / 100 ms / 10 ms, notify) at 100, 1,000 and 10,000 events/s.
# Writes benchmarks/results/latency.{json,csv,md}, latency_cdf.{dat,gp,png}
# and latency-machine.txt. Extra flags go to latency_bench, e.g.
#   benchmarks/run-latency.sh --modes=cdc,poll100ms --rates=1000 --duration=5s
# Refuses to run on a loaded machine (exit 3) unless --force (README).
source "$(dirname "$0")/lib.sh"
bench_args_init "$@"
bench_deps
bench_build outboxd outbox-devbroker latency_bench
bench_guard
mkdir -p "$results"
bench_machine "$results/latency-machine.txt"
set +e
"$root/build/latency_bench" --out="$results" "${bench_args[@]}"
rc=$?
set -e
bench_finish "$results/latency-machine.txt" "$results/latency.json" \
  "$results/latency.md"
if [[ -f "$results/latency_cdf.gp" ]]; then
  (cd "$results" && gnuplot latency_cdf.gp)
fi
echo "wrote $results/latency.md and $results/latency_cdf.png" >&2
exit $rc
