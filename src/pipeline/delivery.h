// Delivery: how a record the Publisher produced becomes acknowledged, the
// one thing --delivery changes in the Publisher's loop.
//
//   at-least-once  (NewAtLeastOnceDelivery): a record is acknowledged by
//                  its own delivery report; a failed report fails its
//                  event (the source is never confirmed past it).
//   exactly-once   (NewTransactionalDelivery): records go into Kafka
//                  transactions, each committed with a checkpoint (the
//                  position of its last event) at a source-transaction
//                  boundary (pipeline/transaction_batch.h); its events are
//                  acknowledged when it commits. Events at or below the
//                  checkpoint are in Kafka already and are skipped; a
//                  failed delivery or commit aborts the transaction and
//                  its events are resent (a few times in a row at most),
//                  a fenced producer or a record refused for good stops
//                  the run.
//
// The Publisher owns the sink and the trackers; a Delivery tells it what is
// acknowledged through DeliveryHost, so that each rule is a unit test
// against FakeSink (tests/fakes/fake_sink.h).
//
// Threading: the Publisher's thread calls every method.
#ifndef OUTBOXD_PIPELINE_DELIVERY_H_
#define OUTBOXD_PIPELINE_DELIVERY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "kafka/producer.h"
#include "kafka/sink.h"
#include "outbox/event.h"
#include "pipeline/publisher_options.h"
#include "pipeline/transaction_batch.h"

namespace outboxd {

// An event as a Delivery sees it: its place in the source's stream and
// when its source transaction committed (0: unknown).
struct EventAt {
  EventPosition position;
  int64_t commit_time_unix_ms = 0;
};

// What a Delivery needs from the Publisher.
class DeliveryHost {
 public:
  virtual ~DeliveryHost() = default;
  // The event of `sequence` (as given to Produced) is in Kafka.
  virtual void Acknowledge(uint64_t sequence) = 0;
  // Its delivery failed for good: never confirmed past it.
  virtual void Fail(uint64_t sequence, absl::Status cause) = 0;
  // The sources' keep-alive work while a blocking call waits (CDC: the
  // standby status update). A lost connection is not the caller's problem.
  virtual absl::Status KeepSourcesAlive() = 0;
};

// --delivery=exactly-once.
struct TransactionalOptions {
  // The transactional id (and checkpoint group); empty: "outboxd-" + the
  // source identity ('/' as '-').
  std::string transactional_id;
  TransactionBatchOptions batch;
};

// The transactional id of a source: `configured` (--transactional-id), or
// "outboxd-" + `identity` with '/' as '-'.
std::string TransactionalIdFor(const std::string& configured,
                               const std::string& identity);

class Delivery {
 public:
  virtual ~Delivery() = default;

  // OK when this mode can publish `sources` sources in one process.
  virtual absl::Status CheckSources(size_t sources) const = 0;
  // True when the sink can only be made once the first source connected
  // (its identity names the transactional id).
  virtual bool SinkNeedsIdentity() const = 0;
  // The producer options of this mode for a source of `identity`.
  virtual ProducerOptions Producer(const ProducerOptions& base,
                                   const std::string& identity) = 0;
  // The sink was made (with Producer's options). It must outlive this.
  virtual void Attach(Sink& sink) = 0;
  // A source of `identity` connected, its positions in `history`
  // (ConnectResult::history): get ready to produce (exactly-once, once: the
  // broker supports transactions, the producer is registered, fencing older
  // instances, and the checkpoint of this history is read and judged by
  // `check_checkpoint`; on a reconnect in another history, the checkpoint
  // is forgotten).
  virtual absl::Status Ready(
      const std::string& identity, const std::string& history,
      const std::function<absl::Status(const EventPosition&)>&
          check_checkpoint) = 0;
  // The source started over at a new position (ConnectResult::restart_at:
  // a new slot, another history): what was remembered of its old positions
  // (exactly-once: the checkpoint) must not be used to skip its events.
  virtual void SourceRestarted() = 0;

  // True when `event` is provably in Kafka already (resent after a restart
  // or reconnect): it is skipped (and counted here), and counts as
  // acknowledged. Nothing else is ever skipped.
  virtual bool Skips(const EventAt& event) = 0;
  // Before each Produce (exactly-once: a transaction is open).
  virtual absl::Status BeforeProduce() = 0;
  // A record of `event` was queued for `topic`.
  virtual void Produced(uint64_t sequence, const EventAt& event,
                        const std::string& topic) = 0;
  // One delivery report.
  virtual void OnReport(uint64_t sequence, absl::Status status) = 0;

  // True when the open Kafka transaction is due for commit; `at_boundary`:
  // no source transaction is half produced.
  virtual bool CommitDue(absl::Time now, bool at_boundary) const = 0;
  // When CommitDue may next become true by time alone.
  virtual absl::Time Deadline() const = 0;
  // Commits what the open transaction holds (by `deadline`).
  virtual absl::Status Commit(absl::Time deadline) = 0;
  // Non-OK when the run must stop: the sink failed for good (a fencing,
  // explained), or a delivery inside the open transaction failed (the
  // transaction is aborted).
  virtual absl::Status Check() = 0;
  // A failure of this mode is pending (no side effect, unlike Check).
  virtual bool failed() const = 0;
  // True once after Check or Commit said kUnavailable because a Kafka
  // transaction was aborted for a cause that may pass (a coordinator or
  // leader away, a timeout): its events were never acknowledged and will
  // never be, so every source starts over from its confirmed position
  // (SourceSession::Rewind) and resends them; the checkpoint skips what
  // Kafka has.
  virtual bool TakeRewind() = 0;
  // True when one source's own failure may stop that source only.
  virtual bool IsolatesSources() const = 0;
  // True when a sink that failed for good (a fatal producer error) may be
  // replaced by a new one, every source starting over from its confirmed
  // position; false when a fatal error means another instance took over
  // (exactly-once: a fencing).
  virtual bool ReplacesFailedSink() const = 0;

  // The run ends: `clean`, what is produced is committed or acknowledged
  // by `deadline`; otherwise an open transaction is aborted. Returns a
  // failure that leaves events unconfirmed.
  virtual absl::Status Finish(bool clean, absl::Time deadline) = 0;
  // The mode's part of the run's stats (transactions committed, events
  // skipped).
  virtual void AddStats(PipelineStats& stats) const = 0;
};

// `host` must outlive the Delivery.
std::unique_ptr<Delivery> NewAtLeastOnceDelivery(DeliveryHost& host);
std::unique_ptr<Delivery> NewTransactionalDelivery(
    const TransactionalOptions& options, DeliveryHost& host);

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_DELIVERY_H_
