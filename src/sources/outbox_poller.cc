#include "sources/outbox_poller.h"

#include <poll.h>

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "pg/identifier.h"

namespace outboxd {
namespace {

// How often a wait looks at the stop flag.
constexpr absl::Duration kStopCheckInterval = absl::Milliseconds(20);

std::string BigintArrayLiteral(const std::vector<int64_t>& values) {
  return absl::StrCat("{", absl::StrJoin(values, ","), "}");
}

}  // namespace

absl::StatusOr<std::unique_ptr<OutboxPoller>> OutboxPoller::Connect(
    const OutboxPollerOptions& options) {
  if (options.batch_size <= 0) {
    return absl::InvalidArgumentError("batch size must be positive");
  }
  ASSIGN_OR_RETURN(
      auto conn,
      PgConnection::Connect(options.conninfo, PgConnection::Mode::kNormal));
  std::unique_ptr<OutboxPoller> poller(
      new OutboxPoller(options, std::move(conn)));
  RETURN_IF_ERROR(poller->Prepare());
  return poller;
}

absl::Status OutboxPoller::Prepare() {
  ASSIGN_OR_RETURN(OutboxTable table,
                   OutboxTable::Load(*conn_, options_.table, options_.columns));
  ASSIGN_OR_RETURN(seq_,
                   table.Require(options_.seq_column,
                                 "the polling order; see sql/outbox.sql"));
  ASSIGN_OR_RETURN(aggregate_id_, table.Require(options_.columns.aggregate_id,
                                                "--column-aggregate-id"));
  created_ = table.Optional(options_.created_column);
  if (options_.cleanup == PollCleanup::kMark) {
    ASSIGN_OR_RETURN(published_,
                     table.Require(options_.published_column,
                                   "--poll-cleanup=mark; ALTER TABLE ... ADD "
                                   "COLUMN published_at timestamptz, as in "
                                   "sql/outbox.sql"));
  } else {
    published_ = table.Optional(options_.published_column);
  }
  if (options_.grace > absl::ZeroDuration() && created_.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "a poll grace period needs the column '", options_.created_column,
        "' in ", options_.table.ToString()));
  }
  const std::string& table_name = table.quoted_name();

  // Unpublished rows, oldest seq first. Columns: seq, created_at in unix ms,
  // then the table's select_list().
  std::string unpublished =
      published_.empty() ? "TRUE" : absl::StrCat(published_, " IS NULL");
  select_sql_ = absl::StrCat(
      "SELECT ", table_name, ".", seq_, "::text, ",
      created_.empty() ? "NULL::text"
                       : absl::StrCat("(extract(epoch FROM ", table_name, ".",
                                      created_, ") * 1000)::bigint::text"),
      ", ", table.select_list(), " FROM ", table_name, " WHERE ", unpublished,
      options_.grace > absl::ZeroDuration()
          ? absl::StrCat(" AND ", created_, " <= now() - $2::interval")
          : "",
      // Qualified: a bare name would sort by the text output column.
      " ORDER BY ", table_name, ".", seq_, " LIMIT $1 FOR UPDATE SKIP LOCKED");
  // Per aggregate of the batch, the oldest unpublished row older than the
  // batch's newest row that is not in the batch: locked by another poller,
  // or committed after the SELECT's snapshot (sequence order is not commit
  // order). Rows of that aggregate after it must wait.
  blockers_sql_ = absl::StrCat(
      "SELECT ", aggregate_id_, "::text, min(", seq_, ")::text FROM ",
      table_name, " WHERE ", unpublished, " AND ", seq_,
      " < $1::bigint AND NOT (", seq_, " = ANY($2::bigint[])) AND ",
      aggregate_id_, "::text = ANY($3::text[]) GROUP BY 1");
  complete_sql_ =
      options_.cleanup == PollCleanup::kMark
          ? absl::StrCat("UPDATE ", table_name, " SET ", published_,
                         " = clock_timestamp() WHERE ", unpublished, " AND ",
                         seq_, " = ANY($1::bigint[])")
          : absl::StrCat("DELETE FROM ", table_name, " WHERE ", unpublished,
                         " AND ", seq_, " = ANY($1::bigint[])");

  if (!options_.notify_channel.empty()) {
    ASSIGN_OR_RETURN(std::string channel,
                     conn_->QuoteIdentifier(options_.notify_channel));
    RETURN_IF_ERROR(conn_->Exec(absl::StrCat("LISTEN ", channel)).status());
  }
  table_ = std::move(table);
  return absl::OkStatus();
}

