#include "pg/publisher_state.h"

#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace outboxd {

const char kPublisherStateDdl[] =
    "CREATE SCHEMA IF NOT EXISTS outbox; "
    "CREATE TABLE IF NOT EXISTS outbox.publisher_state ("
    "slot_name text PRIMARY KEY, "
    "source text NOT NULL, "
    "last_ack_lsn pg_lsn NOT NULL, "
    "last_ack_commit_time timestamptz, "
    "xmin_horizon xid8, "
    "updated_at timestamptz NOT NULL DEFAULT now(), "
    "reconciled_before timestamptz)";

const char kReconciledBeforeDdl[] =
    "ALTER TABLE outbox.publisher_state "
    "ADD COLUMN IF NOT EXISTS reconciled_before timestamptz";

namespace {

std::optional<std::string> Field(const PGresult* r, int row, int col) {
  if (PQgetisnull(r, row, col)) return std::nullopt;
  return std::string(PQgetvalue(r, row, col), PQgetlength(r, row, col));
}

constexpr char kRecordSql[] =
    "INSERT INTO outbox.publisher_state AS s (slot_name, source, "
    "last_ack_lsn, last_ack_commit_time, xmin_horizon, updated_at) "
    "VALUES ($1, $2, $3::pg_lsn, to_timestamp(0) + $4::bigint * interval '1 "
    "microsecond', "
    "$5::xid8, now()) "
    "ON CONFLICT (slot_name) DO UPDATE SET source = EXCLUDED.source, "
    "last_ack_lsn = EXCLUDED.last_ack_lsn, "
    "last_ack_commit_time = CASE WHEN $6::boolean "
    "THEN EXCLUDED.last_ack_commit_time "
    "ELSE COALESCE(EXCLUDED.last_ack_commit_time, s.last_ack_commit_time) END, "
    "xmin_horizon = CASE WHEN $6::boolean THEN EXCLUDED.xmin_horizon "
    "ELSE COALESCE(EXCLUDED.xmin_horizon, s.xmin_horizon) END, "
    "updated_at = now() "
    "WHERE $6::boolean OR (s.source = EXCLUDED.source AND "
    "s.last_ack_lsn <= EXCLUDED.last_ack_lsn) "
    // A new sample: the statement's snapshot is taken before the WAL
    // position is read. The insert position, not the write position: a
    // transaction with synchronous_commit=off is finished before its commit
    // record is written out, but not before it is inserted.
    "RETURNING pg_snapshot_xmin(pg_current_snapshot())::text, "
    "pg_current_wal_insert_lsn()::text, "
    "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text";

constexpr char kSampleSql[] =
    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text, "
    "pg_current_wal_insert_lsn()::text, "
    "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text";

absl::StatusOr<XminSample> SampleFromRow(const PGresult* r) {
  XminSample s;
  s.xmin = Field(r, 0, 0).value_or("");
  ASSIGN_OR_RETURN(s.wal, Lsn::Parse(Field(r, 0, 1).value_or("")));
  if (s.xmin.empty() ||
      !absl::SimpleAtoi(Field(r, 0, 2).value_or(""), &s.server_time_unix_us)) {
    return absl::InternalError("xmin sample: unexpected NULL");
  }
  return s;
}

}  // namespace

absl::StatusOr<std::unique_ptr<PublisherStateStore>> PublisherStateStore::Open(
    const std::string& conninfo, const std::string& slot,
    const std::string& source) {
  std::unique_ptr<PublisherStateStore> store(
      new PublisherStateStore(conninfo, slot, source));
  RETURN_IF_ERROR(store->Connect());
  RETURN_IF_ERROR(store->EnsureTable());
  return store;
}

absl::Status PublisherStateStore::Connect() {
  ASSIGN_OR_RETURN(
      conn_, PgConnection::Connect(conninfo_, PgConnection::Mode::kNormal));
  return absl::OkStatus();
}

