#include "sources/cdc_source.h"

#include <algorithm>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "pg/connection.h"
#include "pg/pgoutput.h"
#include "pg/replication_stream.h"

namespace outboxd {
namespace {

// A position that moved only through server keepalives (no transaction
// acknowledged since the last record) is recorded at most once per this many
// status intervals: each record is a write, so WAL, which moves the
// keepalive position again.
constexpr int kIdleRecordIntervals = 10;
// Commit times kept for positions not yet recorded; the oldest are dropped
// beyond this (an older commit time is recorded instead: more republished,
// never fewer).
constexpr size_t kMaxCommitTimes = 1 << 20;

SourcePosition AsPosition(Lsn lsn) { return SourcePosition(lsn.value()); }

// PostgreSQL is shutting down, crash-restarting or out of reach: the
// session was ended (57P01 admin_shutdown, 57P02 crash_shutdown),
// connections are refused while it stops (57P03 cannot_connect_now), or the
// connection is lost or refused (kUnavailable without a SQLSTATE: an error
// libpq made itself).
bool IsServerShuttingDown(const absl::Status& s) {
  if (HasSqlState(s, sqlstate::kAdminShutdown) ||
      HasSqlState(s, sqlstate::kCrashShutdown) ||
      HasSqlState(s, sqlstate::kCannotConnectNow)) {
    return true;
  }
  return absl::IsUnavailable(s) && !SqlState(s).has_value();
}

class CdcSource final : public EventSource {
 public:
  CdcSource(CdcSourceOptions options, metrics::OutboxdMetrics& metrics)
      : options_(std::move(options)), m_(metrics), mapper_(options_.mapper) {}

  absl::StatusOr<ConnectResult> Connect(const ConnectContext& ctx) override {
    std::unique_ptr<PgConnection> conn = std::move(standby_conn_);
    if (conn != nullptr) {
      // A standby: one query on the connection it kept tells whether the
      // slot is still taken; the rest is done once it is free.
      absl::StatusOr<std::optional<SlotInfo>> slot =
          InspectSlot(*conn, options_.setup);
      if (slot.ok() && slot->has_value() && (*slot)->active) {
        return SlotTaken(std::move(conn));
      }
      if (!slot.ok()) conn.reset();  // a new connection, all checks again
    }
    if (conn == nullptr) {
      ASSIGN_OR_RETURN(conn,
                       PgConnection::Connect(options_.conninfo,
                                             PgConnection::Mode::kNormal));
    }
    RETURN_IF_ERROR(CheckWalLevel(*conn));
    RETURN_IF_ERROR(EnsurePublication(*conn, options_.setup));
    // outbox.source: the stream's identity (it changes only when the
    // database is another cluster, which the slot check below catches).
    ASSIGN_OR_RETURN(identity_, SourceIdentity(*conn, options_.setup.slot));
    if (state_ == nullptr) {
      ASSIGN_OR_RETURN(
          state_, PublisherStateStore::Open(options_.conninfo,
                                            options_.setup.slot, identity_));
    }
    // The slot first, then the record (sources/slot_loss.h).
    ASSIGN_OR_RETURN(std::optional<SlotInfo> slot,
                     InspectSlot(*conn, options_.setup));
    if (slot.has_value() && slot->active) return SlotTaken(std::move(conn));
    ASSIGN_OR_RETURN(std::optional<PublisherState> recorded, state_->Read());
    ASSIGN_OR_RETURN(SlotVerdict verdict,
                     JudgeSlot(slot, recorded, identity_, options_.setup.slot));
    if (verdict.kind == SlotVerdict::Kind::kResume && start_said_invalidated_) {
      verdict = {SlotVerdict::Kind::kLost,
                 "START_REPLICATION says the slot is invalidated"};
    }
    ASSIGN_OR_RETURN(XminSample sample, state_->TakeSample());
    Lsn start;
    bool new_stream = ctx.first;
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
                         RecoverLostSlot(*conn, slot, *recorded, verdict, ctx));
        new_stream = true;
        break;
    }
    ConnectResult result;
    durable_ = Lsn(ctx.durable.value());
    if (new_stream) {
      result.restart_at = AsPosition(start);
      durable_ = start;
      reported_ = start;
      commit_times_.clear();
    }
    spdlog::info("source {}", identity_);
    ReplicationStreamOptions so;
    so.conninfo = options_.conninfo;
    so.slot = options_.setup.slot;
    so.publication = options_.setup.publication;
    // From what is durable: the server skips transactions before it.
    absl::StatusOr<std::unique_ptr<ReplicationStream>> stream =
        ReplicationStream::Start(so, durable_);
    if (!stream.ok() && IsSlotInvalidatedError(stream.status()) &&
        recorded.has_value()) {
      // Invalidated since the check: judged again on the next attempt.
      start_said_invalidated_ = true;
      if (options_.on_slot_loss == SlotLossPolicy::kFail) {
        m_.slot_lost->Set(1);
        return absl::DataLossError(SlotLossMessage(
            options_.setup.slot,
            {SlotVerdict::Kind::kLost, std::string(stream.status().message())},
            *recorded));
      }
      return absl::UnavailableError(stream.status().message());
    }
    if (!stream.ok() && HasSqlState(stream.status(), sqlstate::kObjectInUse)) {
      // Taken between the check and START_REPLICATION.
      return SlotTaken(std::move(conn));
    }
    ASSIGN_OR_RETURN(stream_, std::move(stream));
    result.identity = identity_;
    result.ready_line =
        absl::StrCat("streaming from slot ", options_.setup.slot,
                     " (publication ", options_.setup.publication, ")");
    return result;
  }

