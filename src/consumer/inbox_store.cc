#include "consumer/inbox_store.h"

#include <set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "common/lsn.h"
#include "common/status_macros.h"
#include "pg/identifier.h"

namespace outboxd {
namespace {

constexpr char kStatusApplied[] = "applied";
constexpr char kStatusDeadLettered[] = "dead-lettered";

}  // namespace

absl::StatusOr<InboxStatements> InboxStatements::ForTables(
    const std::string& processed_table, const std::string& offsets_table,
    const std::string& sources_table) {
  std::string names[3];
  const std::string* given[3] = {&processed_table, &offsets_table,
                                 &sources_table};
  for (int i = 0; i < 3; ++i) {
    auto q = ParseQualifiedName(*given[i]);
    if (!q.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("table '", *given[i], "': ", q.status().message()));
    }
    names[i] = q->ToString();
  }
  const std::string& processed = names[0];
  const std::string& offsets = names[1];
  const std::string& sources = names[2];
  InboxStatements s;
  s.ddl = absl::StrFormat(
      "CREATE TABLE IF NOT EXISTS %s (\n"
      "  consumer_group  text        NOT NULL,\n"
      "  event_id        text        NOT NULL,\n"
      "  status          text        NOT NULL DEFAULT 'applied'\n"
      "                  CHECK (status IN ('applied', 'dead-lettered')),\n"
      "  topic           text        NOT NULL,\n"
      "  kafka_partition integer     NOT NULL,\n"
      "  kafka_offset    bigint      NOT NULL,\n"
      "  source          text,\n"
      "  lsn             pg_lsn,\n"
      "  event_index     integer,\n"
      "  processed_at    timestamptz NOT NULL DEFAULT now(),\n"
      "  PRIMARY KEY (consumer_group, event_id)\n"
      ");\n"
      "CREATE TABLE IF NOT EXISTS %s (\n"
      "  consumer_group  text        NOT NULL,\n"
      "  topic           text        NOT NULL,\n"
      "  kafka_partition integer     NOT NULL,\n"
      "  next_offset     bigint      NOT NULL,\n"
      "  updated_at      timestamptz NOT NULL DEFAULT now(),\n"
      "  PRIMARY KEY (consumer_group, topic, kafka_partition)\n"
      ");\n"
      "CREATE TABLE IF NOT EXISTS %s (\n"
      "  consumer_group  text        NOT NULL,\n"
      "  source          text        NOT NULL,\n"
      "  lsn             pg_lsn      NOT NULL,\n"
      "  event_index     integer     NOT NULL,\n"
      "  updated_at      timestamptz NOT NULL DEFAULT now(),\n"
      "  PRIMARY KEY (consumer_group, source)\n"
      ");\n",
      processed, offsets, sources);
  s.insert_processed = absl::StrCat(
      "INSERT INTO ", processed,
      " (consumer_group, event_id, status, topic, kafka_partition, "
      "kafka_offset, source, lsn, event_index) VALUES ($1, $2, $3, $4, "
      "$5::integer, $6::bigint, $7, $8::pg_lsn, $9::integer) "
      "ON CONFLICT (consumer_group, event_id) DO NOTHING");
  s.store_offset = absl::StrCat(
      "INSERT INTO ", offsets,
      " AS cur (consumer_group, topic, kafka_partition, next_offset) "
      "VALUES ($1, $2, $3::integer, $4::bigint) "
      "ON CONFLICT (consumer_group, topic, kafka_partition) DO UPDATE SET "
      "next_offset = EXCLUDED.next_offset, updated_at = now()");
  s.store_source =
      absl::StrCat("INSERT INTO ", sources,
                   " AS cur (consumer_group, source, lsn, event_index) "
                   "VALUES ($1, $2, $3::pg_lsn, $4::integer) "
                   "ON CONFLICT (consumer_group, source) DO UPDATE SET "
                   "lsn = EXCLUDED.lsn, event_index = EXCLUDED.event_index, "
                   "updated_at = now() WHERE (cur.lsn, cur.event_index) < "
                   "(EXCLUDED.lsn, EXCLUDED.event_index)");
  s.load_offset = absl::StrCat(
      "SELECT next_offset FROM ", offsets,
      " WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = "
      "$3::integer");
  s.dependencies =
      absl::StrCat("SELECT count(DISTINCT event_id) FROM ", processed,
                   " WHERE consumer_group = $1 AND status = 'applied' AND "
                   "event_id = ANY($2::text[])");
  return s;
}

