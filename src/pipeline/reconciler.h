// Reconciler: the safety net for the loss paths nobody has named (the
// seed's "periodically check the event table and publish what was
// missed"). On a thread of its own, one per stream (database), every
// --reconcile-interval it looks at the rows of each outbox table that
// began after it started, are older than --reconcile-margin, and provably
// committed before the position outboxd confirmed; each such row whose id
// outboxd never acknowledged (pipeline/acknowledged_ids.h) is missing:
// counted (outboxd_reconcile_missing_events_total), logged (one error line
// per finding: the window, the count, the first id) and published late,
// with header outbox.reconciled, through the RecordBuilder of the stream's
// events (value format, CloudEvents, route, topic check, dead-letter
// topic). It confirms nothing: the slot never moves for it. Under
// --delivery=exactly-once the late records of a pass are one Kafka
// transaction of the reconciler's own transactional id (the stream's +
// "-reconcile": a producer is not shared across threads, and a pass must
// not wait for, or split, the stream's transaction). A pass whose
// publishing fails leaves its window where it was: the rows are found
// again, and published, by the next pass.
//
// The rule (docs/ARCHITECTURE.md, "The reconciler"): a row is judged only
// when
//   - its transaction began at or after where judging began (created_at,
//     the transaction's start, >= the floor): an earlier process's progress
//     kept in outbox.publisher_state.reconciled_before, else this
//     reconciler's start (server clock, once the stream streamed). A row
//     from after the start has every acknowledgement in this process's
//     AcknowledgedIds; one from before, not in them, may have been
//     published by the earlier process: Kafka is asked (kafka/read_back.h,
//     its routed topics and the dead-letter topic from the row's
//     created_at on; a topic it may not read, a compacted one or one
//     whose retention took records of the time: left to the slot, with a
//     warning);
//   - its xmin precedes the xmin horizon of the publisher state row
//     (pg/publisher_state.h): its transaction committed before the WAL
//     position of a sample taken at or before last_ack_lsn, which Kafka
//     acknowledged (so did every event before it);
//   - created_at < now - margin.
// A row deleted in its own transaction or rolled back is not visible; a
// long transaction is not visible before its commit, and after it is not
// judged before the horizon passes it; a republished row joined the ids
// when Kafka acknowledged it; a backlog holds the horizon back. Rows that
// are no valid event (RowToEvent) were dead-lettered without an id: they
// are not judged.
//
// The window: [lo, now - margin) on created_at (an index on created_at,
// sql/outbox.sql outbox_created_at). A visible row not judged yet (its xmin
// not below the horizon) holds lo back; lo otherwise trails the window's
// end by one margin, so that a transaction open for up to one margin past
// its created_at is judged once it committed. A transaction open longer
// is left to the slot (no false loss, no finding). Of the part of the
// window the previous pass judged whole, only rows whose xmin is not
// before that pass's horizon are fetched again: the others were visible
// to it (their transaction ended before the horizon was sampled) and
// judged then. The acknowledged ids older than lo (less a minute for the
// clocks) are dropped.
//
// judged_before(): every row created before it was judged or is out of
// the reconciler's scope (the cleaner deletes nothing newer).
//
// Threading: Start() and the destructor from one thread; the work runs on
// the reconciler's thread.
#ifndef OUTBOXD_PIPELINE_RECONCILER_H_
#define OUTBOXD_PIPELINE_RECONCILER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/lsn.h"
#include "kafka/producer.h"
#include "kafka/read_back.h"
#include "metrics/outboxd_metrics.h"
#include "outbox/event.h"
#include "outbox/row_to_event.h"
#include "pg/connection.h"
#include "pg/identifier.h"
#include "pipeline/acknowledged_ids.h"
#include "pipeline/record_builder.h"