  // The slot is active in another process (the active instance, when this
  // one is a standby): the connection is kept, and the Publisher asks again
  // after standby_poll_interval (one query), so that this instance takes
  // over within about that much of the slot's release.
  absl::Status SlotTaken(std::unique_ptr<PgConnection> conn) {
    standby_conn_ = std::move(conn);
    return WithRetryAfter(absl::UnavailableError(absl::StrCat(
                              "replication slot ", options_.setup.slot,
                              " is active in another process")),
                          options_.standby_poll_interval);
  }

  void Disconnect() override {
    // The server resends, from the confirmed position, every transaction
    // whose Commit we did not see; Relation messages come again.
    stream_.reset();
    mapper_ = OutboxMapper(options_.mapper);
    reply_requested_ = false;
  }

  absl::StatusOr<SourceRead> Read(absl::Duration wait) override {
    SourceRead out;
    if (wait > absl::ZeroDuration()) {
      wait = std::min(
          wait, std::max(next_status_ - absl::Now(), absl::ZeroDuration()));
    }
    ASSIGN_OR_RETURN(auto message, stream_->Read(wait));
    if (!message.has_value()) return out;
    // Whatever it maps to, a message was there: libpq may hold more (a
    // Relation message inside a transaction maps to nothing, and the rest
    // of the transaction may already be in libpq's buffer, not the socket).
    out.more = true;
    if (const auto* keepalive = std::get_if<PrimaryKeepalive>(&*message)) {
      received_ = Lsn::Max(received_, keepalive->wal_end);
      out.idle_position = AsPosition(keepalive->wal_end);
      // Answered by the next Durable(), once the position is observed.
      if (keepalive->reply_requested) reply_requested_ = true;
      return out;
    }
    const auto& data = std::get<XLogData>(*message);
    received_ = Lsn::Max(received_, data.wal_end);
    ASSIGN_OR_RETURN(pgoutput::PgOutputMessage decoded,
                     pgoutput::Decode(data.data));
    ASSIGN_OR_RETURN(MappedMessage mapped, mapper_.Apply(decoded));
    if (auto* begin = std::get_if<TransactionBegin>(&mapped)) {
      commit_time_ = begin->commit_time_unix_us;
      out.item = SourceBegin{};
    } else if (auto* event = std::get_if<OutboxEvent>(&mapped)) {
      out.item = std::move(*event);
    } else if (auto* bad = std::get_if<InvalidEvent>(&mapped)) {
      out.item = std::move(*bad);
    } else if (auto* commit = std::get_if<TransactionCommit>(&mapped)) {
      out.item = SourceCommit{AsPosition(commit->end_lsn)};
      commit_times_.emplace_back(commit->end_lsn, commit_time_);
      if (commit_times_.size() > kMaxCommitTimes) commit_times_.pop_front();
    }
    if (!mapper_.in_transaction()) out.idle_position = AsPosition(data.wal_end);
    return out;
  }

