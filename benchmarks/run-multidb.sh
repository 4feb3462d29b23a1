#!/usr/bin/env bash
# Benchmark 7: many databases. One outboxd with --databases=d0,...,d19
# against 20 outboxd processes (one per database) on one PostgreSQL server
# and one broker: events lost and duplicated per database, outboxd CPU per
# 1,000 events, RSS, threads, PostgreSQL connections and the time until
# every slot streams, for a steady load and for a backlog drained by a
# restart, 3 rounds (~5 min). Writes benchmarks/results/multidb.{json,md} and
# multidb-machine.txt; with --broker=apache multidb-apache.*. Extra flags go
# to multidb_bench, e.g.
#   benchmarks/run-multidb.sh --databases=5 --rate=500 --duration=10s
#   benchmarks/run-multidb.sh --metrics     # /metrics served by every process
#   benchmarks/run-multidb.sh --broker=apache
# Refuses to run on a loaded machine (exit 3) unless --force (README).
source "$(dirname "$0")/lib.sh"
bench_args_init "$@"
bench_deps
bench_build outboxd outbox-devbroker multidb_bench
bench_broker_deps
bench_guard
bench_run multidb multidb_bench
