// OutboxdMetrics: the metrics outboxd exports (README "Monitoring"), on
// prometheus-cpp: one metric set on one registry. Stages update them
// through the pointers below.
//
// An OutboxdMetrics always exists: one built on a private registry (the
// default constructor) is never exposed, so its updates go nowhere. That is
// the null object for "metrics off"; callers need no null checks.
//
// A metric is per process or per source (README "Monitoring"). The
// per-process ones are OutboxdMetrics' fields. Each source of the process
// gets a SourceMetrics, once (ForSource(name)): its children of the
// per-source families, labelled source="<name>". The one source of a
// process that has no names (name "") has unlabelled children: /metrics is
// then free of source labels. A process has one unnamed source or named
// ones, never both, so that no family mixes an unlabelled series with
// labelled ones of the same meaning (sum() would count twice). Until a
// source exists its families show their HELP and TYPE lines only.
//
// Threading: updates of a child (Counter, Gauge, Histogram) are atomics
// (Histogram::Observe takes one short mutex) and safe from any thread.
// Looking up a labelled child (PublishedTo, Labels) takes the family's
// mutex and a hash lookup, no allocation once the child exists. ForSource
// and NotReadyReason may be called from any thread; a stage resolves its
// source's SourceMetrics once, not per event.
#ifndef OUTBOXD_METRICS_OUTBOXD_METRICS_H_
#define OUTBOXD_METRICS_OUTBOXD_METRICS_H_

#include <array>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/labels.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"

namespace outboxd::metrics {

using Counter = prometheus::Counter;
using Gauge = prometheus::Gauge;
using Histogram = prometheus::Histogram;

// A prometheus::Registry whose Collect() lists families in registration
// order, children sorted by label values, and a labelled family without
// children yet as its HELP and TYPE lines (prometheus-cpp drops it). So the
// text at /metrics is stable and shows every metric from the start.
class Registry : public prometheus::Registry {
 public:
  Registry() = default;

  // Registers a family (a name registered twice is the same family; a bad
  // name or one of another type throws std::invalid_argument, a
  // programming error that any test finds).
  prometheus::Family<Counter>& AddCounter(const std::string& name,
                                          const std::string& help);
  prometheus::Family<Gauge>& AddGauge(const std::string& name,
                                      const std::string& help);
  prometheus::Family<Histogram>& AddHistogram(const std::string& name,
                                              const std::string& help);

  std::vector<prometheus::MetricFamily> Collect() const override;

  // The Prometheus text exposition (format 0.0.4) of Collect(), by
  // prometheus-cpp's TextSerializer.
  std::string Exposition() const;

 private:
  void Declare(const std::string& name, const std::string& help,
               prometheus::MetricType type);

  mutable absl::Mutex mu_;
  // Every family registered here, in registration order.
  std::vector<prometheus::MetricFamily> heads_ ABSL_GUARDED_BY(mu_);
};

// A labelled counter family with its children cached by label values.
class CounterFamily {
 public:
  // `family` must outlive this object. Every child also carries
  // `constant_labels` (a source's: {source="<name>"}).
  CounterFamily(prometheus::Family<Counter>& family,
                std::vector<std::string> label_names,
                prometheus::Labels constant_labels = {});
  CounterFamily(const CounterFamily&) = delete;
  CounterFamily& operator=(const CounterFamily&) = delete;

  // The child for these label values, one per label name (missing ones are
  // empty, extra ones dropped), created on first use.
  Counter& Labels(const std::vector<std::string>& values);
  // The child of a one-label family for `value`.
  Counter& With(absl::string_view value);