  // The replication socket.
  int WaitFd() const override {
    return stream_ != nullptr ? stream_->socket() : -1;
  }
  bool InputMayBeBuffered() const override {
    return stream_ != nullptr && stream_->input_may_be_buffered();
  }

  // The next standby status update (now, when a keepalive asked for one).
  absl::Time NextDue() const override {
    if (stream_ == nullptr) return absl::InfiniteFuture();
    return reply_requested_ ? absl::InfinitePast() : next_status_;
  }

  absl::Status Durable(SourcePosition durable) override {
    if (stream_ == nullptr) return absl::OkStatus();
    durable_ = Lsn(durable.value());
    const bool force = reply_requested_;
    reply_requested_ = false;
    return SendStatusIfDue(force);
  }

  absl::Status Finish(SourcePosition durable, bool clean) override {
    if (stream_ == nullptr) return absl::OkStatus();
    durable_ = Lsn(durable.value());
    finishing_ = true;  // record what is acknowledged, whatever the timers
    absl::Status s = SendStatusIfDue(/*force=*/true);
    absl::Status stopped = stream_->Stop();
    stream_.reset();
    return s.ok() ? stopped : s;
  }

  std::string Progress() const override {
    const MapperCounters& c = mapper_.counters();
    return absl::StrCat("ignored: other tables ", c.ignored_other_tables,
                        " updates ", c.ignored_updates, " deletes ",
                        c.ignored_deletes, " non-transactional messages ",
                        c.ignored_nontransactional_messages);
  }

  std::string Describe(SourcePosition position) const override {
    return Lsn(position.value()).ToString();
  }

  absl::Status CheckCheckpoint(const EventPosition& checkpoint) override {
    ASSIGN_OR_RETURN(
        auto conn,
        PgConnection::Connect(options_.conninfo, PgConnection::Mode::kNormal));
    ASSIGN_OR_RETURN(
        PgResult r,
        conn->Exec("SELECT CASE WHEN pg_is_in_recovery() THEN "
                   "pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() "
                   "END::text"));
    absl::StatusOr<Lsn> wal =
        Lsn::Parse(PQntuples(r.get()) == 1 ? PQgetvalue(r.get(), 0, 0) : "");
    if (!wal.ok() || checkpoint.commit_lsn > *wal) {
      return absl::FailedPreconditionError(
          absl::StrCat("past the database's WAL position ",
                       wal.ok() ? wal->ToString() : "(unknown)"));
    }
    return absl::OkStatus();
  }

 private:
  // The slot outboxd streamed from is gone, invalidated or replaced. Fails with
  // the one error line, or (--on-slot-loss=republish) re-creates it,
  // republishes from the outbox table what may have committed after the
  // recorded position and returns the new slot's start.
  absl::StatusOr<Lsn> RecoverLostSlot(PgConnection& conn,
                                      const std::optional<SlotInfo>& slot,
                                      const PublisherState& recorded,
                                      const SlotVerdict& verdict,
                                      const ConnectContext& ctx) {
    m_.slot_lost->Set(1);
    const std::string message =
        SlotLossMessage(options_.setup.slot, verdict, recorded);
    if (options_.on_slot_loss == SlotLossPolicy::kFail ||
        options_.setup.tables.empty() || !options_.republish) {
      return absl::DataLossError(message);
    }
    spdlog::error("{} -- republishing (--on-slot-loss=republish)", message);
    // What is in flight from before the loss goes first (order per
    // aggregate); a failure among it stops here, before anything changes.
    if (ctx.drain_in_flight) RETURN_IF_ERROR(ctx.drain_in_flight());
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
    // Until the republish is acknowledged the record keeps the old position:
    // a crash here finds the new slot past it and starts over.
    ASSIGN_OR_RETURN(RepublishCount r,
                     options_.republish(recorded, start, identity_));
    RETURN_IF_ERROR(state_->Record(start, sample.server_time_unix_us,
                                   sample.xmin,
                                   /*force=*/true));
    start_said_invalidated_ = false;
    spdlog::warn(
        "republished {} events ({} dead-lettered) of {} that may have "
        "committed after {} (margin {}); streaming from the new slot at {}. "
        "Logical decoding messages and rows deleted in their own transaction "
        "during the loss could not be republished",
        r.republished, r.dead_lettered,
        absl::StrJoin(options_.setup.tables, ", ",
                      [](std::string* out, const QualifiedName& t) {
                        out->append(t.ToString());
                      }),
        recorded.last_ack.ToString(),
        absl::FormatDuration(options_.republish_margin), start.ToString());
    m_.republished_events->Increment(static_cast<double>(r.republished));
    m_.slot_lost->Set(0);
    return start;
  }

