#include "metrics/outboxd_metrics.h"

#include "absl/time/clock.h"

namespace outboxd::metrics {

OutboxdMetrics::OutboxdMetrics(Registry* r) : registry(r) {
  events_published = &r->AddCounter(
      "outboxd_events_published_total",
      "Events acknowledged by the Kafka broker, by topic", {"topic"});
  delivery_errors = &r->AddCounter(
      "outboxd_delivery_errors_total",
      "Delivery reports with an error (the pipeline stops on them)").Get();
  dead_lettered = &r->AddCounter(
      "outboxd_events_dead_lettered_total",
      "Invalid events produced to the dead-letter topic").Get();
  invalid_events = &r->AddCounter(
      "outboxd_invalid_events_total",
      "Rows or messages that could not become an event").Get();
  reserved_headers_dropped =
      &r->AddCounter("outboxd_reserved_headers_dropped_total",
                     "Reserved header names (id, eventType, outbox.*) in a "
                     "headers column, "
                     "dropped from the record")
           .Get();
  events_in_flight = &r->AddGauge(
      "outboxd_events_in_flight",
      "Events handed to the producer and not yet acknowledged").Get();
  confirmed_lsn = &r->AddGauge(
      "outboxd_confirmed_lsn",
      "Flush position last confirmed to PostgreSQL, as a byte position").Get();
  server_wal_end = &r->AddGauge(
      "outboxd_server_wal_end_lsn",
      "Newest WAL position the server reported (XLogData/keepalive walEnd)")
      .Get();
  slot_lag_bytes = &r->AddGauge(
      "outboxd_slot_lag_bytes",
      "Server WAL end minus confirmed position: WAL the slot retains because "
      "of outboxd").Get();
  commit_to_ack_seconds = &r->AddHistogram(
      "outboxd_commit_to_ack_seconds",
      "Time from an event's commit in PostgreSQL to its acknowledgement by "
      "Kafka",
      {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
       10, 30, 60}).Get();
  reconnects = &r->AddCounter(
      "outboxd_reconnects_total",
      "Reconnections to PostgreSQL after a lost connection").Get();
  source_queries = &r->AddCounter(
      "outboxd_source_queries_total",
      "Queries issued by the polling or notify publisher", {"source"});
  streaming = &r->AddGauge(
      "outboxd_streaming",
      "1 while the source is streaming (replication started or poller "
      "running), else 0").Get();
  kafka_brokers_up = &r->AddGauge(
      "outboxd_kafka_brokers_up",
      "Kafka broker connections in state UP (librdkafka statistics)").Get();
  cleanup_deleted_rows = &r->AddCounter(
      "outboxd_cleanup_deleted_rows_total",
      "Outbox rows deleted by --cleanup-after").Get();
  start_time_seconds = &r->AddGauge(
      "outboxd_start_time_seconds",
      "Start time of the process since the Unix epoch").Get();
  start_time_seconds->Set(absl::ToUnixMillis(absl::Now()) / 1000.0);
  slot_lost = &r->AddGauge("outboxd_slot_lost",
                           "1 when the replication slot outboxd streamed from "
                           "is gone, invalidated "
                           "or re-created (events may be missing), until a "
                           "republish completes")
                   .Get();
  republished_events = &r->AddCounter("outboxd_republished_events_total",
                                      "Outbox rows republished after a lost "
                                      "slot (--on-slot-loss=republish)")
                            .Get();
}

}  // namespace outboxd::metrics
