#include "sources/slot_keeper.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace outboxd {
namespace {

// NudgeFailoverSync's window and pace: the standby's slot sync worker
// sleeps up to 30 s between looks when nothing changes.
constexpr absl::Duration kSyncNudgeWindow = absl::Seconds(60);
constexpr absl::Duration kSyncNudgeInterval = absl::Seconds(1);

}  // namespace

StartFailure ClassifyStartFailure(const absl::Status& status, bool recorded) {
  if (IsSlotInvalidatedError(status) && recorded) {
    return StartFailure::kInvalidated;
  }
  if (HasSqlState(status, sqlstate::kObjectInUse)) {
    return StartFailure::kSlotTaken;
  }
  if (HasSqlState(status, sqlstate::kUndefinedObject) &&
      absl::StrContains(status.message(), "replication slot")) {
    return StartFailure::kSlotGone;
  }
  return StartFailure::kOther;
}

SlotVerdict WithStartSaidInvalidated(SlotVerdict verdict,
                                     bool start_said_invalidated) {
  if (verdict.kind == SlotVerdict::Kind::kResume && start_said_invalidated) {
    return {SlotVerdict::Kind::kLost,
            "START_REPLICATION says the slot is invalidated"};
  }
  return verdict;
}

absl::StatusOr<SlotKeeper::Slot> SlotKeeper::Acquire(
    const ConnectContext& ctx) {
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
    ASSIGN_OR_RETURN(conn, PgConnection::Connect(options_.conninfo,
                                                 PgConnection::Mode::kNormal));
  }
  RETURN_IF_ERROR(CheckWalLevel(*conn));
  RETURN_IF_ERROR(CheckFailoverSupported(*conn, options_.setup.failover));
  RETURN_IF_ERROR(EnsurePublication(*conn, options_.setup));
  if (ctx.first && options_.check_at_start) {
    RETURN_IF_ERROR(options_.check_at_start(*conn));
  }
  // outbox.source: the stream's identity (it changes only when the
  // database is another cluster, which the slot check below catches).
  ASSIGN_OR_RETURN(identity_, SourceIdentity(*conn, options_.setup.slot));
  if (state_ == nullptr) {
    ASSIGN_OR_RETURN(state_,
                     PublisherStateStore::Open(options_.conninfo,
                                               options_.setup.slot, identity_));
  }
  // The slot first, then the record (sources/slot_loss.h).
  ASSIGN_OR_RETURN(std::optional<SlotInfo> slot,
                   InspectSlot(*conn, options_.setup));
  if (slot.has_value() && slot->active) return SlotTaken(std::move(conn));
  if (slot.has_value()) ReportFailover(*slot, conn->server_version());
  ASSIGN_OR_RETURN(recorded_row_, state_->Read());
  ASSIGN_OR_RETURN(
      SlotVerdict verdict,
      JudgeSlot(slot, recorded_row_, identity_, options_.setup.slot));
  verdict =
      WithStartSaidInvalidated(std::move(verdict), start_said_invalidated_);
  ASSIGN_OR_RETURN(const ServerWal wal, ReadServerWal(*conn));
  const SourcePosition streamed = ctx.durable;
  // Another history: the server's WAL is behind the position outboxd
  // streamed to in this run. Streaming from there would skip every new
  // transaction below it, and confirming it would move the slot and the
  // record past the server's WAL.
  const bool behind = !ctx.first && streamed.value() > wal.current.value();
  if (verdict.kind == SlotVerdict::Kind::kCreate ||
      verdict.kind == SlotVerdict::Kind::kAdopt || behind) {
    // Whatever was produced from before goes first (order per aggregate;
    // a lost slot's recovery does the same).
    if (!ctx.first && ctx.drain_in_flight) {
      RETURN_IF_ERROR(ctx.drain_in_flight());
    }
  }
  ASSIGN_OR_RETURN(XminSample sample, state_->TakeSample());
  // Whether the slot streamed from is a failover slot created now.
  bool failover_created = false;
  Slot out;
  out.new_stream = ctx.first || behind;
  out.history = absl::StrCat(wal.timeline);
  switch (verdict.kind) {
    case SlotVerdict::Kind::kResume:
      out.start = slot->confirmed_flush;
      spdlog::info("slot {} found, confirmed position {}", options_.setup.slot,
                   out.start.ToString());
      if (behind) {
        spdlog::warn(
            "the server's WAL is at {} (timeline {}), behind the position "
            "{} outboxd streamed to: a restored or promoted server, another "
            "history; starting over from the slot at {}",
            wal.current.ToString(), wal.timeline,
            Lsn(streamed.value()).ToString(), out.start.ToString());
        // The row is the new server's (restored with it).
        state_->StartOver(recorded_row_->last_ack <= wal.current
                              ? recorded_row_->last_ack
                              : out.start);
      }
      break;
    case SlotVerdict::Kind::kAdopt:
      out.start = slot->confirmed_flush;
      out.new_stream = true;
      spdlog::info(
          "slot {} found, confirmed position {}{}; recording it in {}",
          options_.setup.slot, out.start.ToString(),
          verdict.why.empty() ? "" : absl::StrCat(" (", verdict.why, ")"),
          kPublisherStateTable);
      state_->StartOver(Lsn());
      RETURN_IF_ERROR(state_->Record(out.start, std::nullopt, std::nullopt,
                                     /*force=*/true));
      break;
    case SlotVerdict::Kind::kCreate: {
      ASSIGN_OR_RETURN(out.start, CreateSlotOrRetry(*conn));
      failover_created = CreatesFailoverSlot(*conn, options_.setup.failover);
      out.new_stream = true;
      state_->StartOver(Lsn());
      // The sample predates the slot: rows committed after its start have
      // later commit times and xmins not older than the sample's.
      RETURN_IF_ERROR(state_->Record(out.start, sample.server_time_unix_us,
                                     sample.xmin, /*force=*/true));
      break;
    }
    case SlotVerdict::Kind::kLost: {
      ASSIGN_OR_RETURN(out.start, RecoverLostSlot(*conn, slot, *recorded_row_,
                                                  verdict, ctx));
      failover_created = CreatesFailoverSlot(*conn, options_.setup.failover);
      out.new_stream = true;
      break;
    }
  }
  if (failover_created ||
      (ctx.first && slot.has_value() && slot->failover.value_or(false))) {
    nudge_until_ = absl::Now() + kSyncNudgeWindow;
    nudge_announced_ = false;
  }
  out.identity = identity_;
  out.conn = std::move(conn);
  return out;
}

