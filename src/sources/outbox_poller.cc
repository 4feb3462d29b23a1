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

namespace outboxd {
namespace {

constexpr uint32_t kByteaOid = 17;
// How often a wait looks at the stop flag.
constexpr absl::Duration kStopCheckInterval = absl::Milliseconds(20);

// A PostgreSQL array literal of text values: {"a","b\"c"}.
std::string TextArrayLiteral(const std::vector<std::string>& values) {
  std::string out = "{";
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out += ',';
    out += '"';
    for (char c : values[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  out += '}';
  return out;
}

std::string BigintArrayLiteral(const std::vector<int64_t>& values) {
  return absl::StrCat("{", absl::StrJoin(values, ","), "}");
}

std::optional<std::string> Cell(const PGresult* r, int row, int col) {
  if (PQgetisnull(r, row, col)) return std::nullopt;
  return std::string(PQgetvalue(r, row, col), PQgetlength(r, row, col));
}

}  // namespace

PolledRow RowToEvent(const PolledRowText& t, bool payload_is_bytea) {
  PolledRow row;
  if (t.seq.has_value()) (void)absl::SimpleAtoi(*t.seq, &row.seq);
  row.aggregate_id = t.aggregate_id.value_or("");
  auto invalid = [&](std::string reason) {
    nlohmann::ordered_json c = nlohmann::ordered_json::object();
    auto put = [&](const char* name, const std::optional<std::string>& v) {
      if (v.has_value()) {
        c[name] = *v;
      } else {
        c[name] = nullptr;
      }
    };
    put("seq", t.seq);
    put("id", t.id);
    put("aggregatetype", t.aggregate_type);
    put("aggregateid", t.aggregate_id);
    put("type", t.type);
    put("payload", t.payload);
    put("headers", t.headers);
    row.invalid_reason = std::move(reason);
    row.content = c.dump(-1, ' ', false,
                         nlohmann::ordered_json::error_handler_t::replace);
    return row;
  };
  if (!t.seq.has_value()) return invalid("column seq is NULL");

  OutboxEvent e;
  e.table_seq = row.seq;
  struct Required {
    const std::optional<std::string>& value;
    const char* name;
    std::string* target;
  };
  for (const Required& r :
       {Required{t.aggregate_id, "aggregate id", &e.aggregate_id},
        Required{t.id, "id", &e.id},
        Required{t.aggregate_type, "aggregate type", &e.aggregate_type},
        Required{t.type, "type", &e.type}}) {
    if (!r.value.has_value()) {
      return invalid(absl::StrCat("column ", r.name, " is NULL"));
    }
    *r.target = *r.value;
  }
  if (t.payload.has_value()) {
    if (payload_is_bytea) {
      auto raw = DecodeByteaText(*t.payload);
      if (!raw.ok()) return invalid(std::string(raw.status().message()));
      e.payload = *std::move(raw);
    } else {
      e.payload = *t.payload;
    }
  }
  if (t.headers.has_value()) {
    absl::Status s = ParseHeadersText(*t.headers, &e);
    if (!s.ok()) return invalid(std::string(s.message()));
  }
  if (t.created_ms.has_value()) {
    (void)absl::SimpleAtoi(*t.created_ms, &e.commit_time_unix_ms);
  }
  row.event = std::move(e);
  return row;
}

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
  const OutboxColumns& c = options_.columns;
  ASSIGN_OR_RETURN(std::string schema,
                   conn_->QuoteIdentifier(options_.table.schema));
  ASSIGN_OR_RETURN(std::string name,
                   conn_->QuoteIdentifier(options_.table.name));
  table_ = absl::StrCat(schema, ".", name);

  // The table's columns: name -> type oid.
  ASSIGN_OR_RETURN(
      PgResult cols,
      conn_->ExecParams("SELECT attname::text, atttypid::int FROM pg_attribute "
                        "WHERE attrelid = $1::regclass AND attnum > 0 "
                        "AND NOT attisdropped",
                        {table_}));
  absl::flat_hash_map<std::string, uint32_t> types;
  for (int i = 0; i < PQntuples(cols.get()); ++i) {
    uint32_t oid = 0;
    (void)absl::SimpleAtoi(PQgetvalue(cols.get(), i, 1), &oid);
    types[PQgetvalue(cols.get(), i, 0)] = oid;
  }
  auto require = [&](const std::string& column,
                     const char* why) -> absl::StatusOr<std::string> {
    if (!types.contains(column)) {
      return absl::FailedPreconditionError(
          absl::StrCat("table ", options_.table.ToString(), " has no column '",
                       column, "' (", why, ")"));
    }
    return conn_->QuoteIdentifier(column);
  };
  auto optional =
      [&](const std::string& column) -> absl::StatusOr<std::string> {
    if (column.empty() || !types.contains(column)) return std::string();
    return conn_->QuoteIdentifier(column);
  };
  ASSIGN_OR_RETURN(seq_, require(options_.seq_column,
                                 "the polling order; see sql/outbox.sql"));
  ASSIGN_OR_RETURN(std::string id, require(c.id, "--column-id"));
  ASSIGN_OR_RETURN(std::string aggregate_type,
                   require(c.aggregate_type, "--column-aggregate-type"));
  ASSIGN_OR_RETURN(aggregate_id_,
                   require(c.aggregate_id, "--column-aggregate-id"));
  ASSIGN_OR_RETURN(std::string type, require(c.type, "--column-type"));
  ASSIGN_OR_RETURN(std::string payload, require(c.payload, "--column-payload"));
  ASSIGN_OR_RETURN(std::string headers, optional(c.headers));
  ASSIGN_OR_RETURN(created_, optional(options_.created_column));
  if (options_.cleanup == PollCleanup::kMark) {
    ASSIGN_OR_RETURN(published_,
                     require(options_.published_column,
                             "--poll-cleanup=mark; ALTER TABLE ... ADD COLUMN "
                             "published_at timestamptz, as in sql/outbox.sql"));
  } else {
    ASSIGN_OR_RETURN(published_, optional(options_.published_column));
  }
  if (options_.grace > absl::ZeroDuration() && created_.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "a poll grace period needs the column '", options_.created_column,
        "' in ", options_.table.ToString()));
  }
  payload_is_bytea_ = types[c.payload] == kByteaOid;

