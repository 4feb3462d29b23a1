// exactly-once (pipeline/delivery.h): Kafka transactions, each committed
// with a checkpoint of this source's position (pipeline/checkpoint.h);
// events at or below the newest checkpoint are in Kafka already.
#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "pipeline/checkpoint.h"
#include "pipeline/delivery.h"

namespace outboxd {
namespace {

// Each blocking transactional call waits at most this long, so that the
// source's keep-alive work (CDC status updates, wal_sender_timeout) goes on
// while Kafka is slow.
constexpr absl::Duration kTxnCallTimeout = absl::Milliseconds(500);
// Aborted transactions in a row (no commit between them) resent in
// process before the run stops.
constexpr int kMaxAbortsInARow = 5;
// How long preparing the transactions (init, checkpoint read) may take
// before the attempt counts as failed and is retried from the start.
constexpr absl::Duration kTxnPrepareTimeout = absl::Seconds(60);
// librdkafka's mock cluster (the dev broker) names its clusters so.
constexpr absl::string_view kMockClusterPrefix = "mockCluster";

// An event at or below the checkpoint that committed more than this after
// the checkpoint's own transaction is of another history (commit times
// follow commit positions to within a few milliseconds; a restore takes
// far longer).
constexpr int64_t kCommitTimeSlackMs = 1000;

std::string Describe(const std::optional<Checkpoint>& c) {
  if (!c.has_value()) return "none";
  return absl::StrCat(c->position.commit_lsn.ToString(), "#",
                      c->position.index);
}

class TransactionalDelivery final : public Delivery {
 public:
  TransactionalDelivery(const TransactionalOptions& options, DeliveryHost& host)
      : options_(options), host_(host), batch_(options.batch) {}

  // One transactional producer and one checkpoint per source: several
  // sources would need a producer each.
  absl::Status CheckSources(size_t sources) const override {
    if (sources <= 1) return absl::OkStatus();
    return absl::InvalidArgumentError(
        "--delivery=exactly-once publishes one source per process");
  }
  bool SinkNeedsIdentity() const override { return true; }
  ProducerOptions Producer(const ProducerOptions& base,
                           const std::string& identity) override {
    transactional_id_ = TransactionalIdFor(options_.transactional_id, identity);
    ProducerOptions o = base;
    o.transactional_id = transactional_id_;
    return o;
  }
  void Attach(Sink& sink) override { sink_ = &sink; }

  absl::Status Ready(const std::string& identity, const std::string& history,
                     const std::function<absl::Status(const EventPosition&)>&
                         check_checkpoint) override {
    identity_ = identity;
    if (!broker_checked_) {
      RETURN_IF_ERROR(CheckBrokerHasTransactions());
      broker_checked_ = true;
    }
    if (ready_ && history != history_) {
      // A reconnect to another history (a promoted standby, a restore):
      // positions of the old one say nothing about the new one's events.
      Forget(absl::StrCat("the source's history changed from '", history_,
                          "' to '", history, "'"));
    }
    history_ = history;
    if (ready_) return absl::OkStatus();
    RETURN_IF_ERROR(Prepare(check_checkpoint));
    ready_ = true;
    return absl::OkStatus();
  }
  void SourceRestarted() override {
    Forget("the source started over at a new position");
  }

  bool Skips(const EventAt& event) override {
    if (!checkpoint_.has_value() || event.position > checkpoint_->position) {
      return false;
    }
    if (checkpoint_->commit_time_unix_ms > 0 &&
        event.commit_time_unix_ms >
            checkpoint_->commit_time_unix_ms + kCommitTimeSlackMs) {
      // The database's WAL went back (a restore, on the same timeline)
      // and has passed the checkpoint's position again with new
      // transactions: they are not in Kafka.
      Forget(absl::StrCat(
          "an event at ", event.position.commit_lsn.ToString(), "#",
          event.position.index, " (at or below the checkpoint) committed at ",
          event.commit_time_unix_ms, " ms, after the checkpoint's own ",
          "transaction (", checkpoint_->commit_time_unix_ms,
          " ms): the database's WAL went back"));
      return false;
    }
    ++skipped_;
    return true;
  }
  absl::Status BeforeProduce() override {
    if (batch_.open()) return absl::OkStatus();
    RETURN_IF_ERROR(sink_->BeginTransaction());
    batch_.Began(absl::Now());
    return absl::OkStatus();
  }
  void Produced(uint64_t sequence, const EventAt& event,
                const std::string& topic) override {
    batch_.Produced(sequence, event.position, event.commit_time_unix_ms, topic);
  }
  // Written, not committed: acknowledged when the transaction commits. A
  // failure dooms the open transaction (reports of records purged by our
  // own abort come after it and change nothing).
  void OnReport(uint64_t sequence, absl::Status status) override {
    if (status.ok() || aborting_) return;
    spdlog::error("delivery of event #{} failed: {}", sequence,
                  status.ToString());
    if (delivery_failure_.ok()) delivery_failure_ = std::move(status);
  }

