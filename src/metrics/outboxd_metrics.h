// OutboxdMetrics: the metrics outboxd exports (README "Monitoring"), created
// in one Registry. Stages update them through the pointers below; any
// pointer to an OutboxdMetrics may be null (metrics off), so callers check.
//
// Threading: as Registry (updates are atomics; safe from any thread).
#ifndef OUTBOXD_METRICS_OUTBOXD_METRICS_H_
#define OUTBOXD_METRICS_OUTBOXD_METRICS_H_

#include <atomic>
#include <string>

#include "absl/strings/string_view.h"
#include "metrics/registry.h"

namespace outboxd::metrics {

struct OutboxdMetrics {
  explicit OutboxdMetrics(Registry* registry);

  Registry* registry;
  // outboxd_events_published_total{topic}: acknowledged by the broker.
  Family<Counter>* events_published;
  Counter* delivery_errors;         // outboxd_delivery_errors_total
  Counter* dead_lettered;           // outboxd_events_dead_lettered_total
  Counter* invalid_events;          // outboxd_invalid_events_total
  // outboxd_reserved_headers_dropped_total: reserved names (id, eventType,
  // outbox.*) in a headers column, dropped from the record.
  Counter* reserved_headers_dropped;
  Gauge* events_in_flight;          // outboxd_events_in_flight
  Gauge* confirmed_lsn;             // outboxd_confirmed_lsn
  Gauge* server_wal_end;            // outboxd_server_wal_end_lsn
  Gauge* slot_lag_bytes;            // outboxd_slot_lag_bytes
  Histogram* commit_to_ack_seconds; // outboxd_commit_to_ack_seconds
  Counter* reconnects;              // outboxd_reconnects_total
  // outboxd_source_queries_total{source}: queries of poll/notify sources.
  Family<Counter>* source_queries;
  Gauge* streaming;                 // outboxd_streaming (0/1)
  Gauge* kafka_brokers_up;          // outboxd_kafka_brokers_up
  Counter* cleanup_deleted_rows;    // outboxd_cleanup_deleted_rows_total
  Gauge* start_time_seconds;        // outboxd_start_time_seconds
  // 1 when the slot outboxd streamed from is gone, invalidated or replaced
  // (until a republish completes).
  Gauge* slot_lost;             // outboxd_slot_lost
  Counter* republished_events;  // outboxd_republished_events_total

  // The per-topic child, cached: topics are few.
  Counter& PublishedTo(const std::string& topic) {
    return events_published->Labels({topic});
  }

  // /readyz: streaming (the source runs and reads) and at least one Kafka
  // broker connection up.
  bool Ready() const {
    return streaming->Value() > 0 && kafka_brokers_up->Value() > 0;
  }
};

}  // namespace outboxd::metrics

#endif  // OUTBOXD_METRICS_OUTBOXD_METRICS_H_
