#!/usr/bin/env bash
# Benchmark 3: the pgoutput decoder micro-benchmark (Google Benchmark).
# Writes benchmarks/results/decoder.{json,txt,md} and decoder-machine.txt.
#   benchmarks/run-decoder.sh [extra google-benchmark flags]
# Refuses to run on a loaded machine (exit 3) unless --force (README).
source "$(dirname "$0")/lib.sh"
bench_args_init "$@"
bench_deps
bench_build decoder_bench
bench_guard
mkdir -p "$results"
bench_machine "$results/decoder-machine.txt"
"$root/build/decoder_bench" --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true \
  --benchmark_out="$results/decoder.json" --benchmark_out_format=json \
  "${bench_args[@]}" |
  tee "$results/decoder.txt"
# The medians as a markdown table (messages/s and MB/s).
{
  echo "| benchmark | ns/message | million messages/s | MB/s |"
  echo "|---|---:|---:|---:|"
  awk '
    /"name":/ { name = $2; gsub(/[",]/, "", name) }
    /"cpu_time":/ { cpu = $2; gsub(/,/, "", cpu) }
    /"bytes_per_second":/ { bps = $2; gsub(/,/, "", bps) }
    /"items_per_second":/ { ips = $2; gsub(/,/, "", ips)
      if (name ~ /_median$/) {
        sub(/_median$/, "", name)
        printf "| %s | %.1f | %.2f | %.0f |\n", name, 1e9 / ips, ips / 1e6, bps / 1e6
      }
    }' "$results/decoder.json"
} >"$results/decoder.md"
bench_finish "$results/decoder-machine.txt" "$results/decoder.json" \
  "$results/decoder.md"
cat "$results/decoder.md"