 private:
  prometheus::Family<Counter>& family_;
  const std::vector<std::string> label_names_;
  const prometheus::Labels constant_labels_;
  // A std::mutex, not absl::Mutex: this lock is taken once per delivered
  // event, and Debian's absl::Mutex (deadlock detection on) costs some 350
  // instructions per lock and unlock against some 40.
  std::mutex mu_;
  // Key: the label values joined by '\0'. Guarded by mu_.
  absl::flat_hash_map<std::string, Counter*> children_;
};

// The stages of an event on its way, for outboxd_stage_lsn and
// outboxd_stage_lag_seconds{stage} (README "Lag by stage").
enum class Stage {
  kWal,           // the server's WAL (its reported walEnd); LSN only
  kReceived,      // handed over by the source
  kProduced,      // queued in the producer
  kAcknowledged,  // acknowledged by the broker (a delivery report)
  kConfirmed,     // durable: confirmed to the source (the slot)
};
inline constexpr int kStageCount = 5;
inline constexpr const char* kStageNames[kStageCount] = {
    "wal", "received", "produced", "acknowledged", "confirmed"};

// Why the stream is stalled (outboxd_stalled{reason}): events are pending
// and nothing was acknowledged for --stall-timeout.
enum class StallReason {
  kUnacknowledged,  // produced, and the broker acknowledges nothing
  kQueueFull,       // an event waits for room in the producer's queue
  kTopicMetadata,   // an event waits for its topic's metadata
};
inline constexpr int kStallReasonCount = 3;
inline constexpr const char* kStallReasonNames[kStallReasonCount] = {
    "unacknowledged", "queue_full", "topic_metadata"};

// pg_replication_slots.wal_status (outboxd_slot_wal_status{status}).
inline constexpr int kWalStatusCount = 4;
inline constexpr const char* kWalStatusNames[kWalStatusCount] = {
    "reserved", "extended", "unreserved", "lost"};

// The metrics of one source: its children of the per-source families.
// Made and owned by OutboxdMetrics::ForSource, which outlives it.
class SourceMetrics {
 public:
  SourceMetrics(const SourceMetrics&) = delete;
  SourceMetrics& operator=(const SourceMetrics&) = delete;
  ~SourceMetrics();

  // Its source="<name>" label; "" for the one unnamed source (no label).
  const std::string& name() const { return name_; }

  // outboxd_events_published_total{topic}: acknowledged by the broker.
  CounterFamily* events_published;
  Counter* dead_lettered;   // outboxd_events_dead_lettered_total
  Counter* invalid_events;  // outboxd_invalid_events_total
  // outboxd_reserved_headers_dropped_total: reserved names (id, eventType,
  // outbox.*) in a headers column, dropped from the record.
  Counter* reserved_headers_dropped;
  Gauge* events_in_flight;           // outboxd_events_in_flight
  Gauge* confirmed_lsn;              // outboxd_confirmed_lsn
  Gauge* server_wal_end;             // outboxd_server_wal_end_lsn
  Gauge* slot_lag_bytes;             // outboxd_slot_lag_bytes
  Histogram* commit_to_ack_seconds;  // outboxd_commit_to_ack_seconds
  Counter* reconnects;               // outboxd_reconnects_total
  Gauge* streaming;                  // outboxd_streaming (0/1)
  // 1 when the slot outboxd streamed from is gone, invalidated or replaced
  // (until a republish completes).
  Gauge* slot_lost;             // outboxd_slot_lost
  Counter* republished_events;  // outboxd_republished_events_total
  // outboxd_reconcile_missing_events_total: rows the reconciler found
  // never acknowledged (pipeline/reconciler.h), published late.
  Counter* reconcile_missing;
  // outboxd_source_failed: 1 while a source of several is stopped by a
  // failure of its own (pipeline/publisher.h) and waits to be retried.
  Gauge* source_failed;
  // outboxd_slot_failover_ready: 1 when a promoted standby would have the
  // slot (upkeep/slot_monitor.h), else 0.
  Gauge* slot_failover_ready;
  // outboxd_publication_missing_tables: the --table tables whose inserts
  // the publication does not carry now (upkeep/publication_monitor.h).
  Gauge* publication_missing_tables;
  // outboxd_stage_lsn{stage}: the newest position that reached the stage
  // (CDC only: see DropStageLsn). Children exist from the start.
  std::array<Gauge*, kStageCount> stage_lsn{};
  // outboxd_stage_lag_seconds{stage}: now minus the commit time of the
  // newest event that reached the stage, 0 when the stage holds everything
  // received. No child for kWal (its entry is a gauge nothing exposes).
  std::array<Gauge*, kStageCount> stage_lag_seconds{};
  // outboxd_slot_retained_wal_bytes: pg_current_wal_lsn() - restart_lsn.
  Gauge* slot_retained_wal_bytes;
  // outboxd_slot_wal_status{status}: 1 for the slot's current wal_status.
  std::array<Gauge*, kWalStatusCount> slot_wal_status{};
  // outboxd_stalled{reason}: 1 while the stream is stalled for that reason.
  std::array<Gauge*, kStallReasonCount> stalled{};