  bool CommitDue(absl::Time now, bool at_boundary) const override {
    return batch_.CommitDue(now, at_boundary);
  }
  absl::Time Deadline() const override { return batch_.Deadline(); }
  absl::Status Commit(absl::Time deadline) override;
  absl::Status Check() override {
    RETURN_IF_ERROR(DeliveryFailureInTransaction());
    return FencedOrFatal();
  }
  bool failed() const override { return !delivery_failure_.ok(); }
  bool TakeRewind() override { return std::exchange(rewind_, false); }
  bool IsolatesSources() const override { return false; }
  bool ReplacesFailedSink() const override { return false; }

  absl::Status Finish(bool clean, absl::Time deadline) override {
    absl::Status final_commit;
    if (sink_ != nullptr && batch_.open()) {
      if (clean) {
        // What was produced is committed (with its checkpoint), then
        // confirmed; a partly produced source transaction is resent by the
        // next start and its committed part skipped.
        final_commit = Commit(deadline);
        if (!final_commit.ok()) {
          spdlog::error("{}", std::string(final_commit.message()));
        }
      } else if (sink_->fatal_error().ok()) {
        // Read-committed consumers would wait for it until it times out.
        aborting_ = true;
        sink_->AbortTransaction(absl::Seconds(5)).IgnoreError();
        batch_.Aborted();
      }
    }
    spdlog::info(
        "exactly-once: {} transactions committed, {} resent events skipped "
        "(at or below the checkpoint)",
        transactions_committed_, skipped_);
    // A last transaction that did not commit is not confirmed: exit 1.
    return final_commit;
  }
  void AddStats(PipelineStats& stats) const override {
    stats.transactions_committed = transactions_committed_;
    stats.events_skipped = skipped_;
  }

 private:
  absl::Status CheckBrokerHasTransactions();
  absl::Status Prepare(
      const std::function<absl::Status(const EventPosition&)>& check);
  absl::Status FencedOrFatal();
  // The checkpoint is never used to skip again (until the next commit
  // writes one of the new stream).
  void Forget(absl::string_view why) {
    if (!checkpoint_.has_value()) return;
    spdlog::warn(
        "exactly-once: {}: the checkpoint {} is no longer used to skip "
        "events (duplicates are possible, losses are not)",
        std::string(why), Describe(checkpoint_));
    checkpoint_.reset();
  }
  absl::Status DeliveryFailureInTransaction();
  absl::Status TransactionFailed(const absl::Status& cause);
  // The sources' keep-alive while a transactional call waits: a lost
  // connection is not the transaction's problem (the commit goes on, and
  // the reconnect that follows notices it again).
  absl::Status KeepAlive() {
    absl::Status s = host_.KeepSourcesAlive();
    return absl::IsUnavailable(s) ? absl::OkStatus() : s;
  }

