#include "pipeline/reconciler.h"

#include <pthread.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "pg/connection.h"
#include "pg/publisher_state.h"
#include "pipeline/delivery.h"
#include "pipeline/republisher.h"
#include "sources/outbox_table.h"

namespace outboxd {
namespace {

// A recorded xmin horizon further back than this (in transaction ids) cannot
// be compared with 32-bit row xmins: the pass judges nothing.
constexpr int64_t kMaxHorizonAge = 2000000000;
// The acknowledged ids are kept this much longer than the window needs
// (the clocks of outboxd's host and the server, measured each pass).
constexpr absl::Duration kClockSlack = absl::Minutes(1);

std::optional<std::string> Field(const PGresult* r, int row, int col) {
  if (PQgetisnull(r, row, col)) return std::nullopt;
  return std::string(PQgetvalue(r, row, col), PQgetlength(r, row, col));
}

int64_t Int(const PGresult* r, int row, int col) {
  int64_t v = 0;
  if (!absl::SimpleAtoi(Field(r, row, col).value_or(""), &v)) return 0;
  return v;
}

// A server time (unix us) as a SQL timestamptz of parameter $n.
std::string Timestamp(int n) {
  return absl::StrCat("(to_timestamp(0) + $", n,
                      "::bigint * interval '1 microsecond')");
}

std::string FormatUs(int64_t us) {
  return absl::FormatTime("%Y-%m-%d %H:%M:%E3S", absl::FromUnixMicros(us),
                          absl::UTCTimeZone());
}

// A text[] literal of `ids`.
std::string ArrayLiteral(const std::vector<std::string>& ids) {
  std::string out = "{";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) out += ",";
    out += "\"";
    for (char c : ids[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += "\"";
  }
  return out + "}";
}

}  // namespace

Reconciler::Reconciler(ReconcilerOptions options)
    : options_(std::move(options)),
      lo_(options_.tables.size(), 0),
      off_(options_.tables.size(), false),
      judged_hi_(options_.tables.size(), 0),
      judged_horizon_(options_.tables.size()) {}

std::unique_ptr<Reconciler> Reconciler::Start(ReconcilerOptions options) {
  std::unique_ptr<Reconciler> r(new Reconciler(std::move(options)));
  r->thread_ = std::thread([self = r.get()] { self->Run(); });
  return r;
}

Reconciler::~Reconciler() {
  stopping_.store(true);
  stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

void Reconciler::Run() {
  // Its own name in top -H and /proc (the reconcile benchmark reads it).
  pthread_setname_np(pthread_self(), "reconciler");
  std::string last_error;
  while (!stop_.WaitForNotificationWithTimeout(behind_ ? absl::ZeroDuration()
                                                       : options_.interval)) {
    behind_ = false;
    absl::Status s = Pass();
    if (!s.ok() && !stopping_.load()) {
      // Logged once per distinct cause; retried next interval.
      if (std::string(s.message()) != last_error) {
        spdlog::warn("{}reconcile: {}; retried every {}", options_.name,
                     std::string(s.message()),
                     absl::FormatDuration(options_.interval));
        last_error = std::string(s.message());
      }
    } else {
      last_error.clear();
    }
  }
}

void Reconciler::Judged(size_t t, int64_t hi, const std::string& horizon) {
  judged_hi_[t] = hi;
  judged_horizon_[t] = horizon;
}

absl::Status Reconciler::Pass() {
  if (options_.acknowledged->streaming_since() == absl::InfiniteFuture()) {
    return absl::OkStatus();  // not streaming yet: nothing to compare with
  }
  ASSIGN_OR_RETURN(
      auto conn,
      PgConnection::Connect(options_.conninfo, PgConnection::Mode::kNormal));
  const absl::Time local_now = absl::Now();
  ASSIGN_OR_RETURN(
      PgResult clock,
      conn->Exec("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)"
                 "::bigint::text"));
  const int64_t now_us = Int(clock.get(), 0, 0);
  if (start_us_ == 0) {
    // A table without the commit-time column cannot be judged: off for it,
    // said once.
    for (size_t t = 0; t < options_.tables.size(); ++t) {
      ASSIGN_OR_RETURN(
          OutboxTable table,
          OutboxTable::Load(*conn, options_.tables[t], options_.columns,
                            "--reconcile-interval: "));
      if (table.Optional(options_.created_at_column).empty()) {
        off_[t] = true;
        spdlog::info(
            "{}reconcile: off for {}: it has no column {} (the "
            "transaction's start, as in sql/outbox.sql)",
            options_.name, options_.tables[t].ToString(),
            options_.created_at_column);
      }
    }
    // Where an earlier process got to: the rows from there to this start
    // are judged too, against Kafka.
    ASSIGN_OR_RETURN(std::optional<int64_t> before,
                     ReadReconciledBefore(*conn, options_.slot));
    start_us_ = now_us;
    floor_us_ = std::min(before.value_or(now_us), now_us);
    std::fill(lo_.begin(), lo_.end(), floor_us_);
    judged_before_.store(floor_us_);
    // A first start records its floor at once: a process killed before its
    // window moves hands it on.
    recorded_before_ = before.has_value() ? floor_us_ : INT64_MIN;
    RecordJudged(*conn, floor_us_);
    spdlog::info(
        "{}reconcile: every {}, rows created from {} UTC on, older than {}{}",
        options_.name, absl::FormatDuration(options_.interval),
        FormatUs(floor_us_), absl::FormatDuration(options_.margin),
        floor_us_ < start_us_
            ? absl::StrCat(" (those before ", FormatUs(start_us_),
                           ", from an earlier process, judged against Kafka)")
            : "");
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(
      PgResult state,
      conn->ExecParams(
          "SELECT source, last_ack_lsn::text, xmin_horizon::text, "
          "(pg_snapshot_xmax(pg_current_snapshot())::text::numeric - "
          "xmin_horizon::text::numeric < $2::numeric)::text "
          "FROM outbox.publisher_state WHERE slot_name = $1",
          {options_.slot, absl::StrCat(kMaxHorizonAge)}));
  if (PQntuples(state.get()) == 0) return absl::OkStatus();
  const std::optional<std::string> horizon = Field(state.get(), 0, 2);
  if (!horizon.has_value() || Field(state.get(), 0, 3) != "true") {
    return absl::OkStatus();  // nothing provably confirmed yet
  }
  const std::string source = Field(state.get(), 0, 0).value_or("");
  ASSIGN_OR_RETURN(Lsn confirmed,
                   Lsn::Parse(Field(state.get(), 0, 1).value_or("")));
  const int64_t margin_us = absl::ToInt64Microseconds(options_.margin);
  const int64_t hi = now_us - margin_us;

  for (size_t t = 0; t < options_.tables.size(); ++t) {
    if (stopping_.load()) return absl::OkStatus();
    if (off_[t]) continue;
    const QualifiedName& name = options_.tables[t];
    ASSIGN_OR_RETURN(OutboxTable table,
                     OutboxTable::Load(*conn, name, options_.columns,
                                       "--reconcile-interval: "));
    ASSIGN_OR_RETURN(const std::string created,
                     table.Require(options_.created_at_column,
                                   "the transaction's start, as in "
                                   "sql/outbox.sql"));
    ASSIGN_OR_RETURN(const std::string id,
                     table.Require(options_.columns.id, "the event id"));
    const int64_t lo = lo_[t];
    if (lo >= hi) continue;
    const std::string& q = table.quoted_name();
    const std::string window = absl::StrCat(
        " FROM ", q, " WHERE ", q, ".", created, " >= ", Timestamp(1), " AND ",
        q, ".", created, " < ", Timestamp(2));
    // Not again: a row the last pass judged (before its window's end, its
    // xmin before that pass's horizon, so it was visible then).
    std::vector<std::optional<std::string>> params = {
        absl::StrCat(lo), absl::StrCat(hi), *horizon};
    std::string fresh;
    if (judged_hi_[t] > lo && !judged_horizon_[t].empty()) {
      fresh = absl::StrCat(" AND (", q, ".", created, " >= ", Timestamp(4),
                           " OR age(", q, ".xmin) <= age(($5::xid8::text::",
                           "numeric % 4294967296)::text::xid))");
      params.push_back(absl::StrCat(judged_hi_[t]));
      params.push_back(judged_horizon_[t]);
    }
    // The row's xmin precedes the horizon: age() is the distance back from
    // the current transaction id (wraparound-safe; a frozen xmin is
    // oldest of all).
    const std::string select = absl::StrCat(
        "SELECT ", q, ".", id, "::text, (age(", q,
        ".xmin) > age(($3::xid8::text::numeric % 4294967296)"
        "::text::xid))::text, (extract(epoch FROM ",
        q, ".", created, ") * 1000000)::bigint::text", window, fresh);
    // At most --reconcile-batch rows (a window far behind, after a long
    // stop): this pass's window then ends at the last row's created_at and
    // the next pass follows at once. Rows of one transaction start are
    // never split.
    ASSIGN_OR_RETURN(
        PgResult rows,
        conn->ExecParams(absl::StrCat(select, " ORDER BY ", q, ".", created,
                                      " LIMIT ", options_.max_rows_per_pass),
                         params));
    int64_t end = hi;
    const int limit = options_.max_rows_per_pass;
    if (PQntuples(rows.get()) == limit) {
      const int64_t cut = Int(rows.get(), limit - 1, 2);
      if (Int(rows.get(), 0, 2) < cut) {
        end = cut;  // the rows at `cut` are the next pass's
      } else {
        // One transaction start holds them all: all of its rows.
        end = cut + 1;
        params[1] = absl::StrCat(end);
        ASSIGN_OR_RETURN(rows, conn->ExecParams(select, params));
      }
    }
    const PGresult* r = rows.get();
    std::vector<uint64_t> hashes;
    std::vector<int> judged_rows;
    int64_t pending_min = std::numeric_limits<int64_t>::max();
    for (int i = 0; i < PQntuples(r); ++i) {
      if (Int(r, i, 2) >= end) continue;  // the next pass's
      if (Field(r, i, 1) != "true") {
        pending_min = std::min(pending_min, Int(r, i, 2));
        continue;
      }
      const std::optional<std::string> row_id = Field(r, i, 0);
      if (!row_id.has_value()) continue;
      hashes.push_back(AcknowledgedIds::Hash(*row_id));
      judged_rows.push_back(i);
    }
    // More to judge at once, unless the pass judged nothing (rows waiting
    // for the horizon fill the batch): then the interval.
    if (end < hi && !judged_rows.empty()) behind_ = true;
    const std::vector<bool> acked = options_.acknowledged->ContainsEach(hashes);
    std::vector<std::string> missing_ids;
    for (size_t k = 0; k < acked.size(); ++k) {
      if (!acked[k]) missing_ids.push_back(*Field(r, judged_rows[k], 0));
    }
    // The next window: from one margin before this one's end, or from the
    // oldest row not judged yet; once the missing rows are in Kafka.
    const int64_t next_lo =
        std::max(floor_us_, std::min(end - margin_us, pending_min));
    if (missing_ids.empty()) {
      lo_[t] = next_lo;
      Judged(t, end, *horizon);
      continue;
    }

    // The missing rows as events, oldest first.
    ASSIGN_OR_RETURN(
        PgResult full,
        conn->ExecParams(
            absl::StrCat("SELECT ", table.select_list(),
                         ", (extract(epoch "
                         "FROM ",
                         q, ".", created, ") * 1000000)::bigint::text", window,
                         " AND ", q, ".", id,
                         "::text = ANY($3::text[]) ORDER BY ", q, ".", created),
            {absl::StrCat(lo), absl::StrCat(end), ArrayLiteral(missing_ids)}));
    const PGresult* f = full.get();
    const std::string table_name = absl::StrCat(name.schema, ".", name.name);
    std::vector<RowCell> cells;
    std::vector<OutboxEvent> events;
    for (int i = 0; i < PQntuples(f); ++i) {
      cells.clear();
      table.AppendCells(f, i, /*first=*/0, &cells);
      const int64_t created_us = Int(f, i, table.select_width());
      RowEvent row =
          RowToEvent(cells, table.layout(), table.columns(),
                     RowOrigin{EventPosition{confirmed, 0}, std::nullopt,
                               created_us / 1000, table_name});
      // Not an event: dead-lettered by the stream without an id.
      if (auto* e = std::get_if<OutboxEvent>(&row)) {
        events.push_back(std::move(*e));
      }
    }
    ASSIGN_OR_RETURN(events, LeaveThoseInKafka(source, std::move(events)));
    if (events.empty()) {
      lo_[t] = next_lo;
      Judged(t, end, *horizon);
      continue;
    }
    spdlog::error(
        "{}reconcile: {} rows of {} created between {} and {} UTC were "
        "never published (first id {}); publishing them late with header "
        "outbox.reconciled",
        options_.name, events.size(), name.ToString(), FormatUs(lo),
        FormatUs(end), events.front().id);
    uint64_t delivered = 0;
    absl::Status published =
        PublishLate(source, confirmed, std::move(events), delivered);
    // Counted once each: a row delivered by a pass that failed is
    // acknowledged, and not found again.
    missing_ += delivered;
    if (options_.missing != nullptr) options_.missing->Increment(delivered);
    RETURN_IF_ERROR(published);
    lo_[t] = next_lo;
    Judged(t, end, *horizon);
  }
  int64_t judged = std::numeric_limits<int64_t>::max();
  for (size_t t = 0; t < lo_.size(); ++t) {
    if (!off_[t]) judged = std::min(judged, lo_[t]);
  }
  if (judged == std::numeric_limits<int64_t>::max()) judged = now_us;
  judged_before_.store(judged);
  RecordJudged(*conn, judged);
  // Ids acknowledged before the oldest window's start (on this host's
  // clock, with slack) can no longer be asked about.
  options_.acknowledged->PruneBefore(
      absl::FromUnixMicros(judged) +
      (local_now - absl::FromUnixMicros(now_us)) - kClockSlack);
  return absl::OkStatus();
}

std::vector<std::string> Reconciler::TopicsOf(
    const std::string& source, const std::vector<OutboxEvent>& events) const {
  RecordBuilder records(options_.records);
  records.SetSource(source);
  std::vector<std::string> topics = {options_.records.dlq_topic};
  for (OutboxEvent e : events) {
    records.Prepare(e);
    std::string topic = records.Route(e).topic;
    if (std::find(topics.begin(), topics.end(), topic) == topics.end()) {
      topics.push_back(std::move(topic));
    }
  }
  return topics;
}

absl::StatusOr<std::vector<OutboxEvent>> Reconciler::LeaveThoseInKafka(
    const std::string& source, std::vector<OutboxEvent> events) {
  std::vector<OutboxEvent> earlier;
  std::vector<OutboxEvent> later;
  for (OutboxEvent& e : events) {
    const bool before_start = e.commit_time_unix_ms * 1000 < start_us_;
    (before_start ? earlier : later).push_back(std::move(e));
  }
  if (earlier.empty()) return later;
  ReadBackRequest request;
  request.brokers = options_.producer.brokers;
  request.properties = options_.producer.properties;
  request.topics = TopicsOf(source, earlier);
  // The records' timestamps are the rows' commit times (reconciled ones:
  // created_at), never before created_at.
  request.since_unix_ms = earlier.front().commit_time_unix_ms;
  for (const OutboxEvent& e : earlier) {
    request.since_unix_ms =
        std::min(request.since_unix_ms, e.commit_time_unix_ms);
    request.ids.insert(e.id);
  }
  absl::StatusOr<absl::flat_hash_set<std::string>> read =
      options_.read_back(request);
  if (absl::IsPermissionDenied(read.status()) ||
      absl::IsFailedPrecondition(read.status())) {
    // An answer that will not change (not authorized; a compacted topic,
    // retention): judging these would stop the window (and the cleaner)
    // for good, or republish what Kafka dropped. They are left to the
    // slot, as without an earlier process's progress.
    spdlog::warn(
        "{}reconcile: {}; the rows created before this process started "
        "that it did not acknowledge itself ({} now) are not judged{}",
        options_.name, std::string(read.status().message()), earlier.size(),
        absl::IsPermissionDenied(read.status())
            ? " (grant outboxd's principal READ and DESCRIBE on its topics)"
            : "");
    floor_us_ = std::max(floor_us_, start_us_);
    return later;
  }
  RETURN_IF_ERROR(read.status());
  const absl::flat_hash_set<std::string>& found = *read;
  size_t absent = 0;
  for (OutboxEvent& e : earlier) {
    if (found.contains(e.id)) {
      options_.acknowledged->Add(AcknowledgedIds::Hash(e.id));
    } else {
      later.push_back(std::move(e));
      ++absent;
    }
  }
  spdlog::info(
      "{}reconcile: of {} rows created before this process started and not "
      "acknowledged by it, Kafka holds {}",
      options_.name, earlier.size(), earlier.size() - absent);
  return later;
}

void Reconciler::RecordJudged(PgConnection& conn, int64_t judged) {
  if (judged <= recorded_before_ || !record_judged_) return;
  absl::StatusOr<bool> written =
      RecordReconciledBefore(conn, options_.slot, judged);
  if (!written.ok()) {
    // Said once: a restart then judges from its own start.
    spdlog::warn("{}reconcile: cannot keep its progress in {} ({})",
                 options_.name, kPublisherStateTable,
                 std::string(written.status().message()));
    record_judged_ = false;
    return;
  }
  if (*written) recorded_before_ = judged;  // else: no row yet, next pass
}

// Publishes `events` (found missing) with header outbox.reconciled; returns
// once Kafka holds them all (exactly-once: committed). `delivered`: how
// many Kafka holds, also on a failure.
absl::Status Reconciler::PublishLate(const std::string& source, Lsn confirmed,
                                     std::vector<OutboxEvent> events,
                                     uint64_t& delivered) {
  RecordBuilder records(options_.records);
  records.SetSource(source);
  ProducerOptions producer = options_.producer;
  if (options_.transactional) {
    producer.transactional_id = absl::StrCat(
        TransactionalIdFor(options_.transactional_id, source), "-reconcile");
  }
  ASSIGN_OR_RETURN(
      std::unique_ptr<RepublishProducer> p,
      RepublishProducer::Create(records, producer, options_.sink_factory,
                                options_.fail_on_invalid, stopping_));
  p->set_context("reconcile");
  p->set_acknowledged(options_.acknowledged);
  absl::Status s;
  for (OutboxEvent& e : events) {
    e.position = EventPosition{confirmed, rank_++};
    s = p->AddReconciled(std::move(e), confirmed);
    if (!s.ok()) break;
  }
  absl::Status finished = p->Finish().status();
  delivered = p->delivered();
  return s.ok() ? finished : s;
}

}  // namespace outboxd
