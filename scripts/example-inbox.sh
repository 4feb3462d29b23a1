#!/usr/bin/env bash
# The example of docs/consuming.md ("Example: orders and shipping"), in one command:
#
#   orders service   -- writes orders and their outbox rows in one transaction
#   outboxd          -- publishes the outbox rows to Kafka (the dev broker)
#   shipping service -- outbox-inbox applies each OrderPlaced event exactly
#                       once: one shipment row per order, in its own database
#
# It also publishes one event twice (as a publisher restart would) and shows
# that the inbox applied it once. Everything runs against a throwaway
# PostgreSQL 15 and the dev broker, and is removed at the end.
#
#   EXAMPLE_ORDERS=30 scripts/example-inbox.sh
#   OUTBOXD_BUILD=build-mine scripts/example-inbox.sh   # use an existing build
set -euo pipefail
cd "$(dirname "$0")/.."
orders=${EXAMPLE_ORDERS:-20}
build=${OUTBOXD_BUILD:-build}
if [[ $build == build ]]; then
  scripts/build.sh outboxd outbox-devbroker outbox-inbox >&2
fi

source scripts/lib/local-stack.sh
start_postgres inbox-example

say "PostgreSQL 15 on 127.0.0.1:$port: database orders (outbox) and shipping (inbox)"
base=$pg_base
psql -q -X "$base dbname=postgres" -c "CREATE DATABASE orders" -c "CREATE DATABASE shipping"
orders_db="$base dbname=orders"
shipping_db="$base dbname=shipping"
psql -q -X "$orders_db" -v ON_ERROR_STOP=1 -f sql/outbox.sql
psql -q -X "$orders_db" -v ON_ERROR_STOP=1 -c \
  "CREATE TABLE orders (id bigint PRIMARY KEY, customer text, total numeric)"
psql -q -X "$shipping_db" -v ON_ERROR_STOP=1 -c \
  "CREATE TABLE shipments (order_id bigint, customer text, event_id uuid,
                           created_at timestamptz DEFAULT now())"

say "dev broker"
start_devbroker "$build/outbox-devbroker" --brokers=3 --partitions=4
# A metadata request creates the topic on the dev broker (4 partitions).
kcat -L -b "$brokers" -t outbox.event.order >/dev/null 2>&1 || true

say "outboxd: orders.outbox -> Kafka topic outbox.event.order"
"$build/outboxd" --pg="$orders_db" --brokers="$brokers" --metrics-address= \
  2>"$work/outboxd.log" &
pids+=($!)
wait_for "$work/outboxd.log" "streaming from slot" $!

say "shipping service: outbox-inbox --group=shipping (applies each event once)"
"$build/outbox-inbox" --pg="$shipping_db" --brokers="$brokers" \
  --group=shipping --topics=outbox.event.order \
  --handler-sql="INSERT INTO shipments (order_id, customer, event_id)
                 SELECT (\$2::jsonb->>'orderId')::bigint, \$2::jsonb->>'customer', \$7::uuid
                 WHERE \$3::jsonb->>'eventType' = 'OrderPlaced'" \
  2>"$work/inbox.log" &
inbox_pid=$!
pids+=($inbox_pid)
wait_for "$work/inbox.log" "assigned" $inbox_pid

say "orders service: $orders orders, each with its outbox event in one transaction"
for i in $(seq 1 "$orders"); do
  psql -q -X "$orders_db" -v ON_ERROR_STOP=1 >/dev/null <<SQL
BEGIN;
INSERT INTO orders VALUES ($i, 'customer-$(( i % 5 ))', $i * 10);
SELECT outbox_emit('order', '$i', 'OrderPlaced',
  jsonb_build_object('orderId', $i, 'customer', 'customer-$(( i % 5 ))', 'total', $i * 10));
COMMIT;
SQL
done
say "the same event published twice (what a publisher restart can do)"
dup='{"id": "7d9f2b1e-5c4a-4e1b-9a3d-2f6c8b0e1a99", "aggregatetype": "order",
      "aggregateid": "1000", "type": "OrderPlaced",
      "payload": {"orderId": 1000, "customer": "customer-dup", "total": 1}}'
for _ in 1 2; do
  psql -q -X "$orders_db" -v ON_ERROR_STOP=1 -c \
    "SELECT pg_logical_emit_message(true, 'outbox', '$dup')" >/dev/null
done

expected=$(( orders + 1 ))
for _ in $(seq 200); do
  n=$(psql -At -X "$shipping_db" -c "SELECT count(*) FROM shipments")
  [[ $n -ge $expected ]] && break
  sleep 0.1
done
sleep 1
say "shipping.shipments ($expected expected: $orders orders + the duplicated one once)"
psql -X "$shipping_db" -c "SELECT count(*) AS shipments, count(DISTINCT event_id) AS distinct_events,
                                  count(*) FILTER (WHERE customer = 'customer-dup') AS duplicated_event_applied
                           FROM shipments"
psql -X "$shipping_db" -c "SELECT order_id, customer, event_id FROM shipments ORDER BY order_id LIMIT 5"
say "the inbox's bookkeeping (same transactions as the shipments)"
psql -X "$shipping_db" -c "SELECT consumer_group, status, count(*) FROM inbox_processed GROUP BY 1, 2"
psql -X "$shipping_db" -c "SELECT * FROM inbox_offsets ORDER BY kafka_partition"
psql -X "$shipping_db" -c "SELECT consumer_group, source, lsn, event_index FROM inbox_sources"
grep -h "duplicate event" "$work/inbox.log" | sed 's/^/  inbox| /'

say "stopping (SIGTERM: the inbox commits its Kafka offsets and leaves the group)"
kill -TERM "$inbox_pid"
wait "$inbox_pid" && echo "outbox-inbox exited 0"
n=$(psql -At -X "$shipping_db" -c "SELECT count(*) = $expected AND count(DISTINCT event_id) = $expected FROM shipments")
[[ $n == t ]] || { echo "FAILED: shipments do not match"; exit 1; }
echo "OK: every event applied exactly once"