InboxStore::InboxStore(std::string group_id, InboxStatements sql,
                       std::unique_ptr<PgConnection> db)
    : group_id_(std::move(group_id)),
      sql_(std::move(sql)),
      db_(std::move(db)) {}

absl::StatusOr<std::unique_ptr<InboxStore>> InboxStore::Open(
    const InboxOptions& options) {
  ASSIGN_OR_RETURN(
      InboxStatements sql,
      InboxStatements::ForTables(options.processed_table, options.offsets_table,
                                 options.sources_table));
  ASSIGN_OR_RETURN(
      std::unique_ptr<PgConnection> db,
      PgConnection::Connect(options.conninfo, PgConnection::Mode::kNormal));
  if (options.create_tables) {
    // Serialised: concurrent CREATE TABLE IF NOT EXISTS can still collide.
    RETURN_IF_ERROR(
        db->Exec(absl::StrCat("BEGIN; SELECT pg_advisory_xact_lock(",
                              "hashtext('outbox-inbox ddl')); ", sql.ddl,
                              "COMMIT"))
            .status());
  }
  std::unique_ptr<InboxStore> store(
      new InboxStore(options.group_id, std::move(sql), std::move(db)));
  RETURN_IF_ERROR(store->Prepare());
  return store;
}

// The per-record statements are prepared once (after the tables exist):
// parse and plan once, not per event.
absl::Status InboxStore::Prepare() {
  const std::pair<const char*, const std::string*> statements[] = {
      {"inbox_insert_processed", &sql_.insert_processed},
      {"inbox_store_offset", &sql_.store_offset},
      {"inbox_store_source", &sql_.store_source},
      {"inbox_load_offset", &sql_.load_offset},
      {"inbox_dependencies", &sql_.dependencies},
  };
  for (const auto& [name, sql] : statements) {
    PgResult r(PQprepare(db_->raw(), name, sql->c_str(), 0, nullptr));
    if (r == nullptr || PQresultStatus(r.get()) != PGRES_COMMAND_OK) {
      // Missing tables (create_tables off and not created yet) show here.
      return StatusFromPgResult(absl::StrCat("preparing ", name), r.get(),
                                db_->raw());
    }
    prepared_names_[*sql] = name;
  }
  return absl::OkStatus();
}

// Runs one of the statements above, prepared.
absl::StatusOr<PgResult> InboxStore::Exec(
    const std::string& sql,
    const std::vector<std::optional<std::string>>& params) {
  auto it = prepared_names_.find(sql);
  if (it == prepared_names_.end()) return db_->ExecParams(sql, params);
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const auto& p : params) values.push_back(p ? p->c_str() : nullptr);
  PgResult r(PQexecPrepared(db_->raw(), it->second.c_str(),
                            static_cast<int>(values.size()), values.data(),
                            nullptr, nullptr, 0));
  ExecStatusType st = r ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    return StatusFromPgResult("inbox statement failed", r.get(), db_->raw());
  }
  return r;
}

absl::StatusOr<std::optional<int64_t>> InboxStore::LoadOffset(
    const TopicPartition& tp) {
  ASSIGN_OR_RETURN(PgResult r,
                   Exec(sql_.load_offset,
                        {group_id_, tp.topic, absl::StrCat(tp.partition)}));
  int64_t next;
  if (PQntuples(r.get()) != 1 ||
      !absl::SimpleAtoi(PQgetvalue(r.get(), 0, 0), &next)) {
    return std::nullopt;
  }
  return next;
}

absl::StatusOr<bool> InboxStore::DependenciesApplied(
    const std::vector<std::string>& ids) {
  if (ids.empty()) return true;
  std::set<std::string> unique(ids.begin(), ids.end());
  ASSIGN_OR_RETURN(
      PgResult res,
      Exec(sql_.dependencies,
           {group_id_, TextArrayLiteral({unique.begin(), unique.end()})}));
  size_t n = 0;
  if (PQntuples(res.get()) != 1 ||
      !absl::SimpleAtoi(PQgetvalue(res.get(), 0, 0), &n)) {
    return absl::InternalError("dependency query returned no count");
  }
  return n == unique.size();
}

void InboxStore::RollbackQuietly() {
  if (PQtransactionStatus(db_->raw()) != PQTRANS_IDLE) {
    db_->Exec("ROLLBACK").IgnoreError();
  }
}

