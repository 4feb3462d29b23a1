#include "pipeline/cdc_pipeline.h"

#include <algorithm>
#include <deque>
#include <memory>
#include <optional>
#include <utility>
#include <variant>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kafka/topic_catalog.h"
#include "nlohmann/json.hpp"
#include "pg/connection.h"
#include "pg/pgoutput.h"
#include "pg/publisher_state.h"
#include "pg/replication_stream.h"
#include "pipeline/ack_tracker.h"
#include "pipeline/checkpoint.h"
#include "pipeline/reserved_header_log.h"
#include "pipeline/transaction_batch.h"
#include "pipeline/republisher.h"
#include "pipeline/slot_loss.h"

namespace outboxd {
namespace {

constexpr absl::Duration kProgressLogInterval = absl::Seconds(10);
// How long a read waits while acknowledgements are outstanding, so that
// delivery reports are served promptly.
constexpr absl::Duration kBusyPollInterval = absl::Milliseconds(5);
// Each blocking transactional call waits at most this long, so that status
// updates keep going out (wal_sender_timeout) while Kafka is slow.
constexpr absl::Duration kTxnCallTimeout = absl::Milliseconds(500);
// How long preparing the transactions (init, checkpoint read) may take
// before the attempt counts as failed and is retried from the start.
constexpr absl::Duration kTxnPrepareTimeout = absl::Seconds(60);
// librdkafka's mock cluster (the dev broker) names its clusters so.
constexpr absl::string_view kMockClusterPrefix = "mockCluster";
// A position that moved only through server keepalives (no transaction
// acknowledged since the last record) is recorded at most once per this many
// status intervals: each record is a write, so WAL, which moves the
// keepalive position again.
constexpr int kIdleRecordIntervals = 10;
// Commit times kept for positions not yet recorded; the oldest are dropped
// beyond this (an older commit time is recorded instead: more republished,
// never fewer).
constexpr size_t kMaxCommitTimes = 1 << 20;
// How long one metadata lookup of a topic may block the pipeline thread
// (status updates wait meanwhile; wal_sender_timeout is far longer).
constexpr absl::Duration kTopicLookupTimeout = absl::Seconds(3);

// The record that carries an invalid event to the dead-letter topic: the
// original content as the value, the reason and position as headers.
KafkaRecord DeadLetterRecord(const InvalidEvent& bad,
                             const std::string& topic) {
  KafkaRecord r;
  r.topic = topic;
  r.key = bad.aggregate_id;
  r.value = absl::string_view(bad.content);
  r.timestamp_ms = bad.commit_time_unix_ms;
  r.headers = {
      {"outbox.error", bad.reason},
      {std::string(kHeaderLsn), absl::StrCat(bad.position.commit_lsn.value())},
      {std::string(kHeaderIndex), absl::StrCat(bad.position.index)},
  };
  return r;
}

// An event that could not be produced as it is (e.g. larger than
// message.max.bytes) becomes an invalid event without its payload.
InvalidEvent Unproducible(const OutboxEvent& e, const absl::Status& cause) {
  InvalidEvent bad;
  bad.position = e.position;
  bad.commit_time_unix_ms = e.commit_time_unix_ms;
  bad.reason = absl::StrCat("cannot produce: ", cause.message());
  bad.aggregate_id = e.aggregate_id;
  nlohmann::ordered_json c = {
      {"id", e.id},
      {"aggregatetype", e.aggregate_type},
      {"aggregateid", e.aggregate_id},
      {"type", e.type},
      {"payload_bytes", e.payload ? e.payload->size() : 0},
  };
  bad.content =
      c.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return bad;
}

// An event whose topic cannot take it (an illegal name, a missing topic):
// an invalid event with the whole event as content, so it can be replayed.
InvalidEvent Misrouted(const OutboxEvent& e, const std::string& topic,
                       const absl::Status& cause) {
  InvalidEvent bad;
  bad.position = e.position;
  bad.commit_time_unix_ms = e.commit_time_unix_ms;
  bad.reason = absl::StrCat("cannot route to ", topic, ": ", cause.message());
  bad.aggregate_id = e.aggregate_id;
  bad.content = EventAsJson(e);
  return bad;
}

class CdcPipeline {
 public:
  CdcPipeline(const CdcPipelineOptions& options, PipelineStats* stats)
      : options_(options),
        stats_(stats),
        mapper_(options.mapper),
        router_(options.router),
        exactly_once_(options.delivery == DeliveryGuarantee::kExactlyOnce),
        batch_(options.transactions),
        reserved_header_log_(options.metrics) {}

  absl::Status Run(const std::atomic<bool>& stop) {
    stop_ = &stop;
    absl::Status s = ConnectWithRetry(stop);
    while (s.ok() && stream_ != nullptr) {
      s = Stream(stop);  // OK only when stopped
      if (s.ok() || !Reconnectable(s)) break;
      spdlog::warn("{}; reconnecting", std::string(s.message()));
      // What the open Kafka transaction holds is committed first: the
      // server resends from the confirmed position, and the checkpoint
      // tells which of those events Kafka has. The old stream is of no
      // use meanwhile (no status updates through it).
      stream_.reset();
      if (absl::Status c = CommitOpenTransaction(); !c.ok()) {
        s = c;
        break;
      }
      if (options_.metrics != nullptr)
        options_.metrics->reconnects->Increment();
      ResetSession();
      s = ConnectWithRetry(stop);
    }
    absl::Status end = Finish(s.ok());
    return s.ok() ? end : s;
  }

 private:
  // What waits to be produced while the queue is full.
  struct Pending {
    std::variant<OutboxEvent, InvalidEvent> item;
    uint64_t sequence;
  };