absl::Status PublisherStateStore::EnsureTable() {
  ASSIGN_OR_RETURN(
      PgResult exists,
      // From the catalog: to_regclass needs USAGE on the schema.
      Run("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c "
          "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
          "WHERE n.nspname = 'outbox' AND c.relname = 'publisher_state')"
          "::text, current_user::text",
          {}));
  const std::string user = Field(exists.get(), 0, 1).value_or("");
  const std::string what_to_run = absl::StrCat(
      "run sql/outbox.sql as the owner of the outbox table, or: ",
      kPublisherStateDdl, "; GRANT USAGE ON SCHEMA outbox TO ", user,
      "; GRANT SELECT, INSERT, UPDATE ON outbox.publisher_state TO ", user);
  if (Field(exists.get(), 0, 0).value_or("") != "true") {
    absl::StatusOr<PgResult> created = Run(kPublisherStateDdl, {});
    if (!created.ok() && !absl::IsAlreadyExists(created.status())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "outboxd keeps its acknowledged position in ", kPublisherStateTable,
          " (to detect a lost replication slot) but cannot create it (",
          created.status().message(), "): ", what_to_run));
    }
    spdlog::info("created {}", kPublisherStateTable);
  }
  ASSIGN_OR_RETURN(PgResult allowed,
                   Run("SELECT (has_schema_privilege('outbox', 'USAGE') AND "
                       "has_table_privilege('outbox.publisher_state', "
                       "'SELECT, INSERT, UPDATE'))::text",
                       {}));
  if (Field(allowed.get(), 0, 0).value_or("") != "true") {
    return absl::FailedPreconditionError(absl::StrCat(
        "outboxd keeps its acknowledged position in ", kPublisherStateTable,
        " (to detect a lost replication slot) but role ", user,
        " may not read and write it: ", what_to_run));
  }
  return AddReconciledBefore();
}

absl::Status PublisherStateStore::AddReconciledBefore() {
  ASSIGN_OR_RETURN(
      PgResult has,
      Run("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute "
          "WHERE attrelid = 'outbox.publisher_state'::regclass AND "
          "attname = 'reconciled_before' AND NOT attisdropped)::text",
          {}));
  if (Field(has.get(), 0, 0).value_or("") == "true") return absl::OkStatus();
  absl::StatusOr<PgResult> added = Run(kReconciledBeforeDdl, {});
  if (added.ok()) {
    spdlog::info("added column reconciled_before to {}", kPublisherStateTable);
  } else {
    // Not fatal: only the reconciler's memory across restarts needs it.
    spdlog::warn(
        "{} has no column reconciled_before and outboxd cannot add it ({}): "
        "after a restart the reconciler cannot judge the rows created "
        "shortly before it; run as the table's owner: {}",
        kPublisherStateTable, std::string(added.status().message()),
        kReconciledBeforeDdl);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<int64_t>> ReadReconciledBefore(
    PgConnection& conn, const std::string& slot) {
  // Through to_jsonb: NULL, not an error, where the column is missing.
  ASSIGN_OR_RETURN(
      PgResult r,
      conn.ExecParams("SELECT (extract(epoch FROM (to_jsonb(s) ->> "
                      "'reconciled_before')::timestamptz) * 1000000)"
                      "::bigint::text FROM outbox.publisher_state s "
                      "WHERE slot_name = $1",
                      {slot}));
  if (PQntuples(r.get()) == 0) return std::nullopt;
  const std::optional<std::string> us = Field(r.get(), 0, 0);
  int64_t v = 0;
  if (!us.has_value() || !absl::SimpleAtoi(*us, &v)) return std::nullopt;
  return v;
}

absl::StatusOr<bool> RecordReconciledBefore(PgConnection& conn,
                                            const std::string& slot,
                                            int64_t unix_us) {
  ASSIGN_OR_RETURN(
      PgResult r,
      conn.ExecParams("UPDATE outbox.publisher_state SET reconciled_before = "
                      "to_timestamp(0) + $2::bigint * interval '1 microsecond' "
                      "WHERE slot_name = $1",
                      {slot, absl::StrCat(unix_us)}));
  return std::string(PQcmdTuples(r.get())) != "0";
}

absl::StatusOr<PgResult> PublisherStateStore::Run(
    const std::string& sql,
    const std::vector<std::optional<std::string>>& params) {
  if (conn_ == nullptr) RETURN_IF_ERROR(Connect());
  absl::StatusOr<PgResult> r =
      params.empty() ? conn_->Exec(sql) : conn_->ExecParams(sql, params);
  if (!r.ok() && absl::IsUnavailable(r.status())) conn_.reset();
  return r;
}

absl::StatusOr<std::optional<PublisherState>> PublisherStateStore::Read() {
  ASSIGN_OR_RETURN(
      PgResult r,
      Run("SELECT source, last_ack_lsn::text, "
          "(extract(epoch FROM last_ack_commit_time) * 1000000)::bigint::text, "
          "last_ack_commit_time::text, xmin_horizon::text "
          "FROM outbox.publisher_state WHERE slot_name = $1",
          {slot_}));
  if (PQntuples(r.get()) == 0) return std::nullopt;
  PublisherState state;
  state.slot = slot_;
  state.source = Field(r.get(), 0, 0).value_or("");
  ASSIGN_OR_RETURN(state.last_ack,
                   Lsn::Parse(Field(r.get(), 0, 1).value_or("")));
  if (auto ms = Field(r.get(), 0, 2); ms.has_value()) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(*ms, &v)) {
      return absl::InternalError(absl::StrCat("bad commit time ", *ms));
    }
    state.commit_time_unix_us = v;
  }
  state.commit_time_text = Field(r.get(), 0, 3).value_or("");
  state.xmin_horizon = Field(r.get(), 0, 4);
  recorded_ = Lsn::Max(recorded_, state.last_ack);
  return state;
}