absl::Status InboxStore::StoreOffset(const InboxRecord& r) {
  return Exec(sql_.store_offset, {group_id_, r.topic, absl::StrCat(r.partition),
                                  absl::StrCat(r.offset + 1)})
      .status();
}

absl::Status InboxStore::Commit() {
  ASSIGN_OR_RETURN(PgResult res, db_->Exec("COMMIT"));
  // COMMIT of a failed transaction "succeeds" as ROLLBACK.
  if (absl::string_view(PQcmdStatus(res.get())) != "COMMIT") {
    return absl::AbortedError("transaction rolled back at COMMIT");
  }
  return absl::OkStatus();
}

absl::StatusOr<PgResult> InboxStore::InsertProcessed(const InboxRecord& r,
                                                     const char* status) {
  std::optional<std::string> source, lsn, index;
  if (!r.source.empty()) source = r.source;
  if (r.lsn.has_value()) lsn = Lsn(*r.lsn).ToString();
  if (r.index.has_value()) index = absl::StrCat(*r.index);
  return Exec(
      sql_.insert_processed,
      {group_id_, r.event_id, std::string(status), r.topic,
       absl::StrCat(r.partition), absl::StrCat(r.offset), source, lsn, index});
}

absl::StatusOr<InboxStore::Outcome> InboxStore::Apply(
    const InboxRecord& record, const InboxHandler& handler,
    absl::Status* handler_error) {
  absl::StatusOr<Outcome> out =
      ApplyInTransaction(record, handler, handler_error);
  if (!out.ok() || *out == Outcome::kHandlerFailed) RollbackQuietly();
  return out;
}

absl::StatusOr<InboxStore::Outcome> InboxStore::ApplyInTransaction(
    const InboxRecord& r, const InboxHandler& handler,
    absl::Status* handler_error) {
  RETURN_IF_ERROR(db_->Exec("BEGIN").status());
  ASSIGN_OR_RETURN(PgResult ins, InsertProcessed(r, kStatusApplied));
  const bool fresh = absl::string_view(PQcmdTuples(ins.get())) == "1";
  if (fresh) {
    absl::Status hs = r.decode_status.ok() ? handler(*db_, r) : r.decode_status;
    if (hs.ok() && PQtransactionStatus(db_->raw()) == PQTRANS_INERROR) {
      hs = absl::InternalError(
          "the handler left the transaction failed (an error it ignored)");
    }
    if (!hs.ok()) {
      if (PQstatus(db_->raw()) != CONNECTION_OK) {
        return absl::UnavailableError(
            absl::StrCat("database connection lost: ", hs.message()));
      }
      *handler_error = std::move(hs);
      return Outcome::kHandlerFailed;
    }
    if (!r.source.empty() && r.lsn.has_value() && r.index.has_value()) {
      RETURN_IF_ERROR(
          Exec(sql_.store_source, {group_id_, r.source, Lsn(*r.lsn).ToString(),
                                   absl::StrCat(*r.index)})
              .status());
    }
  }
  RETURN_IF_ERROR(StoreOffset(r));
  absl::Status committed = Commit();
  if (!committed.ok()) {
    // With the connection still up, a COMMIT that fails after the handler
    // ran failed because of the handler's changes: a deferred constraint
    // or constraint trigger, a serialization failure. It is the handler's
    // failure (retried, then dead-lettered or stopped), not the inbox's
    // own: stopping would wedge on this record at every start. The inbox's
    // own statements have no deferred checks. A lost connection stays the
    // inbox's failure.
    if (fresh && PQstatus(db_->raw()) == CONNECTION_OK) {
      *handler_error = absl::Status(
          committed.code(),
          absl::StrCat("COMMIT failed (deferred check of the handler's "
                       "changes): ",
                       committed.message()));
      return Outcome::kHandlerFailed;
    }
    if (PQstatus(db_->raw()) != CONNECTION_OK) {
      return absl::UnavailableError(absl::StrCat(
          "database connection lost at COMMIT: ", committed.message()));
    }
    return committed;
  }
  return fresh ? Outcome::kApplied : Outcome::kDuplicate;
}

absl::Status InboxStore::MarkDeadLettered(const InboxRecord& r) {
  absl::Status s = [&]() -> absl::Status {
    RETURN_IF_ERROR(db_->Exec("BEGIN").status());
    RETURN_IF_ERROR(InsertProcessed(r, kStatusDeadLettered).status());
    RETURN_IF_ERROR(StoreOffset(r));
    return Commit();
  }();
  if (!s.ok()) RollbackQuietly();
  return s;
}

}  // namespace outboxd
