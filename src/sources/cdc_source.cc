#include "sources/cdc_source.h"

#include <algorithm>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
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

SlotKeeperOptions KeeperOptions(const CdcSourceOptions& o) {
  SlotKeeperOptions k;
  k.conninfo = o.conninfo;
  k.setup = o.setup;
  k.standby_poll_interval = o.standby_poll_interval;
  k.on_slot_loss = o.on_slot_loss;
  k.republish_margin = o.republish_margin;
  k.republish = o.republish;
  k.check_at_start = o.check_at_start;
  return k;
}

class CdcSource final : public EventSource {
 public:
  CdcSource(CdcSourceOptions options, metrics::SourceMetrics& metrics)
      : options_(std::move(options)),
        m_(metrics),
        mapper_(options_.mapper),
        keeper_(KeeperOptions(options_), metrics) {}

  absl::StatusOr<ConnectResult> Connect(const ConnectContext& ctx) override {
    ASSIGN_OR_RETURN(SlotKeeper::Slot slot, keeper_.Acquire(ctx));
    ConnectResult result;
    result.history = slot.history;
    durable_ = Lsn(ctx.durable.value());
    if (slot.new_stream) {
      result.restart_at = AsPosition(slot.start);
      durable_ = slot.start;
      reported_ = slot.start;
      received_ = slot.start;
      commit_times_.clear();
    }
    spdlog::info("source {}", slot.identity);
    ReplicationStreamOptions so;
    so.conninfo = options_.conninfo;
    so.slot = options_.setup.slot;
    so.publication = options_.setup.publication;
    // From what is durable: the server skips transactions before it.
    absl::StatusOr<std::unique_ptr<ReplicationStream>> stream =
        ReplicationStream::Start(so, durable_);
    if (!stream.ok()) {
      return keeper_.StartFailed(stream.status(), std::move(slot.conn));
    }
    stream_ = *std::move(stream);
    // PostgreSQL 18's pgoutput only warns when the publication is gone and
    // goes on streaming without it: nothing of the outbox would arrive
    // while outboxd kept confirming. Stop instead (Read).
    publication_gone_.clear();
    stream_->SetNoticeHandler([this](const PgNotice& notice) {
      if (absl::StrContains(notice.message, "skipped loading publication")) {
        publication_gone_ = notice.message;
      }
    });
    result.identity = slot.identity;
    result.ready_line =
        absl::StrCat("streaming from slot ", options_.setup.slot,
                     " (publication ", options_.setup.publication, ")");
    return result;
  }

  void Disconnect() override {
    // The server resends, from the confirmed position, every transaction
    // whose Commit we did not see; Relation messages come again.
    stream_.reset();
    mapper_ = OutboxMapper(options_.mapper);
    other_relations_.clear();  // Relation messages come again
    reply_requested_ = false;
  }