  absl::Status Setup() {
    ASSIGN_OR_RETURN(
        auto conn,
        PgConnection::Connect(options_.conninfo, PgConnection::Mode::kNormal));
    RETURN_IF_ERROR(CheckWalLevel(*conn));
    RETURN_IF_ERROR(EnsurePublication(*conn, options_.setup));
    // outbox.source: the stream's identity (it changes only when the
    // database is another cluster, which the slot check below catches).
    ASSIGN_OR_RETURN(router_.source,
                     SourceIdentity(*conn, options_.setup.slot));
    if (state_ == nullptr) {
      ASSIGN_OR_RETURN(
          state_, PublisherStateStore::Open(
                      options_.conninfo, options_.setup.slot, router_.source));
    }
    // The slot first, then the record (pipeline/slot_loss.h).
    ASSIGN_OR_RETURN(std::optional<SlotInfo> slot,
                     InspectSlot(*conn, options_.setup));
    ASSIGN_OR_RETURN(std::optional<PublisherState> recorded, state_->Read());
    ASSIGN_OR_RETURN(
        SlotVerdict verdict,
        JudgeSlot(slot, recorded, router_.source, options_.setup.slot));
    if (verdict.kind == SlotVerdict::Kind::kResume && start_said_invalidated_) {
      verdict = {SlotVerdict::Kind::kLost,
                 "START_REPLICATION says the slot is invalidated"};
    }
    ASSIGN_OR_RETURN(XminSample sample, state_->TakeSample());
    Lsn start;
    bool new_stream = producer_ == nullptr;
    switch (verdict.kind) {
      case SlotVerdict::Kind::kResume:
        start = slot->confirmed_flush;
        spdlog::info("slot {} found, confirmed position {}",
                     options_.setup.slot, start.ToString());
        break;
      case SlotVerdict::Kind::kAdopt:
        start = slot->confirmed_flush;
        spdlog::info("slot {} found, confirmed position {}; recording it in {}",
                     options_.setup.slot, start.ToString(),
                     kPublisherStateTable);
        RETURN_IF_ERROR(state_->Record(start, std::nullopt));
        break;
      case SlotVerdict::Kind::kCreate: {
        absl::StatusOr<Lsn> created = CreateSlot(*conn, options_.setup);
        if (absl::IsAlreadyExists(created.status())) {
          return absl::UnavailableError(
              absl::StrCat("replication slot ", options_.setup.slot,
                           " was created concurrently; inspecting it again"));
        }
        RETURN_IF_ERROR(created.status());
        start = *created;
        // The sample predates the slot: rows committed after its start have
        // later commit times and xmins not older than the sample's.
        RETURN_IF_ERROR(
            state_->Record(start, sample.server_time_unix_us, sample.xmin));
        break;
      }
      case SlotVerdict::Kind::kLost:
        ASSIGN_OR_RETURN(start,
                         RecoverLostSlot(*conn, slot, *recorded, verdict));
        new_stream = true;
        break;
    }
    if (new_stream) {
      tracker_ = AckTracker(start);
      reported_ = start;
      commit_times_.clear();
    }
    spdlog::info("source {}", router_.source);
    // The producer (and what it has in flight) outlives reconnections.
    if (producer_ == nullptr) RETURN_IF_ERROR(CreateProducer());
    if (exactly_once_ && !broker_checked_) {
      RETURN_IF_ERROR(CheckBrokerHasTransactions());
      broker_checked_ = true;
    }
    ReplicationStreamOptions so;
    so.conninfo = options_.conninfo;
    so.slot = options_.setup.slot;
    so.publication = options_.setup.publication;
    // From what is acknowledged: the server skips transactions before it.
    absl::StatusOr<std::unique_ptr<ReplicationStream>> stream =
        ReplicationStream::Start(so, tracker_.ConfirmableLsn());
    if (!stream.ok() && IsSlotInvalidatedError(stream.status()) &&
        recorded.has_value()) {
      // Invalidated since the check: judged again on the next attempt.
      start_said_invalidated_ = true;
      if (options_.on_slot_loss == SlotLossPolicy::kFail) {
        if (options_.metrics != nullptr) options_.metrics->slot_lost->Set(1);
        return absl::DataLossError(SlotLossMessage(
            options_.setup.slot,
            {SlotVerdict::Kind::kLost, std::string(stream.status().message())},
            *recorded));
      }
      return absl::UnavailableError(stream.status().message());
    }
    ASSIGN_OR_RETURN(stream_, std::move(stream));
    // Only the owner of the slot may fence the others: a standby that
    // waits for the slot must not take the transactional id from the
    // active instance.
    if (exactly_once_ && !transactions_ready_) {
      RETURN_IF_ERROR(PrepareTransactions(*conn));
    }
    spdlog::info("streaming from slot {} (publication {})", so.slot,
                 so.publication);
    if (options_.metrics != nullptr) options_.metrics->streaming->Set(1);
    return absl::OkStatus();
  }

