#include "consumer/inbox.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "consumer/dead_letter_sink.h"
#include "consumer/dependency_gate.h"
#include "consumer/inbox_store.h"
#include "kafka/group_consumer.h"
#include "spdlog/spdlog.h"

namespace outboxd {
namespace {

constexpr absl::Duration kProgressLogInterval = absl::Seconds(10);

}  // namespace

absl::StatusOr<std::string> InboxTablesDdl(const InboxOptions& options) {
  ASSIGN_OR_RETURN(
      InboxStatements sql,
      InboxStatements::ForTables(options.processed_table, options.offsets_table,
                                 options.sources_table));
  return std::move(sql.ddl);
}

// The wiring: records come from the consumer, pass the gate, and are
// applied through the store (with retries) or sent to the dead letters.
// Rebalances reach the gate through the store's stored offsets.
struct Inbox::Impl : public RebalanceListener, public DependencyGate::Host {
  InboxOptions options;
  InboxHandler handler;
  InboxStats stats;
  std::unique_ptr<InboxStore> store;
  std::unique_ptr<DeadLetterSink> dead_letters;
  std::unique_ptr<DependencyGate> gate;
  // Last: destroyed first, so that leaving the group still finds the gate.
  std::unique_ptr<GroupConsumer> consumer;

  absl::Status Init() {
    ASSIGN_OR_RETURN(store, InboxStore::Open(options));
    DeadLetterOptions dlo;
    dlo.brokers = options.brokers;
    dlo.topic = options.dlq_topic;
    dlo.group_id = options.group_id;
    dlo.kafka_properties = options.kafka_properties;
    dead_letters = std::make_unique<DeadLetterSink>(std::move(dlo));
    DependencyGate::Options go;
    go.dependency_wait = options.dependency_wait;
    go.on_missing_dependency = options.on_missing_dependency;
    go.max_deferred_per_partition = options.max_deferred_per_partition;
    gate = std::make_unique<DependencyGate>(go, this, &stats);
    GroupConsumerOptions co;
    co.brokers = options.brokers;
    co.group_id = options.group_id;
    co.topics = options.topics;
    co.client_id = "outbox-inbox";
    co.instance_id = options.instance_id;
    co.session_timeout = options.session_timeout;
    co.commit_interval = options.kafka_commit_interval;
    co.properties = options.kafka_properties;
    ASSIGN_OR_RETURN(consumer, GroupConsumer::Create(co, this));
    return absl::OkStatus();
  }

  // ---- rebalances (inside consumer->Poll) ---------------------------------

  // Each partition resumes at the offset stored with the last effect.
  // Kafka's committed offset is never ahead of it, and the processed table
  // removes what is replayed; a database error stops the inbox.
  absl::StatusOr<std::optional<int64_t>> OnAssigned(
      const TopicPartition& tp) override {
    ASSIGN_OR_RETURN(std::optional<int64_t> next, store->LoadOffset(tp));
    gate->Assign(tp, next);
    return next;
  }

  void OnRevoked(const TopicPartition& tp) override { gate->Revoke(tp); }

  // ---- the gate's host ----------------------------------------------------

  absl::StatusOr<bool> DependenciesApplied(
      const std::vector<std::string>& ids) override {
    return store->DependenciesApplied(ids);
  }

  void Pause(const TopicPartition& tp) override { consumer->Pause(tp); }
  void Resume(const TopicPartition& tp) override { consumer->Resume(tp); }

  absl::Status DeadLetter(const InboxRecord& r,
                          const std::string& why) override {
    return DeadLetter(r, why, /*attempts=*/0);
  }

