#!/usr/bin/env bash
# Benchmark 9: the reconciler's cost. outboxd (CDC) at a live 3,000
# events/s (one event per transaction, 4 writer connections, as benchmark
# 5) with the reconciler off (--reconcile-interval=0), at its default (30 s,
# margin 1 min) and every 5 s, two rounds in alternated order; each run
# loads 170 s before its 120 s window, so that the passes in the window
# judge a full window of rows (~30 min). Reports outboxd's CPU per event
# against "off", the reconciler thread's CPU per pass, the rows a pass
# judges, and PostgreSQL's share (the reconciler's statements). Writes
# benchmarks/results/reconcile.{json,md} and reconcile-machine.txt
# (reconcile-apache.* with --broker=apache). Extra flags go to live_bench
# and override these, e.g.
#   benchmarks/run-reconcile.sh --repeat=3 --reconcile=off,default
#   benchmarks/run-reconcile.sh --settle=40s --duration=60s \
#       --reconcile=off,30s/20s     # a shorter margin, a shorter run
# Refuses to run on a loaded machine (exit 3) unless --force (README).
source "$(dirname "$0")/lib.sh"
bench_args_init --rates=3000 --modes=cdc --reconcile=off,default,5s \
  --repeat=2 --settle=170s --duration=120s "$@"
bench_deps
bench_build outboxd outbox-devbroker live_bench
bench_broker_deps
bench_guard
bench_run reconcile live_bench