  // The slot outboxd streamed from is gone, invalidated or replaced. Fails
  // with the one error line, or (--on-slot-loss=republish) re-creates it,
  // republishes from the outbox table what may have committed after the
  // recorded position and returns the new slot's start.
  absl::StatusOr<Lsn> RecoverLostSlot(PgConnection& conn,
                                      const std::optional<SlotInfo>& slot,
                                      const PublisherState& recorded,
                                      const SlotVerdict& verdict) {
    metrics::OutboxdMetrics* m = options_.metrics;
    if (m != nullptr) m->slot_lost->Set(1);
    const std::string message =
        SlotLossMessage(options_.setup.slot, verdict, recorded);
    if (options_.on_slot_loss == SlotLossPolicy::kFail ||
        !options_.setup.table.has_value()) {
      return absl::DataLossError(message);
    }
    spdlog::error("{} -- republishing (--on-slot-loss=republish)", message);
    // What is in flight from before the loss goes first (order per
    // aggregate); a failure among it stops here, before anything changes.
    if (producer_ != nullptr) {
      while (producer_->OutQueueLength() > 0) {
        producer_->Poll(absl::Milliseconds(50));
        RETURN_IF_ERROR(producer_->fatal_error());
        RETURN_IF_ERROR(tracker_.failure());
        if (stop_->load()) return absl::CancelledError("stop requested");
      }
    }
    if (slot.has_value()) {
      // Invalidated or started past our position: useless, and a fresh one
      // gives the republished records positions never used before.
      RETURN_IF_ERROR(DropSlot(conn, options_.setup.slot));
    }
    ASSIGN_OR_RETURN(XminSample sample, state_->TakeSample());
    absl::StatusOr<Lsn> created = CreateSlot(conn, options_.setup);
    if (absl::IsAlreadyExists(created.status())) {
      return absl::UnavailableError(
          absl::StrCat("replication slot ", options_.setup.slot,
                       " was created concurrently; inspecting it again"));
    }
    RETURN_IF_ERROR(created.status());
    const Lsn start = *created;

    RepublishOptions ro;
    ro.conninfo = options_.conninfo;
    ro.table = *options_.setup.table;
    ro.columns = options_.mapper.columns;
    ro.margin = options_.republish_margin;
    ro.router = router_;
    ro.producer = options_.producer;
    ro.value_format = options_.value_format;
    ro.dlq_topic = options_.dlq_topic;
    ro.fail_on_invalid = options_.on_invalid == InvalidEventPolicy::kFail;
    // Until the republish is acknowledged the record keeps the old
    // position: a crash here finds the new slot past it and starts over.
    ASSIGN_OR_RETURN(RepublishResult r,
                     RepublishLostEvents(ro, recorded, start, *stop_));
    RETURN_IF_ERROR(state_->Record(start, sample.server_time_unix_us,
                                   sample.xmin, /*force=*/true));
    start_said_invalidated_ = false;
    spdlog::warn(
        "republished {} events ({} dead-lettered) of {} that may have "
        "committed after {} (margin {}); streaming from the new slot at {}. "
        "Logical decoding messages and rows deleted in their own transaction "
        "during the loss could not be republished",
        r.republished, r.dead_lettered, options_.setup.table->ToString(),
        recorded.last_ack.ToString(),
        absl::FormatDuration(options_.republish_margin), start.ToString());
    if (m != nullptr) {
      m->republished_events->Increment(static_cast<double>(r.republished));
      m->slot_lost->Set(0);
    }
    return start;
  }

  absl::Status CreateProducer() {
    ProducerOptions producer_options = options_.producer;
    if (exactly_once_) {
      transactional_id_ = options_.transactional_id;
      if (transactional_id_.empty()) {
        transactional_id_ = absl::StrCat("outboxd-", router_.source);
        std::replace(transactional_id_.begin(), transactional_id_.end(), '/',
                     '-');
      }
      producer_options.transactional_id = transactional_id_;
    }
    if (metrics::OutboxdMetrics* m = options_.metrics) {
      producer_options.on_brokers_up = [m](int up) {
        m->kafka_brokers_up->Set(up);
      };
    }
    ASSIGN_OR_RETURN(
        producer_,
        KafkaProducer::Create(producer_options,
                              [this](uint64_t sequence, absl::Status status) {
                                OnDelivery(sequence, std::move(status));
                              }));
    catalog_ = std::make_unique<TopicCatalog>(
        [producer = producer_.get()](const std::string& topic) {
          return producer->LookupTopic(topic, kTopicLookupTimeout);
        });
    return absl::OkStatus();
  }

