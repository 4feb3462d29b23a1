#include "pipeline/outbox_cleaner.h"

#include <algorithm>
#include <deque>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/lsn.h"
#include "common/status_macros.h"
#include "pg/connection.h"

namespace outboxd {
namespace {

struct Sample {
  std::string xmin;  // xid8 as text
  Lsn wal;
};

std::string FirstValue(const PgResult& r) {
  if (PQntuples(r.get()) == 0 || PQgetisnull(r.get(), 0, 0)) return "";
  return PQgetvalue(r.get(), 0, 0);
}

class CleanerRound {
 public:
  explicit CleanerRound(const OutboxCleanerOptions& o) : o_(o) {}

  // One round: take a sample, delete what the newest confirmed sample
  // allows. Returns the rows deleted.
  absl::StatusOr<uint64_t> Run() {
    if (conn_ == nullptr) {
      ASSIGN_OR_RETURN(conn_, PgConnection::Connect(
                                  o_.conninfo, PgConnection::Mode::kNormal));
      ASSIGN_OR_RETURN(std::string id, conn_->QuoteIdentifier(o_.id_column));
      ASSIGN_OR_RETURN(std::string created,
                       conn_->QuoteIdentifier(o_.created_at_column));
      std::string table = o_.table.ToString();
      // $1: older_than in microseconds, $2: the sample's xmin (xid8 text),
      // $3: batch size.
      delete_sql_ = absl::StrCat(
          "DELETE FROM ", table, " WHERE ", id, " IN (SELECT ", id, " FROM ",
          table, " WHERE ", created,
          " < now() - make_interval(secs => $1::bigint / 1e6) AND "
          "age(xmin) > age(($2::xid8::text::numeric % 4294967296)::text::xid)"
          " LIMIT $3)");
    }
    // X first, then W (two statements: W must be read after X).
    ASSIGN_OR_RETURN(PgResult x,
                     conn_->Exec("SELECT pg_snapshot_xmin(pg_current_snapshot())"));
    ASSIGN_OR_RETURN(PgResult w, conn_->Exec("SELECT pg_current_wal_lsn()"));
    ASSIGN_OR_RETURN(Lsn wal, Lsn::Parse(FirstValue(w)));
    samples_.push_back({FirstValue(x), wal});

    ASSIGN_OR_RETURN(
        PgResult c,
        conn_->ExecParams("SELECT confirmed_flush_lsn FROM pg_replication_slots "
                          "WHERE slot_name = $1",
                          {o_.slot}));
    std::string confirmed_text = FirstValue(c);
    if (confirmed_text.empty()) return 0;  // no slot yet
    ASSIGN_OR_RETURN(Lsn confirmed, Lsn::Parse(confirmed_text));
    std::optional<Sample> usable;
    while (!samples_.empty() && samples_.front().wal <= confirmed) {
      usable = samples_.front();
      samples_.pop_front();
    }
    if (!usable.has_value()) return 0;
    // Keep the newest usable sample for the next round too: rows may reach
    // the age limit later.
    samples_.push_front(*usable);

    uint64_t total = 0;
    while (true) {
      ASSIGN_OR_RETURN(
          PgResult d,
          conn_->ExecParams(
              delete_sql_,
              {absl::StrCat(absl::ToInt64Microseconds(o_.older_than)),
               usable->xmin, absl::StrCat(o_.batch_size)}));
      uint64_t n = 0;
      if (!absl::SimpleAtoi(PQcmdTuples(d.get()), &n)) n = 0;
      total += n;
      if (n < static_cast<uint64_t>(o_.batch_size)) break;
    }
    return total;
  }

  void Reset() { conn_.reset(); }

 private:
  const OutboxCleanerOptions& o_;
  std::unique_ptr<PgConnection> conn_;
  std::string delete_sql_;
  std::deque<Sample> samples_;
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
    interval = std::clamp(options_.older_than / 4, absl::Seconds(1),
                          absl::Minutes(1));
  }
  spdlog::info("cleanup: deleting rows of {} older than {} once confirmed "
               "(every {})",
               options_.table.ToString(),
               absl::FormatDuration(options_.older_than),
               absl::FormatDuration(interval));
  CleanerRound round(options_);
  do {
    absl::StatusOr<uint64_t> n = round.Run();
    if (!n.ok()) {
      // Not fatal for publishing: log, reconnect next round.
      spdlog::warn("cleanup: {}", n.status().ToString());
      round.Reset();
      continue;
    }
    if (*n > 0) {
      deleted_ += *n;
      if (options_.metrics != nullptr) {
        options_.metrics->cleanup_deleted_rows->Increment(
            static_cast<double>(*n));
      }
      spdlog::info("cleanup: deleted {} published rows", *n);
    }
  } while (!stop_.WaitForNotificationWithTimeout(interval));
}

}  // namespace outboxd