absl::Status SlotKeeper::StartFailed(const absl::Status& status,
                                     std::unique_ptr<PgConnection> conn) {
  switch (ClassifyStartFailure(status, recorded_row_.has_value())) {
    case StartFailure::kInvalidated:
      // Invalidated since the check: judged again on the next attempt.
      start_said_invalidated_ = true;
      if (options_.on_slot_loss == SlotLossPolicy::kFail) {
        m_.slot_lost->Set(1);
        return absl::DataLossError(SlotLossMessage(
            options_.setup.slot,
            {SlotVerdict::Kind::kLost, std::string(status.message())},
            *recorded_row_));
      }
      return absl::UnavailableError(status.message());
    case StartFailure::kSlotTaken:
      // Taken between the check and START_REPLICATION.
      return SlotTaken(std::move(conn));
    case StartFailure::kSlotGone:
      return absl::UnavailableError(absl::StrCat(
          status.message(), " (dropped since it was checked: checked again)"));
    case StartFailure::kOther:
      break;
  }
  return status;
}

void SlotKeeper::NudgeFailoverSync(absl::Time now) {
  if (now >= nudge_until_) {
    nudge_conn_.reset();
    return;
  }
  if (!may_log_snapshot_ || now < next_nudge_) return;
  next_nudge_ = now + kSyncNudgeInterval;
  absl::Status s = absl::OkStatus();
  if (nudge_conn_ == nullptr) {
    absl::StatusOr<std::unique_ptr<PgConnection>> conn =
        PgConnection::Connect(options_.conninfo, PgConnection::Mode::kNormal);
    s = conn.status();
    if (conn.ok()) nudge_conn_ = *std::move(conn);
  }
  if (s.ok()) {
    s = nudge_conn_->Exec("SELECT pg_catalog.pg_log_standby_snapshot()")
            .status();
  }
  if (s.ok()) {
    if (!nudge_announced_) {
      nudge_announced_ = true;
      spdlog::info(
          "logged a standby snapshot: a standby syncing slots "
          "(sync_replication_slots) makes failover slot {} its own within "
          "seconds; one more every {} for {}",
          options_.setup.slot, absl::FormatDuration(kSyncNudgeInterval),
          absl::FormatDuration(nudge_until_ - now));
    }
    return;
  }
  nudge_conn_.reset();  // a new one next time
  if (!absl::IsPermissionDenied(s)) {
    spdlog::debug("cannot log a standby snapshot: {}", s.ToString());
    return;
  }
  may_log_snapshot_ = false;
  spdlog::warn(
      "cannot log a standby snapshot ({}): a standby syncs the new failover "
      "slot {} only after the primary's next running-xacts record (every "
      "15 s while there are writes). For a prompt sync, GRANT EXECUTE ON "
      "FUNCTION pg_catalog.pg_log_standby_snapshot() TO outboxd's role; "
      "docs/failover.md",
      std::string(s.message()), options_.setup.slot);
}