  // The dev broker (librdkafka's mock cluster) accepts the transactional
  // requests but keeps aborted records visible and drops the offsets
  // committed in a transaction: exactly-once cannot hold there.
  absl::Status CheckBrokerHasTransactions() {
    ASSIGN_OR_RETURN(std::string cluster,
                     producer_->ClusterId(absl::Seconds(10)));
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
  // aborting its open transaction), then reads this source's checkpoint.
  // Status updates keep going out meanwhile.
  absl::Status PrepareTransactions(PgConnection& conn) {
    const absl::Time deadline = absl::Now() + kTxnPrepareTimeout;
    while (!transactions_initialized_) {
      absl::Status s = producer_->InitTransactions(kTxnCallTimeout);
      if (s.ok()) {
        transactions_initialized_ = true;
        break;
      }
      if (!absl::IsUnavailable(s) || absl::Now() > deadline) return s;
      spdlog::debug("exactly-once: init_transactions: {}",
                    std::string(s.message()));
      RETURN_IF_ERROR(SendStatusIfDue(/*force=*/false));
    }
    std::vector<CommittedOffset> offsets;
    bool logged_wait = false;
    for (;;) {
      absl::StatusOr<std::vector<CommittedOffset>> o = ReadCheckpoints(
          options_.producer, transactional_id_, absl::Seconds(5));
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
      RETURN_IF_ERROR(SendStatusIfDue(/*force=*/false));
      absl::SleepFor(absl::Milliseconds(100));
    }
    ASSIGN_OR_RETURN(checkpoint_, NewestCheckpoint(offsets, router_.source,
                                                   transactional_id_));
    if (checkpoint_.has_value()) {
      // A checkpoint past the database's WAL comes from another history
      // (a cluster restored from a backup): its positions say nothing
      // about this one's events, and skipping by it could lose them.
      ASSIGN_OR_RETURN(
          PgResult r,
          conn.Exec("SELECT CASE WHEN pg_is_in_recovery() THEN "
                    "pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() "
                    "END::text"));
      absl::StatusOr<Lsn> wal =
          Lsn::Parse(PQntuples(r.get()) == 1 ? PQgetvalue(r.get(), 0, 0) : "");
      if (!wal.ok() || checkpoint_->commit_lsn > *wal) {
        return absl::FailedPreconditionError(absl::StrCat(
            "the exactly-once checkpoint of transactional id ",
            transactional_id_, " is at ", checkpoint_->commit_lsn.ToString(),
            "#", checkpoint_->index, ", past the database's WAL position ",
            wal.ok() ? wal->ToString() : "(unknown)",
            ": the database was restored or re-initialised; start with a new "
            "--transactional-id"));
      }
    }
    transactions_ready_ = true;
    spdlog::info("exactly-once: transactional id {}, checkpoint {}",
                 transactional_id_,
                 checkpoint_.has_value()
                     ? absl::StrCat(checkpoint_->commit_lsn.ToString(), "#",
                                    checkpoint_->index)
                     : std::string("none"));
    return absl::OkStatus();
  }

  // Commits the open Kafka transaction with its checkpoint and
  // acknowledges its events. A transaction that must be aborted, or a
  // fenced producer, stops the pipeline without confirming past them.
  absl::Status CommitOpenTransaction(
      absl::Time deadline = absl::InfiniteFuture()) {
    if (!exactly_once_ || !batch_.open()) return absl::OkStatus();
    RETURN_IF_ERROR(DeliveryFailureInTransaction());
    if (batch_.size() > 0 && !checkpoint_sent_) {
      // The records first: the group coordinator refuses an offset for a
      // topic it does not know yet (one auto-created by these records).
      while (producer_->OutQueueLength() > 0) {
        producer_->Flush(kTxnCallTimeout).IgnoreError();
        RETURN_IF_ERROR(DeliveryFailureInTransaction());
        RETURN_IF_ERROR(FencedOrFatal());
        if (absl::Now() > deadline) {
          return TransactionFailed(absl::DeadlineExceededError(
              "records of the transaction still in flight"));
        }
        RETURN_IF_ERROR(SendStatusIfAlive());
      }
      const EventPosition& last = batch_.last_position();
      std::string metadata = EncodeCheckpoint(Checkpoint{router_.source, last});
      for (;;) {
        absl::Status s = producer_->SendCheckpoint(
            transactional_id_, batch_.first_topic(), /*partition=*/0,
            CheckpointOffset(last), metadata, kTxnCallTimeout);
        if (s.ok()) break;
        if (!absl::IsUnavailable(s) || absl::Now() > deadline) {
          return TransactionFailed(s);
        }
        RETURN_IF_ERROR(SendStatusIfAlive());
      }
      checkpoint_sent_ = true;
    }
    for (;;) {
      absl::Status s = producer_->CommitTransaction(kTxnCallTimeout);
      if (s.ok()) break;
      if (!absl::IsUnavailable(s) || absl::Now() > deadline) {
        return TransactionFailed(s);
      }
      // Not known yet (records still in flight): calling again resumes.
      RETURN_IF_ERROR(SendStatusIfAlive());
    }
    checkpoint_sent_ = false;
    if (batch_.size() > 0) checkpoint_ = batch_.last_position();
    std::vector<uint64_t> committed = batch_.TakeCommitted();
    for (uint64_t sequence : committed) tracker_.Acknowledge(sequence);
    stats_->events_acknowledged += committed.size();
    ++stats_->transactions_committed;
    spdlog::debug(
        "exactly-once: committed a Kafka transaction of {} events, "
        "checkpoint {}#{}",
        committed.size(),
        checkpoint_.has_value() ? checkpoint_->commit_lsn.ToString()
                                : std::string("-"),
        checkpoint_.has_value() ? checkpoint_->index : 0);
    return absl::OkStatus();
  }

  // The producer's fatal error, explained when it is a fencing.
  absl::Status FencedOrFatal() {
    absl::Status fatal = producer_->fatal_error();
    if (fatal.ok() || !exactly_once_) return fatal;
    return TransactionFailed(absl::AbortedError(fatal.message()));
  }

  // Status updates while a transactional call waits; the stream may be
  // gone already (a reconnect commits first).
  absl::Status SendStatusIfAlive() {
    if (stream_ == nullptr) return absl::OkStatus();
    absl::Status s = SendStatusIfDue(/*force=*/false);
    // A lost connection is not the transaction's problem: the commit goes
    // on, and the reconnect that follows notices it again.
    if (absl::IsUnavailable(s)) {
      stream_.reset();
      return absl::OkStatus();
    }
    return s;
  }

  // A delivery inside the open transaction failed: it cannot commit.
  absl::Status DeliveryFailureInTransaction() {
    if (txn_delivery_failure_.ok()) return absl::OkStatus();
    return TransactionFailed(absl::FailedPreconditionError(
        absl::StrCat("a delivery failed: ", txn_delivery_failure_.message())));
  }

  // The transaction cannot commit: abort it (unless fenced) and stop. Its
  // events were never acknowledged, so nothing past them is confirmed; the
  // next start resends them from the slot and skips what the checkpoint
  // covers.
  absl::Status TransactionFailed(const absl::Status& cause) {
    aborting_ = true;
    if (absl::IsAborted(cause)) {
      batch_.Aborted();
      return absl::AbortedError(absl::StrCat(
          "exactly-once: this producer was fenced or failed for good (",
          cause.message(), "); another outboxd with transactional id ",
          transactional_id_,
          " has probably taken over. Stopping without confirming past the "
          "uncommitted events"));
    }
    absl::Status abort = producer_->AbortTransaction(absl::Seconds(10));
    batch_.Aborted();
    return absl::AbortedError(absl::StrCat(
        "exactly-once: Kafka transaction aborted (", cause.message(), ")",
        abort.ok() ? "" : absl::StrCat(" [abort: ", abort.message(), "]"),
        ". Stopping without confirming past its events; a restart resends "
        "them from the slot"));
  }

  // A lost connection, a restarting server or a slot active in another
  // process; not a broken producer or a failed delivery.
  bool Reconnectable(const absl::Status& s) const {
    return absl::IsUnavailable(s) && tracker_.failure().ok() &&
           txn_delivery_failure_.ok() &&
           (producer_ == nullptr || producer_->fatal_error().ok());
  }

  // Setup() until it succeeds, with capped jittered backoff while the cause
  // is kUnavailable. OK with stream_ == nullptr when stopped meanwhile.
  absl::Status ConnectWithRetry(const std::atomic<bool>& stop) {
    ReconnectBackoff backoff(options_.reconnect);
    const absl::Time since = absl::Now();
    std::string last_cause;
    for (int attempt = 1;; ++attempt) {
      absl::Status s = Setup();
      if (s.ok()) {
        if (attempt > 1) {
          spdlog::info("connected after {} attempts in {}", attempt,
                       absl::FormatDuration(absl::Now() - since));
        }
        return s;
      }
      stream_.reset();
      if (absl::IsCancelled(s) && stop.load()) return absl::OkStatus();
      if (!Reconnectable(s)) return s;
      const absl::Duration give_up = options_.reconnect.give_up_after;
      if (give_up > absl::ZeroDuration() && absl::Now() - since > give_up) {
        return absl::UnavailableError(
            absl::StrCat(s.message(), " (gave up after ",
                         absl::FormatDuration(give_up), ")"));
      }
      // One line per distinct cause, not one per attempt: a standby waits
      // quietly while the slot is active elsewhere.
      std::string cause(s.message());
      if (cause.find("is active for PID") != std::string::npos) {
        cause = "replication slot is active in another process";
      }
      absl::Duration delay = backoff.Next();
      if (cause != last_cause) {
        spdlog::info("cannot stream yet: {}; retrying with backoff up to {}",
                     std::string(s.message()),
                     absl::FormatDuration(options_.reconnect.max_backoff));
        last_cause = cause;
      } else {
        spdlog::debug("attempt {}: {}; next in {}", attempt,
                      std::string(s.message()), absl::FormatDuration(delay));
      }
      const absl::Time until = absl::Now() + delay;
      while (absl::Now() < until) {
        if (stop.load(std::memory_order_relaxed)) return absl::OkStatus();
        // Deliveries go on meanwhile; failures stop the wait.
        if (producer_ != nullptr) {
          producer_->Poll(
              std::min(until - absl::Now(), absl::Milliseconds(50)));
          RETURN_IF_ERROR(producer_->fatal_error());
          RETURN_IF_ERROR(tracker_.failure());
          RETURN_IF_ERROR(txn_delivery_failure_);
        } else {
          absl::SleepFor(std::min(until - absl::Now(), absl::Milliseconds(50)));
        }
      }
    }
  }

  // The replication connection is gone. The server resends, from the
  // confirmed position, every transaction whose Commit we did not see:
  // what was received of one is dropped (duplicates at worst, never a loss).
  void ResetSession() {
    if (options_.metrics != nullptr) options_.metrics->streaming->Set(0);
    stream_.reset();
    if (pending_.has_value()) {
      // Never produced; it belongs to the open transaction, resent later.
      published_.erase(pending_->sequence);
      tracker_.Acknowledge(pending_->sequence);
      pending_.reset();
    }
    tracker_.AbandonOpenTransaction();
    mapper_ = OutboxMapper(options_.mapper);  // Relation messages come again
  }

  void OnDelivery(uint64_t sequence, absl::Status status) {
    ObserveDelivery(sequence, status);
    if (exactly_once_) {
      // Written, not committed: acknowledged when the transaction commits.
      // A failure dooms the open transaction (reports of records purged
      // by our own abort come after it and change nothing).
      if (!status.ok() && !aborting_) {
        spdlog::error("delivery of event #{} failed: {}", sequence,
                      status.ToString());
        if (txn_delivery_failure_.ok()) txn_delivery_failure_ = status;
      }
      return;
    }
    if (status.ok()) {
      tracker_.Acknowledge(sequence);
      ++stats_->events_acknowledged;
    } else {
      spdlog::error("delivery of event #{} failed: {}", sequence,
                    status.ToString());
      tracker_.Fail(sequence, std::move(status));
    }
  }

  absl::Status Stream(const std::atomic<bool>& stop) {
    absl::Time next_progress = absl::Now() + kProgressLogInterval;
    while (!stop.load(std::memory_order_relaxed)) {
      producer_->Poll(absl::ZeroDuration());
      RETURN_IF_ERROR(FencedOrFatal());
      RETURN_IF_ERROR(tracker_.failure());
      RETURN_IF_ERROR(SendStatusIfDue(/*force=*/false));
      if (exactly_once_) {
        RETURN_IF_ERROR(DeliveryFailureInTransaction());
        const bool at_boundary =
            !mapper_.in_transaction() && !pending_.has_value();
        if (batch_.CommitDue(absl::Now(), at_boundary)) {
          RETURN_IF_ERROR(CommitOpenTransaction());
          if (stream_ == nullptr) {
            return absl::UnavailableError(
                "replication connection lost during a Kafka commit");
          }
        }
      }

      absl::Time now = absl::Now();
      if (now >= next_progress) {
        LogProgress();
        next_progress = now + kProgressLogInterval;
      }

      absl::Duration until_status =
          std::max(next_status_ - now, absl::ZeroDuration());
      if (pending_.has_value()) {
        // Backpressure: do not read the socket until the queue has room.
        RETURN_IF_ERROR(TryProducePending());
        if (pending_.has_value()) {
          producer_->Poll(std::min(until_status, absl::Milliseconds(50)));
        }
        continue;
      }

      absl::Duration wait = until_status;
      if (tracker_.EventsInFlight() > 0) {
        wait = std::min(wait, kBusyPollInterval);
      }
      if (exactly_once_) {
        wait = std::min(
            wait, std::max(batch_.Deadline() - now, absl::ZeroDuration()));
      }
      ASSIGN_OR_RETURN(auto message, stream_->Read(wait));
      if (message.has_value()) RETURN_IF_ERROR(OnCopyMessage(*message));
    }
    spdlog::info("stop requested");
    return absl::OkStatus();
  }

  absl::Status OnCopyMessage(const ServerCopyMessage& message) {
    if (const auto* keepalive = std::get_if<PrimaryKeepalive>(&message)) {
      received_ = Lsn::Max(received_, keepalive->wal_end);
      tracker_.ObserveServerWalEnd(keepalive->wal_end);
      if (keepalive->reply_requested) {
        return SendStatusIfDue(/*force=*/true);
      }
      return absl::OkStatus();
    }
    const auto& data = std::get<XLogData>(message);
    received_ = Lsn::Max(received_, data.wal_end);
    ASSIGN_OR_RETURN(pgoutput::PgOutputMessage decoded,
                     pgoutput::Decode(data.data));
    ASSIGN_OR_RETURN(MappedMessage mapped, mapper_.Apply(decoded));
    if (auto* begin = std::get_if<TransactionBegin>(&mapped)) {
      tracker_.BeginTransaction();
      commit_time_ = begin->commit_time_unix_us;
    } else if (auto* event = std::get_if<OutboxEvent>(&mapped)) {
      RETURN_IF_ERROR(Publish(std::move(*event)));
    } else if (auto* bad = std::get_if<InvalidEvent>(&mapped)) {
      RETURN_IF_ERROR(OnInvalid(std::move(*bad)));
    } else if (auto* commit = std::get_if<TransactionCommit>(&mapped)) {
      tracker_.CommitTransaction(commit->end_lsn);
      commit_times_.emplace_back(commit->end_lsn, commit_time_);
      if (commit_times_.size() > kMaxCommitTimes) commit_times_.pop_front();
    }
    if (!mapper_.in_transaction()) {
      tracker_.ObserveServerWalEnd(data.wal_end);
    }
    return absl::OkStatus();
  }

  // Metrics of one delivery report (no-op without metrics).
  void ObserveDelivery(uint64_t sequence, const absl::Status& status) {
    metrics::OutboxdMetrics* m = options_.metrics;
    if (m == nullptr) return;
    if (!status.ok()) m->delivery_errors->Increment();
    auto it = published_.find(sequence);
    if (it == published_.end()) return;  // a dead-lettered record
    if (status.ok()) {
      m->PublishedTo(it->second.topic).Increment();
      int64_t ms =
          absl::ToUnixMillis(absl::Now()) - it->second.commit_time_unix_ms;
      m->commit_to_ack_seconds->Observe(std::max<int64_t>(ms, 0) / 1000.0);
    }
    published_.erase(it);
  }

  absl::Status Publish(OutboxEvent event) {
    reserved_header_log_.Note(
        event, absl::StrCat(event.position.commit_lsn.ToString(), "#",
                            event.position.index));
    PublishedEvent meta;
    if (options_.metrics != nullptr) {
      meta.topic =
          options_.router.fixed_topic.empty()
              ? absl::StrCat(options_.router.topic_prefix, event.aggregate_type)
              : options_.router.fixed_topic;
      meta.commit_time_unix_ms = event.commit_time_unix_ms;
    }
    if (options_.value_format != ValueFormat::kPayload) {
      // The router publishes the payload as the value: make it the envelope.
      event.payload = EncodeValue(event, options_.value_format);
    }
    pending_ = Pending{std::move(event), tracker_.AddEvent()};
    if (options_.metrics != nullptr) {
      published_[pending_->sequence] = std::move(meta);
    }
    return TryProducePending();
  }

  // Counts and logs an invalid event; the error that stops the pipeline
  // under --on-invalid=fail, OK when it is to be dead-lettered.
  absl::Status ReportInvalid(const InvalidEvent& bad) {
    if (options_.metrics != nullptr)
      options_.metrics->invalid_events->Increment();
    spdlog::warn("invalid event at {}#{}: {}",
                 bad.position.commit_lsn.ToString(), bad.position.index,
                 bad.reason);
    if (options_.on_invalid == InvalidEventPolicy::kFail) {
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid event at ", bad.position.commit_lsn.ToString(), "#",
          bad.position.index, ": ", bad.reason,
          " (--on-invalid=fail; the slot is not confirmed past it)"));
    }
    return absl::OkStatus();
  }

