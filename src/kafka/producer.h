// KafkaProducer: a librdkafka producer (idempotent, acks=all,
// murmur2_random partitioner) whose delivery reports carry the caller's
// event sequence number in the per-message opaque. With a transactional id
// it is a transactional producer (--delivery=exactly-once): records are
// produced inside Kafka transactions, and a transaction may carry a
// checkpoint (an offset with a metadata string committed for a consumer
// group in the same transaction, read back with ReadCheckpoints).
//
// Transactional calls return: kUnavailable when the call may simply be
// repeated (timed out, coordinator moving); kFailedPrecondition when the
// transaction must be aborted; kAborted when the producer is unusable for
// good (fenced by a newer instance with the same transactional id, or
// another fatal error).
//
// Threading: not thread-safe. Produce, Poll and Flush are called from the
// pipeline thread; delivery callbacks run inside Poll/Flush on that thread,
// exactly once per successfully produced message.
#ifndef OUTBOXD_KAFKA_PRODUCER_H_
#define OUTBOXD_KAFKA_PRODUCER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kafka/producer_stats.h"
#include "kafka/sink.h"
#include "kafka/topic_catalog.h"
#include "outbox/router.h"

namespace outboxd {

struct ProducerOptions {
  std::string brokers;
  // Applied after outboxd's defaults, so users can override them
  // (--kafka-property / --kafka-config). Keys are librdkafka property names.
  std::vector<std::pair<std::string, std::string>> properties;
  // When set, librdkafka statistics are enabled (statistics.interval.ms,
  // default 1000 unless overridden) and this is called from Poll() with
  // each document's figures: the broker connections in state UP (for
  // /readyz), the produce requests and records sent (for metrics).
  std::function<void(const ProducerStats&)> on_stats;
  // Non-empty: a transactional producer with this transactional.id.
  std::string transactional_id;
};

// Makes a sink; `on_delivery` must be called once per produced record. The
// publishing code takes one, so that its rules run against a fake in tests
// (tests/fakes/fake_sink.h).
using SinkFactory = std::function<absl::StatusOr<std::unique_ptr<Sink>>(
    const ProducerOptions& options, DeliveryCallback on_delivery)>;

// CommittedOffset and DeliveryCallback: kafka/sink.h.
class KafkaProducer : public Sink {
 public:
  // kInvalidArgument for an unknown or malformed property.
  static absl::StatusOr<std::unique_ptr<KafkaProducer>> Create(
      const ProducerOptions& options, DeliveryCallback on_delivery);
  ~KafkaProducer() override;
  KafkaProducer(const KafkaProducer&) = delete;
  KafkaProducer& operator=(const KafkaProducer&) = delete;

  // Enqueues a copy of `record`. kResourceExhausted when librdkafka's queue
  // is full: that is backpressure, Poll() and try again. Other errors (e.g.
  // message too large) are returned as they are and the message is not
  // queued.
  absl::Status Produce(const KafkaRecord& record, uint64_t sequence) override;

  // Serves delivery reports and errors, waiting at most `timeout`.
  void Poll(absl::Duration timeout) override;
  // Readable once librdkafka's main queue (delivery reports, errors:
  // what rd_kafka_poll serves) goes from empty to non-empty
  // (rd_kafka_queue_io_event_enable); Poll drains it.
  int EventFd() const override;

  // Serves delivery reports (as Poll does) until every queued message is
  // delivered or failed, at most `timeout`; kDeadlineExceeded with the count
  // left otherwise. The exactly-once commit uses it so that a transaction's
  // records reach the broker before its checkpoint offset is sent.
  absl::Status Flush(absl::Duration timeout) override;

  // What the broker's metadata says about `topic`, asked through this
  // producer's connections: a broker that auto-creates topics creates it
  // now (unless allow.auto.create.topics=false), as a produce would. An
  // error status when no answer came within `timeout`.
  absl::StatusOr<TopicState> LookupTopic(const std::string& topic,
                                         absl::Duration timeout) override;

  // Messages queued or in flight, not yet reported.
  int OutQueueLength() const override;

  // Non-OK once librdkafka raised a fatal error (e.g. idempotence broken):
  // the pipeline must stop without confirming past unacknowledged events.
  absl::Status fatal_error() const override;

  // The cluster id the brokers report; kUnavailable when none answered.
  absl::StatusOr<std::string> ClusterId(absl::Duration timeout) override;

  // --- transactions (only with ProducerOptions::transactional_id) ---------
  // Registers the transactional id with its coordinator: fences every older
  // producer with the same id and completes (aborts) its open transaction.
  absl::Status InitTransactions(absl::Duration timeout) override;
  absl::Status BeginTransaction() override;
  // Commits `offset` with `metadata` for (`topic`, `partition`) in consumer
  // group `group`, as part of the open transaction.
  absl::Status SendCheckpoint(const std::string& group,
                              const std::string& topic, int32_t partition,
                              int64_t offset, const std::string& metadata,
                              absl::Duration timeout) override;
  // Flushes the transaction's records and commits it. On kUnavailable the
  // outcome is not known yet: call again.
  absl::Status CommitTransaction(absl::Duration timeout) override;
  // Purges what is queued and aborts the open transaction.
  absl::Status AbortTransaction(absl::Duration timeout) override;
  // ReadCheckpoints (below) with this producer's options.
  absl::StatusOr<std::vector<CommittedOffset>> ReadCheckpoints(
      const std::string& group, absl::Duration timeout) override;

 private:
  struct Impl;
  KafkaProducer(std::unique_ptr<Impl> impl, ProducerOptions options);
  std::unique_ptr<Impl> impl_;
  const ProducerOptions options_;
  friend absl::StatusOr<std::vector<CommittedOffset>> ReadCheckpoints(
      const ProducerOptions&, const std::string&, absl::Duration);
};

// The offsets `group` committed on partition 0 of every topic of the
// cluster (where --delivery=exactly-once commits its checkpoints), read
// with a short-lived consumer of that group that never joins it (stable
// offsets only: a pending transactional commit is waited out).
// kUnavailable when the cluster or the group coordinator did not answer.
absl::StatusOr<std::vector<CommittedOffset>> ReadCheckpoints(
    const ProducerOptions& options, const std::string& group,
    absl::Duration timeout);

// A SinkFactory of KafkaProducers (librdkafka).
SinkFactory KafkaSinkFactory();

}  // namespace outboxd

#endif  // OUTBOXD_KAFKA_PRODUCER_H_