  absl::StatusOr<SourceRead> Read(absl::Duration wait) override {
    SourceRead out;
    if (wait > absl::ZeroDuration()) {
      wait = std::min(
          wait, std::max(next_status_ - absl::Now(), absl::ZeroDuration()));
    }
    ASSIGN_OR_RETURN(auto message, stream_->Read(wait));
    if (!publication_gone_.empty()) {
      // Before the message is handled: nothing after it is confirmed.
      return absl::FailedPreconditionError(absl::StrCat(
          "publication ", options_.setup.publication,
          " no longer exists where the slot decodes (the server said: ",
          publication_gone_,
          "): no event of the outbox would arrive. Re-create it (outboxd "
          "creates a missing one at start); transactions committed while it "
          "was missing are not published from the slot, see --on-slot-loss "
          "for republishing from the table"));
    }
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
    if (const auto* rel = std::get_if<pgoutput::Relation>(&decoded)) {
      OtherRelation(*rel);
    } else if (const auto* ins = std::get_if<pgoutput::Insert>(&decoded)) {
      RETURN_IF_ERROR(RefusePartitionOfTable(ins->relation_id));
    }
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
  absl::Status SendStatusIfDue(bool force) {
    absl::Time now = absl::Now();
    if (!force && now < next_status_) return absl::OkStatus();
    keeper_.NudgeFailoverSync(now);
    RETURN_IF_ERROR(RecordProgress(now, force));
    // Never past the record: a slot ahead of it is a lost slot.
    Lsn flushed = std::min(durable_, keeper_.recorded());
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
  // (unless the server asks for a reply, or a fresh failover slot is being
  // synced to standbys: SlotKeeper::NudgingFailoverSync). A failed write only
  // holds the reported position back, except while PostgreSQL shuts down: its
  // walsender waits for the flush position to reach the end of the WAL, which
  // cannot be recorded any more, so the stream ends (kUnavailable) and outboxd
  // reconnects once the server is back.
  absl::Status RecordProgress(absl::Time now, bool reply_requested) {
    const Lsn ackable = durable_;
    if (ackable <= keeper_.recorded()) return absl::OkStatus();
    if (!finishing_ && now < next_record_) return absl::OkStatus();
    std::optional<int64_t> commit_time;  // microseconds
    size_t covered = 0;
    for (const auto& [end_lsn, time] : commit_times_) {
      if (end_lsn > ackable) break;
      commit_time = time;
      ++covered;
    }
    if (covered == 0 && !finishing_ && !reply_requested &&
        now < next_idle_record_ && !keeper_.NudgingFailoverSync(now)) {
      return absl::OkStatus();
    }
    absl::Status s = keeper_.Record(ackable, commit_time);
    next_record_ = now + options_.status_interval;
    if (!s.ok()) {
      if (IsServerShuttingDown(s)) {
        return absl::UnavailableError(absl::StrCat(
            "PostgreSQL is shutting down and the acknowledged position ",
            ackable.ToString(), " cannot be recorded (", s.message(),
            "): ending the stream at ", keeper_.recorded().ToString()));
      }
      spdlog::warn(
          "cannot record the acknowledged position {} in {}: {}; "
          "not confirming past {}",
          ackable.ToString(), kPublisherStateTable, s.ToString(),
          keeper_.recorded().ToString());
      return absl::OkStatus();
    }
    commit_times_.erase(commit_times_.begin(), commit_times_.begin() + covered);
    next_idle_record_ = now + kIdleRecordIntervals * options_.status_interval;
    return absl::OkStatus();
  }

  // Remembers a relation that is not an outbox table (pgoutput sends the
  // Relation of a partition too when it publishes via the root).
  void OtherRelation(const pgoutput::Relation& rel) {
    const QualifiedName name{rel.nspname, rel.relname};
    const auto& tables = options_.setup.tables;
    if (std::find(tables.begin(), tables.end(), name) != tables.end()) {
      other_relations_.erase(rel.relation_id);
      return;
    }
    other_relations_[rel.relation_id] = OtherRelationInfo{name, std::nullopt};
  }

  // An insert into a relation that is not an outbox table but a partition
  // of one: the publication no longer publishes via the partition root,
  // and the insert would be ignored as another table's. Stops (nothing of
  // the transaction is confirmed); the restart's publication check names
  // the fix. One query per such relation and connection.
  absl::Status RefusePartitionOfTable(uint32_t relation_id) {
    auto it = other_relations_.find(relation_id);
    if (it == other_relations_.end()) return absl::OkStatus();
    if (!it->second.root.has_value()) {
      if (check_conn_ == nullptr) {
        ASSIGN_OR_RETURN(check_conn_,
                         PgConnection::Connect(options_.conninfo,
                                               PgConnection::Mode::kNormal));
      }
      absl::StatusOr<std::optional<QualifiedName>> root =
          PartitionRoot(*check_conn_, relation_id);
      if (!root.ok()) {
        check_conn_.reset();
        return root.status();
      }
      it->second.root = root->value_or(QualifiedName{"", ""});
    }
    const QualifiedName& root = *it->second.root;
    const auto& tables = options_.setup.tables;
    if (std::find(tables.begin(), tables.end(), root) == tables.end()) {
      return absl::OkStatus();
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "an insert into ", it->second.name.ToString(), ", a partition of ",
        root.ToString(), ", arrived under the partition's name: publication ",
        options_.setup.publication,
        " no longer publishes via the partition root, and its events would "
        "be ignored; stopping without confirming them. ALTER PUBLICATION "
        "... SET (publish_via_partition_root = true)"));
  }

  const CdcSourceOptions options_;
  metrics::SourceMetrics& m_;
  // Relations of this connection that are not outbox tables, with the
  // root of their partition tree once an insert asked ({"", ""}: none).
  struct OtherRelationInfo {
    QualifiedName name;
    std::optional<QualifiedName> root;
  };
  absl::flat_hash_map<uint32_t, OtherRelationInfo> other_relations_;
  std::unique_ptr<PgConnection> check_conn_;  // RefusePartitionOfTable's
  OutboxMapper mapper_;
  std::unique_ptr<ReplicationStream> stream_;
  // The server's warning that the publication is gone ("" while none).
  std::string publication_gone_;
  // The slot and the publisher state row.
  SlotKeeper keeper_;
  // (end LSN, commit time) of decoded transactions not yet recorded.
  std::deque<std::pair<Lsn, int64_t>> commit_times_;
  int64_t commit_time_ = 0;  // of the transaction being decoded, unix us
  absl::Time next_record_ = absl::InfinitePast();
  absl::Time next_idle_record_ = absl::InfinitePast();
  absl::Time next_status_ = absl::InfinitePast();
  bool finishing_ = false;
  bool reply_requested_ = false;  // a keepalive asked for a status update
  Lsn durable_;   // the last durable position the Publisher gave
  Lsn received_;  // newest server position seen
  Lsn reported_;  // last flush position reported
};

}  // namespace

std::unique_ptr<EventSource> NewCdcSource(CdcSourceOptions options,
                                          metrics::SourceMetrics& metrics) {
  return std::make_unique<CdcSource>(std::move(options), metrics);
}

}  // namespace outboxd