  absl::Status OnInvalid(InvalidEvent bad) {
    RETURN_IF_ERROR(ReportInvalid(bad));
    pending_ = Pending{std::move(bad), tracker_.AddEvent()};
    return TryProducePending();
  }

  // Produces pending_; leaves it in place when the queue is full.
  absl::Status TryProducePending() {
    absl::Status s;
    if (auto* event = std::get_if<OutboxEvent>(&pending_->item)) {
      KafkaRecord record = Route(*event, router_);
      if (AlreadyInKafka(event->position)) return SkipPending();
      absl::Status topic = CheckTopic(record.topic);
      if (absl::IsUnavailable(topic)) return absl::OkStatus();  // retry later
      if (!topic.ok()) {
        // The topic cannot take it: an invalid event (--on-invalid).
        InvalidEvent bad = Misrouted(*event, record.topic, topic);
        published_.erase(pending_->sequence);
        pending_->item = std::move(bad);
        return OnMisrouted();
      }
      RETURN_IF_ERROR(EnsureTransaction());
      s = producer_->Produce(record, pending_->sequence);
      if (s.ok()) {
        if (exactly_once_) {
          batch_.Produced(pending_->sequence, event->position, record.topic);
        }
        ++stats_->events_produced;
      } else if (!absl::IsResourceExhausted(s)) {
        // Not retriable as it is: dead-letter it (or fail, by policy).
        InvalidEvent bad = Unproducible(*event, s);
        if (options_.on_invalid == InvalidEventPolicy::kFail) {
          return absl::InvalidArgumentError(bad.reason);
        }
        spdlog::warn("event {} at {}#{}: {}", event->id,
                     bad.position.commit_lsn.ToString(), bad.position.index,
                     bad.reason);
        published_.erase(pending_->sequence);
        pending_->item = std::move(bad);
        return TryProducePending();
      }
    } else {
      const auto& bad = std::get<InvalidEvent>(pending_->item);
      KafkaRecord record = DeadLetterRecord(bad, options_.dlq_topic);
      if (AlreadyInKafka(bad.position)) return SkipPending();
      absl::Status topic = CheckTopic(record.topic);
      if (absl::IsUnavailable(topic)) return absl::OkStatus();  // retry later
      if (!topic.ok()) {
        // Never dropped: the event stays unconfirmed, resent on restart.
        return absl::FailedPreconditionError(absl::StrCat(
            "cannot dead-letter the invalid event at ",
            bad.position.commit_lsn.ToString(), "#", bad.position.index, " (",
            bad.reason, "): dead-letter topic: ", topic.message(),
            "; the slot is not confirmed past it"));
      }
      RETURN_IF_ERROR(EnsureTransaction());
      s = producer_->Produce(record, pending_->sequence);
      if (s.ok()) {
        if (exactly_once_) {
          batch_.Produced(pending_->sequence, bad.position, record.topic);
        }
        ++stats_->events_dead_lettered;
        if (options_.metrics != nullptr) {
          options_.metrics->dead_lettered->Increment();
        }
      } else if (!absl::IsResourceExhausted(s)) {
        return absl::Status(
            s.code(), absl::StrCat("dead-lettering to ", options_.dlq_topic,
                                   " failed: ", s.message()));
      }
    }
    if (s.ok()) pending_.reset();
    return absl::OkStatus();
  }

