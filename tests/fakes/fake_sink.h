// FakeSink: an in-memory Sink (kafka/sink.h), intended for testing the
// Publisher's rules without a broker.
//
// Produce copies the record into a queue of at most `capacity` records
// (kResourceExhausted beyond). Delivery reports are served by Poll/Flush:
// every queued record at once (the default), or only once the test
// releases them (hold_acks). A test can make chosen records unproducible,
// fail their delivery, raise a fatal error, say topics are missing or
// illegal, and look at Kafka transactions and their checkpoints.
// With `use_event_fd`, EventFd() is readable whenever Poll would report
// something (a record queued while acks are not held, a Release, a fatal
// error), like the producer's: a Publisher sleeping in poll() wakes on it.
// Without (the default), EventFd() is -1 and Poll(timeout) sleeps a little
// when it has nothing to report.
//
// Not thread-safe, like every Sink.
#ifndef OUTBOXD_TESTS_FAKES_FAKE_SINK_H_
#define OUTBOXD_TESTS_FAKES_FAKE_SINK_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/wake_pipe.h"
#include "kafka/sink.h"

namespace outboxd::testing {

// A copy of one produced record.
struct FakeRecord {
  uint64_t sequence = 0;
  std::string topic;
  int32_t partition = -1;
  std::string key;
  std::optional<std::string> value;
  int64_t timestamp_ms = 0;
  std::vector<std::pair<std::string, std::string>> headers;

  // The value of header `name`, nullopt when absent.
  std::optional<std::string> Header(const std::string& name) const;
};

class FakeSink : public Sink {
 public:
  explicit FakeSink(DeliveryCallback on_delivery)
      : on_delivery_(std::move(on_delivery)), events_(*WakePipe::Create()) {}
  ~FakeSink() override {
    if (on_destroy) on_destroy(*this);
  }

  // Called by the destructor: lets a test keep what the sink saw after its
  // owner is gone.
  std::function<void(const FakeSink&)> on_destroy;

  // --- what the test controls ---------------------------------------------
  // Records queued at most (Produce says kResourceExhausted beyond).
  size_t capacity = 1000;
  // When true, Poll/Flush report nothing until Release().
  bool hold_acks = false;
  // EventFd() is a descriptor (see above), not -1.
  bool use_event_fd = false;
  // Non-OK for a record Produce must refuse (not queued).
  std::function<absl::Status(const KafkaRecord&)> refuse;
  // Non-OK for a record whose delivery fails.
  std::function<absl::Status(const FakeRecord&)> fail_delivery;
  // Topic states (default kExists); a topic mapped to an error status makes
  // LookupTopic fail.
  std::map<std::string, TopicState> topics;
  absl::Status lookup_error;
  std::string cluster_id = "fake-cluster";
  // Makes the producer unusable (fatal_error, transactional calls kAborted).
  void SetFatal(absl::Status cause) {
    fatal_ = std::move(cause);
    events_.Notify();
  }
  // Lets the next `n` held reports through on the next Poll/Flush.
  void Release(size_t n = SIZE_MAX) {
    released_ = n > SIZE_MAX - released_ ? SIZE_MAX : released_ + n;
    events_.Notify();
  }

  // Ends hold_acks from another thread (the only thread-safe call): the
  // next Poll reports everything queued, and EventFd() becomes readable.
  void ReleaseAllFromAnyThread() {
    release_all_.store(true);
    events_.Notify();
  }

  // --- what the test observes ---------------------------------------------
  // Records acknowledged, in delivery order (in a transaction: produced
  // into it; see committed()).
  const std::vector<FakeRecord>& acknowledged() const { return acknowledged_; }
  // Records of committed transactions, in order.
  const std::vector<FakeRecord>& committed() const { return committed_; }
  size_t produce_calls() const { return produce_calls_; }
  size_t poll_calls() const { return poll_calls_; }
  size_t queued() const { return queue_.size(); }
  int transactions_committed() const { return transactions_committed_; }
  int transactions_aborted() const { return transactions_aborted_; }
  bool in_transaction() const { return in_transaction_; }
  // Checkpoints committed per group (as ReadCheckpoints returns them).
  std::map<std::string, std::vector<CommittedOffset>> checkpoints;

  // --- Sink ---------------------------------------------------------------
  absl::Status Produce(const KafkaRecord& record, uint64_t sequence) override;
  void Poll(absl::Duration timeout) override;
  int EventFd() const override { return use_event_fd ? events_.read_fd() : -1; }
  absl::Status Flush(absl::Duration timeout) override;
  int OutQueueLength() const override {
    return static_cast<int>(queue_.size());
  }
  absl::Status fatal_error() const override { return fatal_; }
  absl::StatusOr<TopicState> LookupTopic(const std::string& topic,
                                         absl::Duration timeout) override;
  absl::StatusOr<std::string> ClusterId(absl::Duration timeout) override {
    return cluster_id;
  }
  absl::Status InitTransactions(absl::Duration timeout) override;
  absl::Status BeginTransaction() override;
  absl::Status SendCheckpoint(const std::string& group,
                              const std::string& topic, int32_t partition,
                              int64_t offset, const std::string& metadata,
                              absl::Duration timeout) override;
  absl::Status CommitTransaction(absl::Duration timeout) override;
  absl::Status AbortTransaction(absl::Duration timeout) override;
  absl::StatusOr<std::vector<CommittedOffset>> ReadCheckpoints(
      const std::string& group, absl::Duration timeout) override;

 private:
  void Deliver(bool all);

  DeliveryCallback on_delivery_;
  absl::Status fatal_;
  size_t released_ = 0;
  std::deque<FakeRecord> queue_;
  std::vector<FakeRecord> acknowledged_;
  std::vector<FakeRecord> committed_;
  std::vector<FakeRecord> transaction_;  // delivered in the open one
  std::vector<std::pair<std::string, CommittedOffset>> pending_checkpoints_;
  bool in_transaction_ = false;
  bool transaction_failed_ = false;
  size_t produce_calls_ = 0;
  size_t poll_calls_ = 0;
  WakePipe events_;
  std::atomic<bool> release_all_{false};
  int transactions_committed_ = 0;
  int transactions_aborted_ = 0;
};

}  // namespace outboxd::testing

#endif  // OUTBOXD_TESTS_FAKES_FAKE_SINK_H_