namespace outboxd {

struct ReconcilerOptions {
  std::string conninfo;
  std::vector<QualifiedName> tables;
  OutboxColumns columns;
  std::string created_at_column = "created_at";
  std::string slot;  // its publisher state row
  // Prefix of its log lines ("[name] ") with several sources; "" with one.
  std::string name;
  absl::Duration interval = absl::Seconds(30);
  absl::Duration margin = absl::Minutes(1);
  // --reconcile-batch: the rows a pass fetches at most (its memory, some
  // 100 bytes a row); a window with more is judged over several passes,
  // which then follow at once.
  int max_rows_per_pass = 100000;
  RecordOptions records;  // as the streamed events'
  ProducerOptions producer;
  // --delivery=exactly-once: late records go into Kafka transactions of the
  // id TransactionalIdFor(transactional_id, source) + "-reconcile".
  bool transactional = false;
  std::string transactional_id;  // --transactional-id
  SinkFactory sink_factory = KafkaSinkFactory();
  bool fail_on_invalid = false;
  // The stream's; must outlive the reconciler.
  AcknowledgedIds* acknowledged = nullptr;
  // outboxd_reconcile_missing_events_total of the stream; may be null.
  metrics::Counter* missing = nullptr;
  // Which ids Kafka holds (kafka/read_back.h); a fake in tests.
  std::function<absl::StatusOr<absl::flat_hash_set<std::string>>(
      const ReadBackRequest&)>
      read_back = FindIdsInKafka;
};

class Reconciler {
 public:
  static std::unique_ptr<Reconciler> Start(ReconcilerOptions options);
  ~Reconciler();  // stops and joins
  Reconciler(const Reconciler&) = delete;
  Reconciler& operator=(const Reconciler&) = delete;

  // Rows found missing so far.
  uint64_t missing() const { return missing_.load(); }
  // Server time (unix us): rows created before it are judged or out of
  // scope. INT64_MIN before the first pass.
  int64_t judged_before_unix_us() const { return judged_before_.load(); }

 private:
  explicit Reconciler(ReconcilerOptions options);
  void Run();
  absl::Status Pass();
  absl::Status PublishLate(const std::string& source, Lsn confirmed,
                           std::vector<OutboxEvent> events,
                           uint64_t& delivered);
  // Table `t`'s window up to `hi` was judged whole with `horizon`.
  void Judged(size_t t, int64_t hi, const std::string& horizon);
  // Of `events` (not acknowledged by this process), those Kafka does not
  // hold: an event created before this process started may have been
  // published by an earlier one (Kafka is asked); a later one cannot.
  absl::StatusOr<std::vector<OutboxEvent>> LeaveThoseInKafka(
      const std::string& source, std::vector<OutboxEvent> events);
  // The topics `events` go to, and the dead-letter topic.
  std::vector<std::string> TopicsOf(
      const std::string& source, const std::vector<OutboxEvent>& events) const;
  // Keeps how far the table was judged in the publisher state row.
  void RecordJudged(PgConnection& conn, int64_t judged);

  const ReconcilerOptions options_;
  absl::Notification stop_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> missing_{0};
  std::atomic<int64_t> judged_before_{INT64_MIN};
  std::vector<int64_t> lo_;  // per table, server unix us
  std::vector<bool> off_;    // per table: no created_at column
  int64_t start_us_ = 0;     // 0: not started
  // Where judging began: an earlier process's reconciled_before, or the
  // start.
  int64_t floor_us_ = 0;
  int64_t recorded_before_ = 0;  // last reconciled_before written
  bool record_judged_ = true;    // false once writing it failed
  // The last pass left rows of its window to the next
  // (max_rows_per_pass): no wait before it.
  bool behind_ = false;
  uint32_t rank_ = 0;  // positions of reconciled records
  // Per table, the last pass that judged its window whole: the window's
  // end (0: none) and the horizon it judged with.
  std::vector<int64_t> judged_hi_;
  std::vector<std::string> judged_horizon_;
  std::thread thread_;
};

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_RECONCILER_H_
