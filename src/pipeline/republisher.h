// Republisher: after a lost slot (--on-slot-loss=republish), publishes from
// the outbox table every row that may have committed after the last
// acknowledged position, before the new slot streams.
//
// Which rows: those the publisher state (pg/publisher_state.h) cannot prove
// were committed at or before its position:
//   xmin not older than the recorded xmin horizon (no margin needed: every
//   older transaction had committed before the position), OR
//   created_at >= the recorded commit time - margin (covers rows whose xmin
//   was frozen meanwhile; the margin must cover the longest transaction,
//   since created_at is the transaction's start).
// Either being unknown (NULL) takes every row. The query runs after the new
// slot exists, so every row committed before the slot's start is visible
// to it and every later one is streamed: duplicates, never a gap.
//
// Records are built by the streamed events' RecordBuilder
// (pipeline/record_builder.h: value format, CloudEvents, route, the topic
// check, dead-lettering), with header outbox.republished and the position
// (new slot start - 1, rank), in created_at, seq order, table after table
// (the ranks go on from one table to the next). Logical decoding messages
// and rows deleted in their own transaction left nothing to republish.
//
// RepublishProducer is the producing half, unit-tested against FakeSink; it
// returns only once Kafka acknowledged every record (or with the first
// failure). Given a transactional id (the reconciler under
// --delivery=exactly-once), its records are one Kafka transaction,
// committed by Finish (aborted on any failure), and their ids join the
// acknowledged ones only once it committed. Not thread-safe.
#ifndef OUTBOXD_PIPELINE_REPUBLISHER_H_
#define OUTBOXD_PIPELINE_REPUBLISHER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kafka/producer.h"
#include "kafka/topic_catalog.h"
#include "outbox/row_to_event.h"
#include "pg/identifier.h"
#include "pg/publisher_state.h"
#include "pipeline/acknowledged_ids.h"
#include "pipeline/record_builder.h"

namespace outboxd {

struct RepublishOptions {
  std::string conninfo;
  std::vector<QualifiedName> tables;  // republished one after the other
  OutboxColumns columns;
  std::string created_at_column = "created_at";  // required
  std::string seq_column = "seq";                // optional tie-break
  absl::Duration margin = absl::Hours(1);
  RecordOptions records;  // as the streamed events'
  ProducerOptions producer;
  bool fail_on_invalid = false;  // --on-invalid=fail
  int fetch_size = 1000;
  // The stream's acknowledged ids (the reconciler's), which every
  // republished row joins once Kafka acknowledged it; nullptr: none.
  AcknowledgedIds* acknowledged = nullptr;
};

struct RepublishResult {
  uint64_t republished = 0;
  uint64_t dead_lettered = 0;
};

class RepublishProducer {
 public:
  // `records` carries the source's identity (RecordBuilder::SetSource).
  // `stop` must outlive the producer. With producer.transactional_id, the
  // producer is registered (fencing an older one of that id) and a
  // transaction begun.
  static absl::StatusOr<std::unique_ptr<RepublishProducer>> Create(
      const RecordBuilder& records, const ProducerOptions& producer,
      const SinkFactory& sink_factory, bool fail_on_invalid,
      const std::atomic<bool>& stop);
  // A transaction that did not commit is aborted.
  ~RepublishProducer();
  RepublishProducer(const RepublishProducer&) = delete;
  RepublishProducer& operator=(const RepublishProducer&) = delete;

  // One row of the gap, its position set; `republished_after`: the last
  // position acknowledged before the loss.
  absl::Status Add(RowEvent row, Lsn republished_after);
  // One row the reconciler found never acknowledged (pipeline/reconciler.h),
  // its position set; `confirmed`: the position confirmed then (header
  // outbox.reconciled).
  absl::Status AddReconciled(RowEvent row, Lsn confirmed);
  // Each acknowledged row's id joins `ids`.
  void set_acknowledged(AcknowledgedIds* ids) { acknowledged_ = ids; }
  // Prefix of its log lines and errors ("republish", "reconcile").
  void set_context(std::string context) { context_ = std::move(context); }
  // Waits until Kafka acknowledged every record (transactional: and
  // commits them; a failure aborts the transaction).
  absl::StatusOr<RepublishResult> Finish();
  // Records Kafka holds so far (transactional: once committed), also after
  // a failure.
  uint64_t delivered() const {
    return transactional_ && !committed_ ? 0 : acknowledged_count_;
  }

 private:
  RepublishProducer(const RecordBuilder& records, bool fail_on_invalid,
                    const std::atomic<bool>& stop);
  absl::Status AddEvent(OutboxEvent& event);
  absl::Status AddInvalid(InvalidEvent bad);
  // kCancelled when stopped; waits (serving reports) while the topic's
  // state is unknown or the queue is full.
  absl::Status Produce(const KafkaRecord& record, bool& refused);
  absl::Status CheckTopic(const std::string& topic);
  absl::Status Healthy() const;
  absl::Status WaitForReports();
  absl::Status CommitTransaction();
  void AbortOpenTransaction();

  RecordBuilder records_;
  const bool fail_on_invalid_;
  const std::atomic<bool>& stop_;
  std::unique_ptr<Sink> sink_;
  std::unique_ptr<TopicCatalog> catalog_;
  AcknowledgedIds* acknowledged_ = nullptr;
  std::string context_ = "republish";
  // The id hash of the row being added, and of each record produced (by
  // sequence) while acknowledged_ is set.
  std::optional<uint64_t> current_id_;
  std::vector<std::optional<uint64_t>> produced_ids_;
  bool transactional_ = false;
  bool transaction_open_ = false;
  bool committed_ = false;
  // Transactional: ids of acknowledged records, joining acknowledged_ once
  // the transaction committed.
  std::vector<uint64_t> uncommitted_ids_;
  uint64_t produced_ = 0;
  uint64_t acknowledged_count_ = 0;
  absl::Status failure_;  // the first failed delivery
  RepublishResult result_;
};

// Whether a republish could run on `conn`'s database: every table has the
// outbox columns and the created_at column (kFailedPrecondition naming the
// missing one). Checked at start, not when the slot is lost.
absl::Status CheckRepublishable(PgConnection& conn,
                                const RepublishOptions& options);

// `from`: the publisher state before the loss; `new_slot_start`: where the
// new slot streams from; `source`: the stream's identity. kCancelled when
// `stop` became true.
absl::StatusOr<RepublishResult> RepublishLostEvents(
    const RepublishOptions& options, const SinkFactory& sink_factory,
    const std::string& source, const PublisherState& from, Lsn new_slot_start,
    const std::atomic<bool>& stop);

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_REPUBLISHER_H_