  // --delivery=exactly-once: the event is at or below this source's
  // checkpoint, so a committed Kafka transaction holds it (it was resent by
  // the slot after a restart or reconnect). Nothing else is ever skipped.
  bool AlreadyInKafka(const EventPosition& position) const {
    return exactly_once_ && checkpoint_.has_value() && position <= *checkpoint_;
  }

  // The catalog's answer for `topic`; kUnavailable (cannot tell yet) is
  // logged once per distinct cause, the caller keeps the event pending.
  absl::Status CheckTopic(const std::string& topic) {
    absl::Status s = catalog_->Check(topic);
    if (absl::IsUnavailable(s)) {
      if (s.message() != last_topic_wait_) {
        spdlog::warn("{}; the event waits", std::string(s.message()));
        last_topic_wait_ = std::string(s.message());
      }
    } else {
      last_topic_wait_.clear();
    }
    return s;
  }

  // pending_ became an invalid event because its topic cannot take it.
  absl::Status OnMisrouted() {
    RETURN_IF_ERROR(ReportInvalid(std::get<InvalidEvent>(pending_->item)));
    return TryProducePending();
  }

  // --delivery=exactly-once: a record goes into an open Kafka transaction.
  absl::Status EnsureTransaction() {
    if (!exactly_once_ || batch_.open()) return absl::OkStatus();
    RETURN_IF_ERROR(producer_->BeginTransaction());
    batch_.Began(absl::Now());
    return absl::OkStatus();
  }

