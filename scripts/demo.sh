#!/usr/bin/env bash
# The demo: builds outboxd (installing what it needs), starts a throwaway
# PostgreSQL 15 (or PG_VERSION) and the dev broker, runs outboxd, writes
# orders with their outbox events in transactions, and shows the events
# arriving in Kafka (read by kcat) with each event's commit-to-receipt
# latency. Then stops everything and removes the throwaway cluster.
#
#   DEMO_ORDERS=50 DEMO_PAUSE=0.2 scripts/demo.sh
#   KAFKA=apache scripts/demo.sh   # a real single-node Apache Kafka (a JVM,
#                                  # jars fetched once by fetch-kafka.sh)
#   PG_VERSION=17 scripts/demo.sh  # PostgreSQL 16, 17 or 18 (binaries
#                                  # fetched once by fetch-postgres.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
orders=${DEMO_ORDERS:-40}
pause=${DEMO_PAUSE:-0.25}
kafka=${KAFKA:-dev}
if [[ $kafka != dev && $kafka != apache ]]; then
  echo "demo: KAFKA must be dev (the default) or apache, not '$kafka'" >&2
  exit 2
fi

scripts/build.sh outboxd outbox-devbroker >&2

source scripts/lib/local-stack.sh

start_postgres demo
say "started a throwaway PostgreSQL $pg_version on 127.0.0.1:$port (wal_level=logical)"
pg="$pg_base dbname=postgres"
psql -q -X "$pg" -v ON_ERROR_STOP=1 -f sql/outbox.sql
psql -q -X "$pg" -v ON_ERROR_STOP=1 -c \
  "CREATE TABLE orders (id bigint PRIMARY KEY, customer text, total numeric)"

case $kafka in
dev)
  say "starting the dev broker (librdkafka mock cluster, 3 brokers)"
  start_devbroker build/outbox-devbroker --brokers=3 --partitions=4 \
    --topic=outbox.event.order:4
  ;;
apache)
  say "starting Apache Kafka (one KRaft node, scripts/kafka-cluster.sh)"
  start_apache_kafka 4 outbox.event.order
  ;;
esac

say "starting outboxd"
build/outboxd --pg="$pg" --brokers="$brokers" --log-level=info 2>"$work/outboxd.log" &
outboxd_pid=$!
pids+=($outboxd_pid)
wait_for "$work/outboxd.log" "streaming from slot" "$outboxd_pid"
sed 's/^/  outboxd| /' "$work/outboxd.log"

say "consuming outbox.event.order with kcat (latency = receipt - commit time)"
# kcat and its reader are two jobs (through a fifo), so that the cleanup
# stops kcat itself: a live broker never makes it exit.
mkfifo "$work/kcat.out"
kcat -C -u -q -b "$brokers" -t outbox.event.order -o beginning -X fetch.wait.max.ms=5 \
  -f '%T\t%p\t%k\t%h\t%s\n' 2>/dev/null >"$work/kcat.out" &
pids+=($!)
while IFS=$'\t' read -r ts partition key headers value; do
  now_us=${EPOCHREALTIME/./}
  printf '  kafka| p%s key=%-6s %-48.48s latency %4d ms  %s\n' \
    "$partition" "$key" "$value" $(( now_us / 1000 - ts )) \
    "$(tr ',' ' ' <<<"$headers" | grep -o 'eventType=[^ ]*')"
done <"$work/kcat.out" &
pids+=($!)
sleep 1

say "writing $orders orders, each with its outbox event in one transaction"
for i in $(seq 1 "$orders"); do
  customer="customer-$(( i % 5 ))"
  psql -q -X "$pg" -v ON_ERROR_STOP=1 <<SQL
BEGIN;
INSERT INTO orders VALUES ($i, '$customer', $i * 10);
SELECT outbox_emit('order', '$i', 'OrderCreated',
  jsonb_build_object('orderId', $i, 'customer', '$customer', 'total', $i * 10),
  jsonb_build_object('source', 'demo')) \\g /dev/null
COMMIT;
SQL
  sleep "$pause"
done
sleep 2

say "the slot after the run"
psql -X "$pg" -c "SELECT slot_name, plugin, confirmed_flush_lsn, pg_current_wal_lsn() FROM pg_replication_slots"
say "stopping outboxd (SIGTERM: flush, confirm, exit 0)"
kill -TERM "$outboxd_pid"
wait "$outboxd_pid" && echo "outboxd exited 0"
tail -n 3 "$work/outboxd.log" | sed 's/^/  outboxd| /'