  Gauge& StageLsn(Stage s) { return *stage_lsn[static_cast<int>(s)]; }
  Gauge& StageLag(Stage s) { return *stage_lag_seconds[static_cast<int>(s)]; }
  Gauge& Stalled(StallReason r) { return *stalled[static_cast<int>(r)]; }

  // The per-topic child, cached: topics are few.
  Counter& PublishedTo(absl::string_view topic) {
    return events_published->With(topic);
  }

  // --source=poll|notify: their positions are row seqs and batch numbers,
  // not LSNs, so outboxd_stage_lsn has no children of this source (its
  // HELP and TYPE stay); the fields then point at gauges nothing exposes.
  // Call before anything updates them.
  void DropStageLsn();

  // Why this source is stalled, one line; "" when it is not.
  std::string StalledReason() const;

 private:
  friend class OutboxdMetrics;
  // Its children on `registry`, where OutboxdMetrics declared the families.
  SourceMetrics(Registry& registry, std::string name);

  const std::string name_;
  // The counter family behind events_published (with this source's label).
  std::vector<std::unique_ptr<CounterFamily>> families_;
  prometheus::Family<Gauge>* stage_lsn_family_ = nullptr;
  // Where the fields point at when nothing exposes them.
  std::array<Gauge, kStageCount> unexposed_lsn_;
  Gauge unexposed_wal_lag_;
};

class OutboxdMetrics {
 private:
  // Set by the default constructor; declared first so that it exists
  // before the fields below are built on it.
  std::unique_ptr<Registry> own_registry_;

 public:
  // On a private registry that nothing exposes: the null object.
  OutboxdMetrics();
  // On `registry`, which must outlive this object.
  explicit OutboxdMetrics(Registry* registry);
  OutboxdMetrics(const OutboxdMetrics&) = delete;
  OutboxdMetrics& operator=(const OutboxdMetrics&) = delete;
  ~OutboxdMetrics();

  // The metrics of source `name` (source="<name>"; "" for the one unnamed
  // source of a process, unlabelled), created on first use, the same
  // object afterwards, owned by this object.
  SourceMetrics& ForSource(const std::string& name = "");

  Registry* registry;
  // The per-process metrics.
  Counter* delivery_errors;  // outboxd_delivery_errors_total
  // outboxd_source_queries_total{source}: queries of poll/notify sources
  // (its `source` label names the mode, "poll" or "notify").
  CounterFamily* source_queries;
  Gauge* kafka_brokers_up;        // outboxd_kafka_brokers_up
  Counter* kafka_requests;        // outboxd_kafka_requests_total
  Counter* kafka_records_sent;    // outboxd_kafka_records_sent_total
  Counter* cleanup_deleted_rows;  // outboxd_cleanup_deleted_rows_total
  Gauge* start_time_seconds;      // outboxd_start_time_seconds

  // The child of outboxd_source_queries_total ("poll", "notify").
  Counter& QueriedBy(absl::string_view source) {
    return source_queries->With(source);
  }

  // /readyz: a source streams (reads), at least one Kafka broker
  // connection is up, and no source is stalled or failed. Empty when
  // ready, else why not (one line, naming the source when it has a name).
  // A named source that does not stream (a standby, or reconnecting) does
  // not count against the others.
  std::string NotReadyReason() const;
  bool Ready() const { return NotReadyReason().empty(); }

 private:
  OutboxdMetrics(Registry* registry, std::unique_ptr<Registry> own);

  // The counter family behind source_queries.
  std::vector<std::unique_ptr<CounterFamily>> families_;
  mutable absl::Mutex sources_mu_;
  // The sources' metrics, in creation order.
  std::vector<std::unique_ptr<SourceMetrics>> sources_
      ABSL_GUARDED_BY(sources_mu_);
};

}  // namespace outboxd::metrics

#endif  // OUTBOXD_METRICS_OUTBOXD_METRICS_H_
