// TransactionBatch: which events the open Kafka transaction holds and when
// it is due for commit (--delivery=exactly-once, README "Reliability").
//
// A Kafka transaction spans whole PostgreSQL transactions: it is committed
// at a PostgreSQL commit boundary once it is `interval` old or holds
// `max_events`. A PostgreSQL transaction larger than `split_events` is the
// exception: the Kafka transaction is committed in its middle, so that no
// Kafka transaction grows without bound (transaction.timeout.ms). That is
// safe because the checkpoint is an event position, not a commit LSN.
//
// Its events count as acknowledged only once the transaction committed
// (TakeCommitted); the checkpoint committed with it is the position of its
// last event: every event of this source up to that position is then in
// Kafka.
//
// Pure bookkeeping, no I/O; not thread-safe (the pipeline thread owns it).
#ifndef OUTBOXD_PIPELINE_TRANSACTION_BATCH_H_
#define OUTBOXD_PIPELINE_TRANSACTION_BATCH_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "outbox/event.h"

namespace outboxd {

struct TransactionBatchOptions {
  absl::Duration interval = absl::Milliseconds(100);
  size_t max_events = 10000;
  size_t split_events = 100000;
};

class TransactionBatch {
 public:
  explicit TransactionBatch(TransactionBatchOptions options)
      : options_(options) {}

  // True when the next produced record needs a Begin first.
  bool open() const { return open_; }
  // A Kafka transaction began at `now`.
  void Began(absl::Time now);
  // The record of event `sequence` at `position` (its transaction committed
  // at `commit_time_unix_ms`), going to `topic`, was enqueued in the open
  // transaction. Positions come in stream order.
  void Produced(uint64_t sequence, const EventPosition& position,
                int64_t commit_time_unix_ms, const std::string& topic);

  // Whether to commit now. `at_boundary`: no PostgreSQL transaction is half
  // read (its Commit seen, nothing of the next one produced yet).
  bool CommitDue(absl::Time now, bool at_boundary) const;
  // When CommitDue may next become true by age (InfiniteFuture when empty).
  absl::Time Deadline() const;

  size_t size() const { return sequences_.size(); }
  // The checkpoint to commit with the transaction, and the topic of its
  // first record (whose partition 0 carries it). Only when size() > 0.
  const EventPosition& last_position() const { return last_position_; }
  int64_t last_commit_time_unix_ms() const { return last_commit_time_ms_; }
  const std::string& first_topic() const { return first_topic_; }

  // The transaction committed: its events, now acknowledged. Resets.
  std::vector<uint64_t> TakeCommitted();
  // The transaction was aborted: forgets it. Its events are not in Kafka.
  void Aborted();

 private:
  TransactionBatchOptions options_;
  bool open_ = false;
  absl::Time began_;
  std::vector<uint64_t> sequences_;
  EventPosition last_position_;
  int64_t last_commit_time_ms_ = 0;
  std::string first_topic_;
};

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_TRANSACTION_BATCH_H_