void SlotKeeper::ReportFailover(const SlotInfo& slot, int server_version) {
  if (server_version < kFailoverSlotServerVersion ||
      options_.setup.failover == FailoverSlot::kOff) {
    return;
  }
  if (slot.failover.value_or(false)) return;  // the slot monitor tells more
  m_.slot_failover_ready->Set(0);
  if (warned_not_failover_) return;
  warned_not_failover_ = true;
  spdlog::warn(
      "slot {} is not a failover slot (it was created without failover or "
      "before PostgreSQL 17): a promoted standby will not have it, and a "
      "failover is a lost slot (--on-slot-loss). To make it one in place, "
      "stop outboxd and run ALTER_REPLICATION_SLOT {} (FAILOVER true) on a "
      "replication connection (psql \"dbname=... replication=database\"); "
      "docs/failover.md",
      options_.setup.slot, options_.setup.slot);
}

// The slot is active in another process (the active instance, when this
// one is a standby): the connection is kept, and the Publisher asks again
// after standby_poll_interval (one query), so that this instance takes
// over within about that much of the slot's release.
absl::Status SlotKeeper::SlotTaken(std::unique_ptr<PgConnection> conn) {
  standby_conn_ = std::move(conn);
  return WithRetryAfter(absl::UnavailableError(absl::StrCat(
                            "replication slot ", options_.setup.slot,
                            " is active in another process")),
                        options_.standby_poll_interval);
}

absl::StatusOr<Lsn> SlotKeeper::CreateSlotOrRetry(PgConnection& conn) {
  absl::StatusOr<Lsn> created = CreateSlot(conn, options_.setup);
  if (absl::IsAlreadyExists(created.status())) {
    return absl::UnavailableError(
        absl::StrCat("replication slot ", options_.setup.slot,
                     " was created concurrently; inspecting it again"));
  }
  return created;
}

absl::StatusOr<Lsn> SlotKeeper::RecoverLostSlot(
    PgConnection& conn, const std::optional<SlotInfo>& slot,
    const PublisherState& recorded, const SlotVerdict& verdict,
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
  // A new stream: the samples taken so far belong to the old one (after a
  // restore, their xmins lie beyond the server's transaction ids, and a
  // horizon recorded from them would let the reconciler judge rows still
  // in flight: false losses).
  state_->StartOver(recorded.last_ack);
  ASSIGN_OR_RETURN(XminSample sample, state_->TakeSample());
  ASSIGN_OR_RETURN(const Lsn start, CreateSlotOrRetry(conn));
  // Until the republish is acknowledged the record keeps the old position:
  // a crash here finds the new slot past it and starts over.
  ASSIGN_OR_RETURN(RepublishCount r,
                   options_.republish(recorded, start, identity_));
  RETURN_IF_ERROR(state_->Record(start, sample.server_time_unix_us, sample.xmin,
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

}  // namespace outboxd