absl::StatusOr<PolledBatch> OutboxPoller::FetchBatch() {
  if (in_batch_) return absl::InternalError("FetchBatch: a batch is open");
  RETURN_IF_ERROR(conn_->Exec("BEGIN").status());
  in_batch_ = true;
  std::vector<std::optional<std::string>> params = {
      absl::StrCat(options_.batch_size)};
  if (options_.grace > absl::ZeroDuration()) {
    params.push_back(
        absl::StrCat(absl::ToInt64Microseconds(options_.grace), " us"));
  }
  ASSIGN_OR_RETURN(PgResult rows, conn_->ExecParams(select_sql_, params));
  PolledBatch batch;
  const PGresult* r = rows.get();
  batch.selected = PQntuples(r);
  batch.full = batch.selected >= static_cast<size_t>(options_.batch_size);
  if (batch.selected == 0) return batch;

  std::vector<PolledRow> selected;
  selected.reserve(batch.selected);
  std::vector<RowCell> cells;
  for (int i = 0; i < PQntuples(r); ++i) {
    cells.clear();
    table_->AppendCells(r, i, /*first=*/2, &cells);
    RowCell& seq_cell = cells.emplace_back();
    seq_cell.name = options_.seq_column;
    RowOrigin origin;
    origin.table = table_name_;  // outbox.table, as the CDC stream names it
    int64_t seq = 0;
    if (!PQgetisnull(r, i, 0)) {
      seq_cell.text = PQgetvalue(r, i, 0);
      if (absl::SimpleAtoi(*seq_cell.text, &seq)) origin.table_seq = seq;
    }
    if (!PQgetisnull(r, i, 1)) {
      (void)absl::SimpleAtoi(PQgetvalue(r, i, 1), &origin.commit_time_unix_ms);
    }
    PolledRow& row = selected.emplace_back();
    row.seq = seq;
    if (!origin.table_seq.has_value()) {
      // Cannot happen with the identity column of sql/outbox.sql; the row is
      // dead-lettered with the rest of its batch, never skipped silently.
      row.event = InvalidRow(cells, table_->layout(), origin,
                             absl::StrCat("column '", options_.seq_column,
                                          "' is NULL or not an integer"));
    } else {
      row.event =
          RowToEvent(cells, table_->layout(), table_->columns(), origin);
    }
  }

  // Hold back what would overtake an older row of its aggregate.
  std::vector<int64_t> seqs;
  absl::flat_hash_set<std::string> aggregate_set;
  int64_t newest = selected.front().seq;
  for (const PolledRow& row : selected) {
    seqs.push_back(row.seq);
    newest = std::max(newest, row.seq);
    aggregate_set.insert(AggregateIdOf(row.event));
  }
  std::vector<std::string> aggregates(aggregate_set.begin(),
                                      aggregate_set.end());
  ASSIGN_OR_RETURN(
      PgResult blockers,
      conn_->ExecParams(blockers_sql_,
                        {absl::StrCat(newest), BigintArrayLiteral(seqs),
                         TextArrayLiteral(aggregates)}));
  absl::flat_hash_map<std::string, int64_t> blocked_after;
  for (int i = 0; i < PQntuples(blockers.get()); ++i) {
    int64_t seq = 0;
    (void)absl::SimpleAtoi(PQgetvalue(blockers.get(), i, 1), &seq);
    blocked_after[PQgetvalue(blockers.get(), i, 0)] = seq;
  }
  for (PolledRow& row : selected) {
    auto it = blocked_after.find(AggregateIdOf(row.event));
    if (it != blocked_after.end() && row.seq > it->second) {
      ++batch.held_back;
      continue;
    }
    batch.rows.push_back(std::move(row));
  }
  if (batch.held_back > 0) {
    spdlog::debug("held back {} rows behind older rows of {} aggregates",
                  batch.held_back, blocked_after.size());
  }
  return batch;
}

absl::Status OutboxPoller::CompleteBatch(const std::vector<int64_t>& seqs) {
  if (!in_batch_) return absl::InternalError("CompleteBatch: no open batch");
  if (!seqs.empty()) {
    absl::Status s =
        conn_->ExecParams(complete_sql_, {BigintArrayLiteral(seqs)}).status();
    if (!s.ok()) {
      AbortBatch().IgnoreError();
      return s;
    }
  }
  in_batch_ = false;
  return conn_->Exec("COMMIT").status();
}

absl::Status OutboxPoller::AbortBatch() {
  if (!in_batch_) return absl::OkStatus();
  in_batch_ = false;
  return conn_->Exec("ROLLBACK").status();
}

absl::StatusOr<bool> OutboxPoller::DrainNotifications() {
  if (options_.notify_channel.empty()) return false;
  if (PQconsumeInput(conn_->raw()) == 0) {
    return conn_->Error("waiting for notifications");
  }
  bool any = false;
  while (PGnotify* n = PQnotifies(conn_->raw())) {
    any = true;
    PQfreemem(n);
  }
  return any;
}

absl::StatusOr<bool> OutboxPoller::WaitForWork(absl::Time deadline,
                                               const std::atomic<bool>& stop) {
  while (!stop.load(std::memory_order_relaxed)) {
    ASSIGN_OR_RETURN(bool notified, DrainNotifications());
    if (notified) return true;
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    absl::Duration slice = std::min(left, kStopCheckInterval);
    if (options_.notify_channel.empty()) {
      absl::SleepFor(slice);
      continue;
    }
    struct pollfd pfd = {PQsocket(conn_->raw()), POLLIN, 0};
    int ms = static_cast<int>(absl::ToInt64Milliseconds(slice)) + 1;
    if (::poll(&pfd, 1, ms) < 0 && errno != EINTR) {
      return absl::UnavailableError(
          absl::StrCat("poll on the PostgreSQL socket: ", strerror(errno)));
    }
  }
  return false;
}

}  // namespace outboxd
