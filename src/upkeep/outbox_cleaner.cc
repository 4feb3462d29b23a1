#include "upkeep/outbox_cleaner.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/lsn.h"
#include "common/status_macros.h"
#include "pg/connection.h"

namespace outboxd {
namespace {

// "[name] ", or "" for a target without a name.
std::string LogPrefix(const CleanupTarget& t) {
  return t.name.empty() ? "" : absl::StrCat("[", t.name, "] ");
}

std::optional<std::string> Field(const PgResult& r, int col) {
  if (PQntuples(r.get()) == 0 || PQgetisnull(r.get(), 0, col)) {
    return std::nullopt;
  }
  return std::string(PQgetvalue(r.get(), 0, col));
}

// One target's round and its connection (kept between rounds).
class CleanerRound {
 public:
  CleanerRound(const OutboxCleanerOptions& o, const CleanupTarget& t)
      : o_(o), t_(t) {}

  // One round: delete what the publisher state proves acknowledged. Returns
  // the rows deleted.
  absl::StatusOr<uint64_t> Run() {
    if (conn_ == nullptr) {
      ASSIGN_OR_RETURN(conn_, PgConnection::Connect(
                                  t_.conninfo, PgConnection::Mode::kNormal));
      ASSIGN_OR_RETURN(std::string id, conn_->QuoteIdentifier(o_.id_column));
      ASSIGN_OR_RETURN(std::string created,
                       conn_->QuoteIdentifier(o_.created_at_column));
      std::string table = t_.table.ToString();
      // $1: older_than in microseconds, $2: recorded commit time (unix us),
      // $3: republish margin in microseconds, $4: recorded xmin horizon
      // (xid8 text), $5: batch size.
      delete_sql_ = absl::StrCat(
          "DELETE FROM ", table, " WHERE ", id, " IN (SELECT ", id, " FROM ",
          table, " WHERE ", created,
          " < now() - make_interval(secs => $1::bigint / 1e6) AND ", created,
          " < to_timestamp(0) + $2::bigint * interval '1 microsecond' - "
          "make_interval(secs => $3::bigint / 1e6) AND "
          "age(xmin) > age(($4::xid8::text::numeric % 4294967296)::text::xid) "
          "AND pg_snapshot_xmax(pg_current_snapshot())::text::numeric - "
          "$4::xid8::text::numeric < 2000000000 AND ($6::bigint IS NULL OR ",
          created,
          " < to_timestamp(0) + $6::bigint * interval '1 microsecond') "
          "LIMIT $5)");
    }
    ASSIGN_OR_RETURN(
        PgResult state,
        conn_->ExecParams(
            "SELECT (extract(epoch FROM last_ack_commit_time) * 1000000)"
            "::bigint::text, xmin_horizon::text "
            "FROM outbox.publisher_state WHERE slot_name = $1",
            {t_.slot}));
    std::optional<std::string> time = Field(state, 0);
    std::optional<std::string> horizon = Field(state, 1);
    if (!time.has_value() || !horizon.has_value()) return 0;  // not yet known
    // Nothing the reconciler has not judged yet.
    std::optional<std::string> judged;
    if (t_.judged_before) {
      const int64_t before = t_.judged_before();
      if (before == INT64_MIN) return 0;
      judged = absl::StrCat(before);
    }

    uint64_t total = 0;
    while (true) {
      ASSIGN_OR_RETURN(
          PgResult d,
          conn_->ExecParams(
              delete_sql_,
              {absl::StrCat(absl::ToInt64Microseconds(o_.older_than)), *time,
               absl::StrCat(absl::ToInt64Microseconds(o_.republish_margin)),
               *horizon, absl::StrCat(o_.batch_size), judged}));
      uint64_t n = 0;
      if (!absl::SimpleAtoi(PQcmdTuples(d.get()), &n)) n = 0;
      total += n;
      if (n < static_cast<uint64_t>(o_.batch_size)) break;
    }
    return total;
  }

  void Reset() { conn_.reset(); }
  const CleanupTarget& target() const { return t_; }

  // Whether `status` is a failure other than this target's last one (then
  // it is the one to report), remembering it; ok forgets the last failure.
  bool NewError(const absl::Status& status) {
    if (status.ok()) {
      last_error_.clear();
      return false;
    }
    std::string text = status.ToString();
    if (text == last_error_) return false;
    last_error_ = std::move(text);
    return true;
  }

 private:
  const OutboxCleanerOptions& o_;
  const CleanupTarget& t_;
  std::unique_ptr<PgConnection> conn_;
  std::string delete_sql_;
  std::string last_error_;  // "" after a round that did not fail
};

}  // namespace

std::unique_ptr<OutboxCleaner> OutboxCleaner::Start(
    OutboxCleanerOptions options) {
  std::unique_ptr<OutboxCleaner> c(new OutboxCleaner(std::move(options)));
  OutboxCleaner* raw = c.get();
  c->thread_ = std::thread([raw] { raw->Run(); });
  return c;
}

OutboxCleaner::~OutboxCleaner() {
  stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

void OutboxCleaner::Run() {
  absl::Duration interval = options_.interval;
  if (interval <= absl::ZeroDuration()) {
    interval =
        std::clamp(options_.older_than / 4, absl::Seconds(1), absl::Minutes(1));
  }
  std::vector<CleanerRound> rounds;
  for (const CleanupTarget& t : options_.targets) {
    spdlog::info(
        "{}cleanup: deleting rows of {} older than {} and {} older "
        "than the last acknowledged commit (every {})",
        LogPrefix(t), t.table.ToString(),
        absl::FormatDuration(options_.older_than),
        absl::FormatDuration(options_.republish_margin),
        absl::FormatDuration(interval));
    rounds.emplace_back(options_, t);
  }
  do {
    for (CleanerRound& round : rounds) {
      if (stop_.HasBeenNotified()) break;
      const std::string prefix = LogPrefix(round.target());
      absl::StatusOr<uint64_t> n = round.Run();
      if (round.NewError(n.status())) {
        // Not fatal for publishing: one line per cause, not per round.
        spdlog::warn("{}cleanup: {}; retrying every {}", prefix,
                     n.status().ToString(), absl::FormatDuration(interval));
      } else if (!n.ok()) {
        spdlog::debug("{}cleanup: {}", prefix, n.status().ToString());
      }
      if (!n.ok()) {
        round.Reset();  // reconnect next round
        continue;
      }
      if (*n > 0) {
        deleted_ += *n;
        if (options_.metrics != nullptr) {
          options_.metrics->cleanup_deleted_rows->Increment(
              static_cast<double>(*n));
        }
        spdlog::info("{}cleanup: deleted {} published rows of {}", prefix, *n,
                     round.target().table.ToString());
      }
    }
  } while (!stop_.WaitForNotificationWithTimeout(interval));
}

}  // namespace outboxd