  const TransactionalOptions options_;
  DeliveryHost& host_;
  Sink* sink_ = nullptr;
  TransactionBatch batch_;        // the open Kafka transaction
  std::string transactional_id_;  // also the checkpoint's consumer group
  std::string identity_;          // the source's (outbox.source)
  std::string history_;           // the source's (ConnectResult::history)
  // This source's newest committed checkpoint: every event at or below it
  // is in Kafka.
  std::optional<Checkpoint> checkpoint_;
  bool broker_checked_ = false;
  bool initialized_ = false;      // init_transactions done
  bool ready_ = false;            // initialised, checkpoint read
  bool checkpoint_sent_ = false;  // for the open transaction
  bool aborting_ = false;
  bool rewind_ = false;
  int aborts_in_a_row_ = 0;  // since the last commit
  absl::Status delivery_failure_;
  uint64_t transactions_committed_ = 0;
  uint64_t skipped_ = 0;
};

// The dev broker (librdkafka's mock cluster) accepts the transactional
// requests but keeps aborted records visible and drops the offsets
// committed in a transaction: exactly-once cannot hold there.
absl::Status TransactionalDelivery::CheckBrokerHasTransactions() {
  ASSIGN_OR_RETURN(std::string cluster, sink_->ClusterId(absl::Seconds(10)));
  if (absl::StartsWith(cluster, kMockClusterPrefix)) {
    return absl::FailedPreconditionError(
        "--delivery=exactly-once needs Apache Kafka: the dev broker "
        "(librdkafka mock cluster) ignores transactions (aborted records "
        "stay visible, transactional offsets are dropped); use "
        "--delivery=at-least-once there");
  }
  return absl::OkStatus();
}

// Registers the transactional id (fencing every older instance and
// aborting its open transaction), then reads this source's checkpoint. The
// source's keep-alive work goes on meanwhile.
absl::Status TransactionalDelivery::Prepare(
    const std::function<absl::Status(const EventPosition&)>& check) {
  const absl::Time deadline = absl::Now() + kTxnPrepareTimeout;
  while (!initialized_) {
    absl::Status s = sink_->InitTransactions(kTxnCallTimeout);
    if (s.ok()) {
      initialized_ = true;
      break;
    }
    if (!absl::IsUnavailable(s) || absl::Now() > deadline) return s;
    spdlog::debug("exactly-once: init_transactions: {}",
                  std::string(s.message()));
    RETURN_IF_ERROR(host_.KeepSourcesAlive());
  }
  std::vector<CommittedOffset> offsets;
  bool logged_wait = false;
  for (;;) {
    absl::StatusOr<std::vector<CommittedOffset>> o =
        sink_->ReadCheckpoints(transactional_id_, absl::Seconds(5));
    if (o.ok()) {
      offsets = *std::move(o);
      break;
    }
    if (!absl::IsUnavailable(o.status()) || absl::Now() > deadline) {
      return o.status();
    }
    if (!logged_wait) {
      spdlog::info("exactly-once: waiting for the checkpoint: {}",
                   std::string(o.status().message()));
      logged_wait = true;
    }
    RETURN_IF_ERROR(host_.KeepSourcesAlive());
    absl::SleepFor(absl::Milliseconds(100));
  }
  // Used to skip only once judged: a checkpoint from another history (a
  // database restored from a backup) says nothing about this one's events,
  // and skipping by it could lose them.
  checkpoint_.reset();
  size_t other_histories = 0;
  ASSIGN_OR_RETURN(std::optional<Checkpoint> found,
                   NewestCheckpoint(offsets, identity_, transactional_id_,
                                    history_, &other_histories));
  if (other_histories > 0) {
    spdlog::warn(
        "exactly-once: {} checkpoint(s) of transactional id {} belong to "
        "another history of the database than '{}' (a failover or a "
        "restore): not used to skip events (duplicates are possible, losses "
        "are not)",
        other_histories, transactional_id_, history_);
  }
  if (found.has_value()) {
    absl::Status c = check(found->position);
    if (absl::IsFailedPrecondition(c)) {
      // Past the database's WAL: written in a history the database no
      // longer has (restored, re-initialised). Never used to skip; the
      // stream goes on from the slot (duplicates possible, no loss).
      spdlog::warn(
          "exactly-once: the checkpoint of transactional id {} is at {}, {}: "
          "the database went back (a restore); not used to skip events "
          "(the events the slot resends are published again)",
          transactional_id_, Describe(found), std::string(c.message()));
      found.reset();
    } else if (!c.ok()) {
      return absl::Status(
          c.code(), absl::StrCat("exactly-once: checking the checkpoint at ",
                                 Describe(found), ": ", c.message()));
    }
  }
  checkpoint_ = found;
  spdlog::info("exactly-once: transactional id {}, checkpoint {}",
               transactional_id_, Describe(checkpoint_));
  return absl::OkStatus();
}

// Commits the open Kafka transaction with its checkpoint and acknowledges
// its events. A transaction that must be aborted, or a fenced producer,
// stops the run without confirming past them.
absl::Status TransactionalDelivery::Commit(absl::Time deadline) {
  if (sink_ == nullptr || !batch_.open()) return absl::OkStatus();
  RETURN_IF_ERROR(DeliveryFailureInTransaction());
  if (batch_.size() > 0 && !checkpoint_sent_) {
    // The records first: the group coordinator refuses an offset for a
    // topic it does not know yet (one auto-created by these records).
    while (sink_->OutQueueLength() > 0) {
      sink_->Flush(kTxnCallTimeout).IgnoreError();
      RETURN_IF_ERROR(DeliveryFailureInTransaction());
      RETURN_IF_ERROR(FencedOrFatal());
      if (absl::Now() > deadline) {
        return TransactionFailed(absl::DeadlineExceededError(
            "records of the transaction still in flight"));
      }
      RETURN_IF_ERROR(KeepAlive());
    }
    const EventPosition& last = batch_.last_position();
    std::string metadata = EncodeCheckpoint(Checkpoint{
        identity_, last, history_, batch_.last_commit_time_unix_ms()});
    for (;;) {
      absl::Status s = sink_->SendCheckpoint(
          transactional_id_, batch_.first_topic(), /*partition=*/0,
          CheckpointOffset(last), metadata, kTxnCallTimeout);
      if (s.ok()) break;
      if (!absl::IsUnavailable(s) || absl::Now() > deadline) {
        return TransactionFailed(s);
      }
      RETURN_IF_ERROR(KeepAlive());
    }
    checkpoint_sent_ = true;
  }
  for (;;) {
    absl::Status s = sink_->CommitTransaction(kTxnCallTimeout);
    if (s.ok()) break;
    if (!absl::IsUnavailable(s) || absl::Now() > deadline) {
      return TransactionFailed(s);
    }
    // Not known yet (records still in flight): calling again resumes.
    RETURN_IF_ERROR(KeepAlive());
  }
  checkpoint_sent_ = false;
  aborts_in_a_row_ = 0;
  if (batch_.size() > 0) {
    checkpoint_ = Checkpoint{identity_, batch_.last_position(), history_,
                             batch_.last_commit_time_unix_ms()};
  }
  std::vector<uint64_t> committed = batch_.TakeCommitted();
  for (uint64_t sequence : committed) host_.Acknowledge(sequence);
  ++transactions_committed_;
  spdlog::debug(
      "exactly-once: committed a Kafka transaction of {} events, "
      "checkpoint {}",
      committed.size(), Describe(checkpoint_));
  return absl::OkStatus();
}

// The sink's fatal error, explained as a fencing.
absl::Status TransactionalDelivery::FencedOrFatal() {
  if (sink_ == nullptr) return absl::OkStatus();
  absl::Status fatal = sink_->fatal_error();
  if (fatal.ok()) return fatal;
  return TransactionFailed(absl::AbortedError(fatal.message()));
}

// A delivery inside the open transaction failed: it cannot commit.
// A record the broker refuses for good is not dead-lettered here: which
// record of a refused batch is the culprit is only known by producing each
// alone, outside the transaction (at-least-once does). The run stops with
// the reason, so that the operator can act on it.
absl::Status TransactionalDelivery::DeliveryFailureInTransaction() {
  if (delivery_failure_.ok()) return absl::OkStatus();
  return TransactionFailed(absl::FailedPreconditionError(absl::StrCat(
      "a delivery failed: ", delivery_failure_.message(),
      IsPermanentRefusal(delivery_failure_)
          ? "; the broker refuses this record for good, so every start "
            "stops here: fix the topic (e.g. its max.message.bytes) or "
            "publish with --delivery=at-least-once, which dead-letters it"
          : "")));
}

// The transaction cannot commit: abort it (unless fenced). Its events were
// never acknowledged, so nothing past them is confirmed. A cause that may
// pass (not a fencing, not a record refused for good), with the abort
// done, is kUnavailable and a rewind: the sources resend the events and
// the checkpoint skips what Kafka has. Otherwise, or after
// kMaxAbortsInARow aborts without a commit between them, the run stops;
// the next start resends them.
absl::Status TransactionalDelivery::TransactionFailed(
    const absl::Status& cause) {
  aborting_ = true;
  const bool may_pass = !absl::IsAborted(cause) &&
                        !IsPermanentRefusal(delivery_failure_) &&
                        ++aborts_in_a_row_ <= kMaxAbortsInARow;
  if (absl::IsAborted(cause)) {
    batch_.Aborted();
    return absl::AbortedError(absl::StrCat(
        "exactly-once: this producer was fenced or failed for good (",
        cause.message(), "); another outboxd with transactional id ",
        transactional_id_,
        " has probably taken over. Stopping without confirming past the "
        "uncommitted events"));
  }
  absl::Status abort = sink_->AbortTransaction(absl::Seconds(10));
  batch_.Aborted();
  checkpoint_sent_ = false;
  if (abort.ok() && may_pass) {
    // The purged records' reports were served by the abort.
    aborting_ = false;
    delivery_failure_ = absl::OkStatus();
    rewind_ = true;
    return absl::UnavailableError(absl::StrCat(
        "exactly-once: Kafka transaction aborted (", cause.message(),
        "); resending its events from the confirmed position (attempt ",
        aborts_in_a_row_, " of ", kMaxAbortsInARow, ")"));
  }
  return absl::AbortedError(absl::StrCat(
      "exactly-once: Kafka transaction aborted (", cause.message(), ")",
      abort.ok() ? "" : absl::StrCat(" [abort: ", abort.message(), "]"),
      ". Stopping without confirming past its events; a restart resends "
      "them from the source"));
}

}  // namespace

std::string TransactionalIdFor(const std::string& configured,
                               const std::string& identity) {
  if (!configured.empty()) return configured;
  std::string id = absl::StrCat("outboxd-", identity);
  std::replace(id.begin(), id.end(), '/', '-');
  return id;
}

std::unique_ptr<Delivery> NewTransactionalDelivery(
    const TransactionalOptions& options, DeliveryHost& host) {
  return std::make_unique<TransactionalDelivery>(options, host);
}

}  // namespace outboxd