  // Retries handler failures with backoff; then dead-letters (or stops).
  absl::Status Apply(const InboxRecord& r) override {
    absl::Duration backoff = options.retry_backoff;
    absl::Status last;
    for (int attempt = 1; attempt <= options.max_attempts; ++attempt) {
      absl::Status handler_error;
      ASSIGN_OR_RETURN(InboxStore::Outcome outcome,
                       store->Apply(r, handler, &handler_error));
      if (outcome != InboxStore::Outcome::kHandlerFailed) {
        consumer->MarkProcessed({r.topic, r.partition}, r.offset + 1);
      }
      if (outcome == InboxStore::Outcome::kApplied) {
        ++stats.applied;
        gate->NoteProgress();
        return absl::OkStatus();
      }
      if (outcome == InboxStore::Outcome::kDuplicate) {
        ++stats.duplicates;
        spdlog::info("duplicate event {} at {}[{}]@{} skipped", r.event_id,
                     r.topic, r.partition, r.offset);
        return absl::OkStatus();
      }
      ++stats.failed_attempts;
      last = handler_error;
      spdlog::warn("event {} at {}[{}]@{}: attempt {}/{} failed: {}",
                   r.event_id, r.topic, r.partition, r.offset, attempt,
                   options.max_attempts, handler_error.ToString());
      if (attempt < options.max_attempts) {
        absl::SleepFor(backoff);
        backoff = std::min(backoff * 2, options.max_retry_backoff);
      }
    }
    if (options.on_failure == FailurePolicy::kStop) {
      return absl::FailedPreconditionError(absl::StrCat(
          "event ", r.event_id, " at ", r.topic, "[", r.partition, "]@",
          r.offset, " failed ", options.max_attempts,
          " times (stopping, offset not committed): ", last.message()));
    }
    return DeadLetter(r, std::string(last.message()), options.max_attempts);
  }

  absl::Status DeadLetter(const InboxRecord& r, const std::string& error,
                          int attempts) {
    RETURN_IF_ERROR(dead_letters->Send(r, error, attempts));
    // Marked handled only once the dead-letter topic has it, so the group
    // moves on; a crash before this commit dead-letters it again
    // (at-least-once to the dead-letter topic).
    RETURN_IF_ERROR(store->MarkDeadLettered(r));
    consumer->MarkProcessed({r.topic, r.partition}, r.offset + 1);
    ++stats.dead_lettered;
    gate->NoteProgress();
    spdlog::warn("event {} at {}[{}]@{} dead-lettered to {}: {}", r.event_id,
                 r.topic, r.partition, r.offset, dead_letters->topic(), error);
    return absl::OkStatus();
  }

  // ---- the loop -----------------------------------------------------------

  absl::Status Run(const std::atomic<bool>& stop) {
    absl::Time next_progress = absl::Now() + kProgressLogInterval;
    absl::Status result;
    while (result.ok() && !stop.load(std::memory_order_relaxed)) {
      // Waiting records are re-checked often: poll briefly then.
      auto message =
          consumer->Poll(gate->waiting() > 0 ? absl::Milliseconds(10)
                                             : absl::Milliseconds(100));
      if (!message.ok()) {
        result = message.status();
        break;
      }
      if (message->has_value()) {
        result = gate->Offer(
            InboxRecordFromMessage(std::move(**message), options.value_format),
            absl::Now());
        if (!result.ok()) break;
      }
      result = gate->ServeWaiting(absl::Now(), stop);
      if (absl::Now() >= next_progress) {
        LogProgress();
        next_progress = absl::Now() + kProgressLogInterval;
      }
    }
    LogProgress();
    // Commits what the database holds, leaves the group (revokes).
    consumer->Close();
    return result;
  }

  void LogProgress() {
    spdlog::info(
        "inbox: applied {} duplicates {} dead-lettered {} failed attempts {} "
        "waiting for dependencies {}",
        stats.applied, stats.duplicates, stats.dead_lettered,
        stats.failed_attempts, gate->waiting());
  }
};

absl::StatusOr<std::unique_ptr<Inbox>> Inbox::Create(InboxOptions options,
                                                     InboxHandler handler) {
  if (options.conninfo.empty() || options.brokers.empty() ||
      options.group_id.empty() || options.topics.empty()) {
    return absl::InvalidArgumentError(
        "inbox needs a conninfo, brokers, a group id and topics");
  }
  if (!handler) return absl::InvalidArgumentError("inbox needs a handler");
  if (options.max_attempts < 1) {
    return absl::InvalidArgumentError("max_attempts must be at least 1");
  }
  if (options.dlq_topic.empty()) {
    return absl::InvalidArgumentError("dlq_topic must not be empty");
  }
  if (options.max_deferred_per_partition < 1) {
    options.max_deferred_per_partition = 1;
  }
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->handler = std::move(handler);
  RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<Inbox>(new Inbox(std::move(impl)));
}

Inbox::Inbox(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Inbox::~Inbox() = default;

absl::Status Inbox::Run(const std::atomic<bool>& stop) {
  if (impl_->consumer->closed()) {
    return absl::FailedPreconditionError("Inbox::Run called twice");
  }
  return impl_->Run(stop);
}

const InboxStats& Inbox::stats() const { return impl_->stats; }

}  // namespace outboxd