absl::StatusOr<XminSample> PublisherStateStore::TakeSample() {
  ASSIGN_OR_RETURN(PgResult r, Run(kSampleSql, {}));
  ASSIGN_OR_RETURN(XminSample s, SampleFromRow(r.get()));
  samples_.push_back(s);
  return s;
}

absl::Status PublisherStateStore::Record(
    Lsn ack, std::optional<int64_t> commit_time_unix_us,
    std::optional<std::string> horizon, bool force) {
  if (!horizon.has_value()) {
    // The newest sample taken at or before `ack`; older ones are useless.
    while (!samples_.empty() && samples_.front().wal <= ack) {
      horizon = samples_.front().xmin;
      samples_.pop_front();
    }
    if (horizon.has_value()) {
      samples_.push_front(XminSample{*horizon, Lsn(), 0});  // still valid
    }
  }
  std::optional<std::string> time;
  if (commit_time_unix_us.has_value()) {
    time = absl::StrCat(*commit_time_unix_us);
  }
  ASSIGN_OR_RETURN(PgResult r,
                   Run(kRecordSql, {slot_, source_, ack.ToString(), time,
                                    horizon, force ? "true" : "false"}));
  if (PQntuples(r.get()) == 0) {
    // Not written: the row is already further, or belongs to another source.
    ASSIGN_OR_RETURN(std::optional<PublisherState> row, Read());
    if (!row.has_value() || row->source != source_ || row->last_ack < ack) {
      return absl::FailedPreconditionError(
          absl::StrCat(kPublisherStateTable, ": the row of slot ", slot_,
                       " changed under outboxd (another source or position)"));
    }
  } else {
    ASSIGN_OR_RETURN(XminSample s, SampleFromRow(r.get()));
    samples_.push_back(s);
  }
  recorded_ = Lsn::Max(recorded_, ack);
  if (force) recorded_ = ack;
  return absl::OkStatus();
}

}  // namespace outboxd
