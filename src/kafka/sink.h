// Sink: the producer surface the Publisher (pipeline/publisher.h) uses, so
// that its rules (backpressure, dead-lettering, acknowledgement, Kafka
// transactions) can be tested against an in-memory fake
// (tests/fakes/fake_sink.h) as well as run against librdkafka
// (kafka/producer.h, KafkaProducer).
//
// Contract of every implementation:
// - The delivery callback is given at creation and called exactly once per
//   record Produce accepted, from inside Poll or Flush on the caller's
//   thread, with OK (acknowledged) or the final error.
// - Produce: OK (queued), kResourceExhausted (the queue is full: Poll and
//   try again: backpressure), anything else: this record can never be
//   produced as it is (e.g. larger than message.max.bytes); it was not
//   queued.
// - Transactional calls return kUnavailable when the call may simply be
//   repeated, kFailedPrecondition when the transaction must be aborted and
//   kAborted when the producer is unusable for good (fenced).
//
// Threading: not thread-safe; one pipeline thread owns a sink.
#ifndef OUTBOXD_KAFKA_SINK_H_
#define OUTBOXD_KAFKA_SINK_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "kafka/topic_catalog.h"
#include "outbox/router.h"

namespace outboxd {

// One committed offset of a consumer group, with its metadata string.
struct CommittedOffset {
  std::string topic;
  int32_t partition = 0;
  int64_t offset = -1;
  std::string metadata;
};

// Called once per record: OK when the broker acknowledged it, otherwise the
// error as a Status (retries are exhausted by then).
using DeliveryCallback = std::function<void(uint64_t sequence, absl::Status)>;

// A delivery error for a record the broker refuses for a reason that will
// not change (larger than the topic's max.message.bytes, not authorized,
// an invalid record): the status carries this payload. Such a record may
// have failed only because a neighbour in the same broker batch was
// refused (the broker refuses a batch whole).
inline constexpr absl::string_view kPermanentRefusalPayload =
    "outboxd/kafka/permanent-refusal";
inline absl::Status MarkPermanentRefusal(absl::Status status) {
  if (!status.ok()) status.SetPayload(kPermanentRefusalPayload, absl::Cord());
  return status;
}
inline bool IsPermanentRefusal(const absl::Status& status) {
  return !status.ok() &&
         status.GetPayload(kPermanentRefusalPayload).has_value();
}

class Sink {
 public:
  virtual ~Sink() = default;

  // Enqueues a copy of `record`; its delivery report carries `sequence`.
  virtual absl::Status Produce(const KafkaRecord& record,
                               uint64_t sequence) = 0;
  // Serves delivery reports and errors, waiting at most `timeout`.
  virtual void Poll(absl::Duration timeout) = 0;
  // A file descriptor that becomes readable when Poll has something to
  // serve (a delivery report, an error), so that the Publisher sleeps in
  // one poll() instead of polling on a timer; Poll itself drains it (before
  // serving, so that nothing arriving meanwhile is missed). -1: none (the
  // caller polls on a timer while records are in flight).
  virtual int EventFd() const { return -1; }
  // Waits until every queued record is reported, at most `timeout`;
  // kDeadlineExceeded with the count left otherwise.
  virtual absl::Status Flush(absl::Duration timeout) = 0;
  // Records queued or in flight, not yet reported.
  virtual int OutQueueLength() const = 0;
  // Non-OK once the producer failed for good: stop without confirming past
  // unacknowledged events.
  virtual absl::Status fatal_error() const = 0;
  // What the brokers say about `topic`; an error when no answer came.
  virtual absl::StatusOr<TopicState> LookupTopic(const std::string& topic,
                                                 absl::Duration timeout) = 0;
  // The cluster id the brokers report; kUnavailable when none answered.
  virtual absl::StatusOr<std::string> ClusterId(absl::Duration timeout) = 0;

  // --- transactions (--delivery=exactly-once) -----------------------------
  virtual absl::Status InitTransactions(absl::Duration timeout) = 0;
  virtual absl::Status BeginTransaction() = 0;
  // Commits `offset` with `metadata` for (`topic`, `partition`) in consumer
  // group `group` as part of the open transaction.
  virtual absl::Status SendCheckpoint(const std::string& group,
                                      const std::string& topic,
                                      int32_t partition, int64_t offset,
                                      const std::string& metadata,
                                      absl::Duration timeout) = 0;
  virtual absl::Status CommitTransaction(absl::Duration timeout) = 0;
  // Purges what is queued and aborts the open transaction.
  virtual absl::Status AbortTransaction(absl::Duration timeout) = 0;
  // The offsets `group` committed (stable only); kUnavailable when the
  // cluster did not answer.
  virtual absl::StatusOr<std::vector<CommittedOffset>> ReadCheckpoints(
      const std::string& group, absl::Duration timeout) = 0;
};

}  // namespace outboxd

#endif  // OUTBOXD_KAFKA_SINK_H_