  absl::Status SendStatusIfDue(bool force) {
    absl::Time now = absl::Now();
    if (!force && now < next_status_) return absl::OkStatus();
    RETURN_IF_ERROR(RecordProgress(now, force));
    // Never past the record: a slot ahead of it is a lost slot.
    Lsn flushed = std::min(durable_, state_->recorded());
    RETURN_IF_ERROR(stream_->SendStatus(Lsn::Max(received_, flushed), flushed,
                                        /*reply_requested=*/false));
    if (flushed != reported_) {
      spdlog::debug("confirmed {}", flushed.ToString());
      reported_ = flushed;
    }
    m_.confirmed_lsn->Set(static_cast<double>(flushed.value()));
    m_.server_wal_end->Set(static_cast<double>(received_.value()));
    m_.slot_lag_bytes->Set(
        received_ > flushed
            ? static_cast<double>(received_.value() - flushed.value())
            : 0.0);
    next_status_ = now + options_.status_interval;
    return absl::OkStatus();
  }

  // Writes the durable position to the publisher state (before it is
  // reported): at most once per status interval, when it moved, and for a
  // position moved by keepalives alone at most every kIdleRecordIntervals
  // (unless the server asks for a reply). A failed write only holds the
  // reported position back, except while PostgreSQL shuts down: its walsender
  // waits for the flush position to reach the end of the WAL, which cannot be
  // recorded any more, so the stream ends (kUnavailable) and outboxd
  // reconnects once the server is back.
  absl::Status RecordProgress(absl::Time now, bool reply_requested) {
    const Lsn ackable = durable_;
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

  const CdcSourceOptions options_;
  metrics::OutboxdMetrics& m_;
  OutboxMapper mapper_;
  std::string identity_;  // outbox.source: "<system id>/<dbname>/<slot>"
  std::unique_ptr<ReplicationStream> stream_;
  // outboxd's record of its position; opened by the first Connect.
  std::unique_ptr<PublisherStateStore> state_;
  // A standby's connection, kept while the slot is active elsewhere.
  std::unique_ptr<PgConnection> standby_conn_;
  // (end LSN, commit time) of decoded transactions not yet recorded.
  std::deque<std::pair<Lsn, int64_t>> commit_times_;
  int64_t commit_time_ = 0;  // of the transaction being decoded, unix us
  absl::Time next_record_ = absl::InfinitePast();
  absl::Time next_idle_record_ = absl::InfinitePast();
  absl::Time next_status_ = absl::InfinitePast();
  // START_REPLICATION failed because the slot is invalidated.
  bool start_said_invalidated_ = false;
  bool finishing_ = false;
  bool reply_requested_ = false;  // a keepalive asked for a status update
  Lsn durable_;   // the last durable position the Publisher gave
  Lsn received_;  // newest server position seen
  Lsn reported_;  // last flush position reported
};

}  // namespace

std::unique_ptr<EventSource> NewCdcSource(CdcSourceOptions options,
                                          metrics::OutboxdMetrics& metrics) {
  return std::make_unique<CdcSource>(std::move(options), metrics);
}

}  // namespace outboxd
