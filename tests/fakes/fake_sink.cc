#include "tests/fakes/fake_sink.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace outboxd::testing {

std::optional<std::string> FakeRecord::Header(const std::string& name) const {
  for (const auto& [k, v] : headers) {
    if (k == name) return v;
  }
  return std::nullopt;
}

absl::Status FakeSink::Produce(const KafkaRecord& record, uint64_t sequence) {
  ++produce_calls_;
  if (!fatal_.ok()) return fatal_;
  if (refuse) {
    if (absl::Status s = refuse(record); !s.ok()) return s;
  }
  if (queue_.size() >= capacity) {
    return absl::ResourceExhaustedError("fake queue full");
  }
  FakeRecord r;
  r.sequence = sequence;
  r.topic = record.topic;
  r.partition = record.partition;
  r.key = std::string(record.key);
  if (record.value.has_value()) r.value = std::string(*record.value);
  r.timestamp_ms = record.timestamp_ms;
  r.headers = record.headers;
  queue_.push_back(std::move(r));
  if (!hold_acks || released_ > 0) events_.Notify();
  return absl::OkStatus();
}

void FakeSink::Deliver(bool all) {
  while (!queue_.empty() && (all || !hold_acks || released_ > 0)) {
    if (hold_acks && !all) --released_;
    FakeRecord r = std::move(queue_.front());
    queue_.pop_front();
    absl::Status status;
    if (fail_delivery) status = fail_delivery(r);
    if (status.ok()) {
      if (in_transaction_) {
        transaction_.push_back(r);
      } else {
        committed_.push_back(r);
      }
      acknowledged_.push_back(r);
    } else if (in_transaction_) {
      transaction_failed_ = true;
    }
    on_delivery_(r.sequence, std::move(status));
  }
}

void FakeSink::Poll(absl::Duration timeout) {
  ++poll_calls_;
  events_.Drain();
  if (release_all_.exchange(false)) hold_acks = false;
  const size_t before = queue_.size();
  Deliver(/*all=*/false);
  // Nothing to report: wait a little, as a real producer would, so that a
  // waiting loop does not spin.
  if (queue_.size() == before && timeout > absl::ZeroDuration()) {
    absl::SleepFor(std::min(timeout, absl::Milliseconds(1)));
  }
}

absl::Status FakeSink::Flush(absl::Duration) {
  Deliver(/*all=*/false);
  if (!queue_.empty()) {
    return absl::DeadlineExceededError(
        absl::StrCat(queue_.size(), " records not delivered"));
  }
  return absl::OkStatus();
}

absl::StatusOr<TopicState> FakeSink::LookupTopic(const std::string& topic,
                                                 absl::Duration) {
  if (!lookup_error.ok()) return lookup_error;
  auto it = topics.find(topic);
  return it == topics.end() ? TopicState::kExists : it->second;
}

absl::Status FakeSink::InitTransactions(absl::Duration) {
  if (!fatal_.ok()) return absl::AbortedError(fatal_.message());
  return absl::OkStatus();
}

absl::Status FakeSink::BeginTransaction() {
  if (!fatal_.ok()) return absl::AbortedError(fatal_.message());
  if (in_transaction_) return absl::FailedPreconditionError("already open");
  in_transaction_ = true;
  transaction_failed_ = false;
  return absl::OkStatus();
}

absl::Status FakeSink::SendCheckpoint(const std::string& group,
                                      const std::string& topic,
                                      int32_t partition, int64_t offset,
                                      const std::string& metadata,
                                      absl::Duration) {
  if (!fatal_.ok()) return absl::AbortedError(fatal_.message());
  if (!in_transaction_) return absl::FailedPreconditionError("no transaction");
  pending_checkpoints_.push_back(
      {group, CommittedOffset{topic, partition, offset, metadata}});
  return absl::OkStatus();
}

absl::Status FakeSink::CommitTransaction(absl::Duration) {
  if (!fatal_.ok()) return absl::AbortedError(fatal_.message());
  if (!in_transaction_) return absl::FailedPreconditionError("no transaction");
  if (!queue_.empty()) {
    Deliver(/*all=*/false);
    if (!queue_.empty()) return absl::UnavailableError("records in flight");
  }
  if (transaction_failed_) {
    return absl::FailedPreconditionError("a record of it failed");
  }
  for (FakeRecord& r : transaction_) committed_.push_back(std::move(r));
  transaction_.clear();
  for (auto& [group, offset] : pending_checkpoints_) {
    std::vector<CommittedOffset>& offsets = checkpoints[group];
    bool replaced = false;
    for (CommittedOffset& o : offsets) {
      if (o.topic == offset.topic && o.partition == offset.partition) {
        o = offset;
        replaced = true;
      }
    }
    if (!replaced) offsets.push_back(offset);
  }
  pending_checkpoints_.clear();
  in_transaction_ = false;
  ++transactions_committed_;
  return absl::OkStatus();
}

absl::Status FakeSink::AbortTransaction(absl::Duration) {
  if (!fatal_.ok()) return absl::AbortedError(fatal_.message());
  // Purged: their reports come, as errors.
  while (!queue_.empty()) {
    FakeRecord r = std::move(queue_.front());
    queue_.pop_front();
    on_delivery_(r.sequence, absl::AbortedError("purged by abort"));
  }
  transaction_.clear();
  pending_checkpoints_.clear();
  in_transaction_ = false;
  ++transactions_aborted_;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<CommittedOffset>> FakeSink::ReadCheckpoints(
    const std::string& group, absl::Duration) {
  auto it = checkpoints.find(group);
  if (it == checkpoints.end()) return std::vector<CommittedOffset>{};
  return it->second;
}

}  // namespace outboxd::testing