  // The pending event is in Kafka already (written before a restart): it
  // counts as acknowledged.
  absl::Status SkipPending() {
    ++stats_->events_skipped;
    published_.erase(pending_->sequence);
    tracker_.Acknowledge(pending_->sequence);
    pending_.reset();
    return absl::OkStatus();
  }

  absl::Status SendStatusIfDue(bool force) {
    absl::Time now = absl::Now();
    if (!force && now < next_status_) return absl::OkStatus();
    RETURN_IF_ERROR(RecordProgress(now, force));
    // Never past the record: a slot ahead of it is a lost slot.
    Lsn flushed = std::min(tracker_.ConfirmableLsn(), state_->recorded());
    RETURN_IF_ERROR(stream_->SendStatus(Lsn::Max(received_, flushed), flushed,
                                        /*reply_requested=*/false));
    if (flushed != reported_) {
      spdlog::debug("confirmed {}", flushed.ToString());
      reported_ = flushed;
    }
    stats_->confirmed = flushed.value();
    if (metrics::OutboxdMetrics* m = options_.metrics) {
      m->confirmed_lsn->Set(static_cast<double>(flushed.value()));
      m->server_wal_end->Set(static_cast<double>(received_.value()));
      m->slot_lag_bytes->Set(
          received_ > flushed
              ? static_cast<double>(received_.value() - flushed.value())
              : 0.0);
      m->events_in_flight->Set(static_cast<double>(tracker_.EventsInFlight()));
    }
    next_status_ = now + options_.status_interval;
    return absl::OkStatus();
  }

  // Writes the acknowledged position to the publisher state (before it is
  // reported): at most once per status interval, when it moved, and for a
  // position moved by keepalives alone at most every kIdleRecordIntervals
  // (unless the server asks for a reply). A failed write only holds the
  // reported position back, except while PostgreSQL shuts down: its
  // walsender waits for the flush position to reach the end of the WAL,
  // which cannot be recorded any more, so the stream ends (kUnavailable) and
  // outboxd reconnects once the server is back.
  absl::Status RecordProgress(absl::Time now, bool reply_requested) {
    const Lsn ackable = tracker_.ConfirmableLsn();
    if (ackable <= state_->recorded()) return absl::OkStatus();
    if (!finishing_ && now < next_record_) return absl::OkStatus();
    std::optional<int64_t> commit_time;  // microseconds
    size_t covered = 0;
    for (const auto& [end_lsn, time] : commit_times_) {
      if (end_lsn > ackable) break;
      commit_time = time;
      ++covered;
    }
    if (covered == 0 && !finishing_ && !reply_requested &&
        now < next_idle_record_) {
      return absl::OkStatus();
    }
    absl::Status s = state_->Record(ackable, commit_time);
    next_record_ = now + options_.status_interval;
    if (!s.ok()) {
      if (IsServerShuttingDown(s)) {
        return absl::UnavailableError(absl::StrCat(
            "PostgreSQL is shutting down and the acknowledged position ",
            ackable.ToString(), " cannot be recorded (", s.message(),
            "): ending the stream at ", state_->recorded().ToString()));
      }
      spdlog::warn(
          "cannot record the acknowledged position {} in {}: {}; "
          "not confirming past {}",
          ackable.ToString(), kPublisherStateTable, s.ToString(),
          state_->recorded().ToString());
      return absl::OkStatus();
    }
    commit_times_.erase(commit_times_.begin(), commit_times_.begin() + covered);
    next_idle_record_ = now + kIdleRecordIntervals * options_.status_interval;
    return absl::OkStatus();
  }