  // Unpublished rows, oldest seq first. Column order = PolledRowText.
  std::string unpublished =
      published_.empty() ? "TRUE" : absl::StrCat(published_, " IS NULL");
  select_sql_ = absl::StrCat(
      "SELECT ", seq_, "::text, ", id, "::text, ", aggregate_type, "::text, ",
      aggregate_id_, "::text, ", type, "::text, ", payload,
      payload_is_bytea_ ? "" : "::text", ", ",
      headers.empty() ? "NULL::text" : absl::StrCat(headers, "::text"), ", ",
      created_.empty() ? "NULL::text"
                       : absl::StrCat("(extract(epoch FROM ", created_,
                                      ") * 1000)::bigint::text"),
      " FROM ", table_, " WHERE ", unpublished,
      options_.grace > absl::ZeroDuration()
          ? absl::StrCat(" AND ", created_, " <= now() - $2::interval")
          : "",
      // Qualified: a bare name would sort by the text output column.
      " ORDER BY ", table_, ".", seq_, " LIMIT $1 FOR UPDATE SKIP LOCKED");
  // Per aggregate of the batch, the oldest unpublished row older than the
  // batch's newest row that is not in the batch: locked by another poller,
  // or committed after the SELECT's snapshot (sequence order is not commit
  // order). Rows of that aggregate after it must wait.
  blockers_sql_ = absl::StrCat("SELECT ", aggregate_id_, "::text, min(", seq_,
                               ")::text FROM ", table_, " WHERE ", unpublished,
                               " AND ", seq_, " < $1::bigint AND NOT (", seq_,
                               " = ANY($2::bigint[])) AND ", aggregate_id_,
                               "::text = ANY($3::text[]) GROUP BY 1");
  complete_sql_ =
      options_.cleanup == PollCleanup::kMark
          ? absl::StrCat("UPDATE ", table_, " SET ", published_,
                         " = clock_timestamp() WHERE ", unpublished, " AND ",
                         seq_, " = ANY($1::bigint[])")
          : absl::StrCat("DELETE FROM ", table_, " WHERE ", unpublished,
                         " AND ", seq_, " = ANY($1::bigint[])");

  if (!options_.notify_channel.empty()) {
    ASSIGN_OR_RETURN(std::string channel,
                     conn_->QuoteIdentifier(options_.notify_channel));
    RETURN_IF_ERROR(conn_->Exec(absl::StrCat("LISTEN ", channel)).status());
  }
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
  for (int i = 0; i < PQntuples(r); ++i) {
    PolledRowText t{Cell(r, i, 0), Cell(r, i, 1), Cell(r, i, 2), Cell(r, i, 3),
                    Cell(r, i, 4), Cell(r, i, 5), Cell(r, i, 6), Cell(r, i, 7)};
    selected.push_back(RowToEvent(t, payload_is_bytea_));
  }

  // Hold back what would overtake an older row of its aggregate.
  std::vector<int64_t> seqs;
  absl::flat_hash_set<std::string> aggregate_set;
  int64_t newest = selected.front().seq;
  for (const PolledRow& row : selected) {
    seqs.push_back(row.seq);
    newest = std::max(newest, row.seq);
    aggregate_set.insert(row.aggregate_id);
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
    auto it = blocked_after.find(row.aggregate_id);
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