  static bool IsServerShuttingDown(const absl::Status& s) {
    for (absl::string_view mark :
         {"shutting down", "57P01", "57P03",
          "terminating connection due to administrator command",
          "server closed the connection unexpectedly"}) {
      if (absl::StrContains(s.message(), mark)) return true;
    }
    return false;
  }

  void LogProgress() {
    const MapperCounters& c = mapper_.counters();
    spdlog::info(
        "events produced {} acknowledged {} dead-lettered {} in flight {}, "
        "confirmed {}, ignored: other tables {} updates {} deletes {} "
        "non-transactional messages {}",
        stats_->events_produced, stats_->events_acknowledged,
        stats_->events_dead_lettered, tracker_.EventsInFlight(),
        tracker_.ConfirmableLsn().ToString(), c.ignored_other_tables,
        c.ignored_updates, c.ignored_deletes,
        c.ignored_nontransactional_messages);
  }

  // Waits for outstanding deliveries (bounded), confirms what is
  // acknowledged and ends the stream. After a failure it only confirms.
  absl::Status Finish(bool clean) {
    if (options_.metrics != nullptr) options_.metrics->streaming->Set(0);
    absl::Status final_commit;  // exactly-once: the last transaction's
    if (exactly_once_ && producer_ != nullptr && batch_.open()) {
      if (clean) {
        // What was produced is committed (with its checkpoint), then
        // confirmed; a partly produced PostgreSQL transaction is resent
        // by the next start and its committed part skipped.
        final_commit =
            CommitOpenTransaction(absl::Now() + options_.shutdown_timeout);
        if (!final_commit.ok()) {
          spdlog::error("{}", std::string(final_commit.message()));
        }
      } else if (producer_->fatal_error().ok()) {
        // Read-committed consumers would wait for it until it times out.
        aborting_ = true;
        producer_->AbortTransaction(absl::Seconds(5)).IgnoreError();
        batch_.Aborted();
      }
    } else if (producer_ != nullptr && clean) {
      absl::Time deadline = absl::Now() + options_.shutdown_timeout;
      while (producer_->OutQueueLength() > 0 && absl::Now() < deadline) {
        producer_->Poll(absl::Milliseconds(50));
        if (stream_ != nullptr) SendStatusIfDue(false).IgnoreError();
      }
      if (producer_->OutQueueLength() > 0) {
        spdlog::warn("{} events not acknowledged at stop; they will be resent",
                     producer_->OutQueueLength());
      }
    }
    absl::Status s;
    if (stream_ != nullptr) {
      finishing_ = true;  // record what is acknowledged, whatever the timers
      s = SendStatusIfDue(/*force=*/true);
      absl::Status stopped = stream_->Stop();
      if (s.ok()) s = stopped;
    }
    LogProgress();
    spdlog::info("confirmed position {}", tracker_.ConfirmableLsn().ToString());
    if (exactly_once_) {
      spdlog::info(
          "exactly-once: {} transactions committed, {} resent events "
          "skipped (at or below the checkpoint)",
          stats_->transactions_committed, stats_->events_skipped);
    }
    // A last transaction that did not commit is not confirmed: exit 1.
    return s.ok() ? final_commit : s;
  }

  const CdcPipelineOptions& options_;
  PipelineStats* stats_;
  OutboxMapper mapper_;
  RouterOptions router_;  // options.router plus the source identity
  AckTracker tracker_;
  // --delivery=exactly-once only.
  const bool exactly_once_;
  TransactionBatch batch_;        // the open Kafka transaction
  std::string transactional_id_;  // also the checkpoint's consumer group
  // This source's newest committed checkpoint: every event at or below it
  // is in Kafka.
  std::optional<EventPosition> checkpoint_;
  bool broker_checked_ = false;
  bool transactions_initialized_ = false;
  bool transactions_ready_ = false;  // initialised, checkpoint read
  bool checkpoint_sent_ = false;     // for the open transaction
  bool aborting_ = false;
  absl::Status txn_delivery_failure_;
  // Declared after the tracker: destroyed first, so no delivery report can
  // reach a destroyed tracker.
  std::unique_ptr<KafkaProducer> producer_;
  // Asks producer_ whether a topic can take records (names, existence).
  std::unique_ptr<TopicCatalog> catalog_;
  std::string last_topic_wait_;  // the last "cannot tell yet" logged
  std::unique_ptr<ReplicationStream> stream_;
  // outboxd's record of its position (pg/publisher_state.h); opened by the
  // first Setup().
  std::unique_ptr<PublisherStateStore> state_;
  // (end LSN, commit time) of decoded transactions not yet recorded.
  std::deque<std::pair<Lsn, int64_t>> commit_times_;
  int64_t commit_time_ = 0;  // of the transaction being decoded, unix us
  absl::Time next_record_ = absl::InfinitePast();
  absl::Time next_idle_record_ = absl::InfinitePast();
  // START_REPLICATION failed because the slot is invalidated.
  bool start_said_invalidated_ = false;
  bool finishing_ = false;
  const std::atomic<bool>* stop_ = nullptr;
  std::optional<Pending> pending_;
  // Topic and commit time of each event in flight, by sequence (metrics).
  struct PublishedEvent {
    std::string topic;
    int64_t commit_time_unix_ms = 0;
  };
  absl::flat_hash_map<uint64_t, PublishedEvent> published_;
  Lsn received_;  // newest server position seen
  Lsn reported_;  // last flush position reported
  absl::Time next_status_ = absl::InfinitePast();
  ReservedHeaderLog reserved_header_log_;
};

}  // namespace

absl::Status RunCdcPipeline(const CdcPipelineOptions& options,
                            const std::atomic<bool>& stop,
                            PipelineStats* stats) {
  PipelineStats local;
  CdcPipeline pipeline(options, stats != nullptr ? stats : &local);
  return pipeline.Run(stop);
}

}  // namespace outboxd
