#include "pg/replication_setup.h"

#include <algorithm>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"

namespace outboxd {
namespace {

// Slot names are restricted by the server (ReplicationSlotValidateName);
// checking here gives a clearer message and a kInvalidArgument.
absl::Status ValidateSlotName(absl::string_view slot) {
  if (slot.empty() || slot.size() > kMaxIdentifierBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid replication slot name '", slot,
                     "': must be 1 to ", kMaxIdentifierBytes, " characters"));
  }
  for (char c : slot) {
    if (!(absl::ascii_islower(static_cast<unsigned char>(c)) ||
          absl::ascii_isdigit(static_cast<unsigned char>(c)) || c == '_')) {
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid replication slot name '", slot,
          "': only lower case letters, digits and underscores are allowed"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidatePublicationName(absl::string_view publication) {
  if (publication.empty() || publication.size() > kMaxIdentifierBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid publication name '", publication,
                     "': must be 1 to ", kMaxIdentifierBytes, " bytes"));
  }
  if (publication.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError("publication name contains a NUL byte");
  }
  return absl::OkStatus();
}

std::string TablesToString(const ReplicationSetupOptions& options) {
  return absl::StrJoin(options.tables, ", ",
                       [](std::string* out, const QualifiedName& t) {
                         out->append(t.ToString());
                       });
}

std::string FieldOrEmpty(const PGresult* result, int row, int column) {
  if (PQgetisnull(result, row, column)) return "";
  return PQgetvalue(result, row, column);
}

struct TableInfo {
  std::string oid;
  std::string namespace_oid;
  bool partitioned = false;  // relkind 'p'
};

absl::StatusOr<TableInfo> LookUpTable(PgConnection& conn,
                                      const QualifiedName& table) {
  ASSIGN_OR_RETURN(
      PgResult result,
      conn.ExecParams(
          "SELECT c.oid, c.relnamespace, c.relkind FROM pg_catalog.pg_class c "
          "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
          "WHERE n.nspname = $1 AND c.relname = $2",
          {table.schema, table.name}));
  if (PQntuples(result.get()) == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("outbox table ", table.ToString(),
                     " does not exist: create it (see sql/) or pass --table"));
  }
  const std::string relkind = FieldOrEmpty(result.get(), 0, 2);
  if (relkind != "r" && relkind != "p") {
    return absl::FailedPreconditionError(
        absl::StrCat(table.ToString(), " is not a table (relkind '", relkind,
                     "'): only tables can be published"));
  }
  return TableInfo{FieldOrEmpty(result.get(), 0, 0),
                   FieldOrEmpty(result.get(), 0, 1), relkind == "p"};
}

// Whether an existing publication carries inserts into `table` (nullopt:
// whether it publishes inserts at all): listed itself, its schema listed
// (PostgreSQL 15), or FOR ALL TABLES.
struct PublicationCoverage {
  bool publishes_inserts = false;
  bool includes_table = false;
  bool via_partition_root = false;
};
absl::StatusOr<PublicationCoverage> InspectPublication(
    PgConnection& conn, const std::string& publication,
    const std::optional<TableInfo>& table) {
  std::string sql =
      "SELECT p.pubinsert, p.puballtables, "
      "EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel r "
      "        WHERE r.prpubid = p.oid AND r.prrelid = $2::oid)";
  if (conn.server_version() >= 150000) {
    absl::StrAppend(&sql,
                    " OR EXISTS (SELECT 1 FROM "
                    "pg_catalog.pg_publication_namespace pn "
                    "WHERE pn.pnpubid = p.oid AND pn.pnnspid = $3::oid)");
  } else {
    absl::StrAppend(&sql, " OR $3::oid IS NULL");
  }
  absl::StrAppend(&sql,
                  ", p.pubviaroot FROM pg_catalog.pg_publication p "
                  "WHERE p.pubname = $1");
  std::optional<std::string> oid;
  std::optional<std::string> nsp;
  if (table.has_value()) {
    oid = table->oid;
    nsp = table->namespace_oid;
  }
  ASSIGN_OR_RETURN(PgResult result,
                   conn.ExecParams(sql, {publication, oid, nsp}));
  if (PQntuples(result.get()) == 0) {
    return absl::InternalError(absl::StrCat("publication ", publication,
                                            " disappeared while checking it"));
  }
  PublicationCoverage coverage;
  coverage.publishes_inserts = FieldOrEmpty(result.get(), 0, 0) == "t";
  coverage.includes_table = FieldOrEmpty(result.get(), 0, 1) == "t" ||
                            FieldOrEmpty(result.get(), 0, 2) == "t";
  coverage.via_partition_root = FieldOrEmpty(result.get(), 0, 3) == "t";
  return coverage;
}

// A row filter or a column list (PostgreSQL 15) on an outbox table: the
// rows it holds back are never decoded, the slot moves past them, and the
// cleaner deletes them unpublished. Refused, naming the filter.
absl::Status CheckNoFilter(PgConnection& conn, const std::string& publication,
                           const QualifiedName& name, const TableInfo& table) {
  if (conn.server_version() < 150000) return absl::OkStatus();
  ASSIGN_OR_RETURN(
      PgResult r,
      conn.ExecParams(
          "SELECT t.rowfilter, array_to_string(t.attnames, ', '), "
          "(cardinality(t.attnames) < (SELECT count(*) FROM "
          "pg_catalog.pg_attribute a WHERE a.attrelid = $4::oid AND "
          "a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''))"
          "::text FROM pg_catalog.pg_publication_tables t "
          "WHERE t.pubname = $1 AND t.schemaname = $2 AND t.tablename = $3",
          {publication, name.schema, name.name, table.oid}));
  for (int row = 0; row < PQntuples(r.get()); ++row) {
    if (!PQgetisnull(r.get(), row, 0)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "publication ", publication, " carries ", name.ToString(),
          " with a row filter, WHERE ", FieldOrEmpty(r.get(), row, 0),
          ": the events it holds back would never be published; remove the "
          "filter (ALTER PUBLICATION ... SET TABLE listing its tables "
          "without WHERE), or pass another --publication"));
    }
    if (FieldOrEmpty(r.get(), row, 2) == "true") {
      return absl::FailedPreconditionError(absl::StrCat(
          "publication ", publication, " carries ", name.ToString(),
          " with a column list (", FieldOrEmpty(r.get(), row, 1),
          "): outbox events need every column; remove the list (ALTER "
          "PUBLICATION ... SET TABLE listing its tables without columns), "
          "or pass another --publication"));
    }
  }
  return absl::OkStatus();
}

// An existing publication belongs to the user, so outboxd does not alter
// it; but one that would never carry an outbox table's inserts is an error
// naming the fix, not a stream that silently publishes nothing from that
// table (whose rows --cleanup-after would then delete unpublished).
absl::Status CheckExistingPublication(PgConnection& conn,
                                      const ReplicationSetupOptions& options,
                                      const std::vector<TableInfo>& tables) {
  ASSIGN_OR_RETURN(PublicationCoverage any,
                   InspectPublication(conn, options.publication, std::nullopt));
  if (!any.publishes_inserts) {
    return absl::FailedPreconditionError(absl::StrCat(
        "publication ", options.publication,
        " exists but does not publish inserts, so no outbox event would "
        "arrive: ALTER PUBLICATION ... SET (publish = 'insert'), or pass "
        "another --publication"));
  }
  std::vector<std::string> missing;
  for (size_t i = 0; i < tables.size(); ++i) {
    ASSIGN_OR_RETURN(PublicationCoverage c,
                     InspectPublication(conn, options.publication, tables[i]));
    if (!c.includes_table) missing.push_back(options.tables[i].ToString());
  }
  if (!any.via_partition_root) {
    for (size_t i = 0; i < tables.size(); ++i) {
      if (!tables[i].partitioned) continue;
      ASSIGN_OR_RETURN(std::string pub,
                       conn.QuoteIdentifier(options.publication));
      return absl::FailedPreconditionError(absl::StrCat(
          "publication ", options.publication, " carries ",
          options.tables[i].ToString(),
          ", a partitioned table, without publish_via_partition_root, so "
          "its inserts would arrive under each partition's name and never "
          "be published: ALTER PUBLICATION ",
          pub, " SET (publish_via_partition_root = true)"));
    }
  }
  for (size_t i = 0; i < tables.size(); ++i) {
    RETURN_IF_ERROR(
        CheckNoFilter(conn, options.publication, options.tables[i], tables[i]));
  }
  if (!missing.empty()) {
    const std::string list = absl::StrJoin(missing, ", ");
    return absl::FailedPreconditionError(absl::StrCat(
        "publication ", options.publication, " exists but does not include ",
        list,
        ", so no event of it would arrive: ALTER PUBLICATION ... ADD TABLE ",
        list,
        ", or pass another --publication (outboxd creates a missing "
        "one for every --table)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckWalLevel(PgConnection& conn) {
  ASSIGN_OR_RETURN(PgResult result, conn.Exec("SHOW wal_level"));
  if (PQntuples(result.get()) != 1) {
    return absl::InternalError("SHOW wal_level returned no row");
  }
  const std::string level = FieldOrEmpty(result.get(), 0, 0);
  if (level != "logical") {
    return absl::FailedPreconditionError(absl::StrCat(
        "wal_level is '", level,
        "' but outboxd needs wal_level=logical: set it in postgresql.conf "
        "(or ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL"));
  }
  return absl::OkStatus();
}

absl::Status EnsurePublication(PgConnection& conn,
                               const ReplicationSetupOptions& options) {
  RETURN_IF_ERROR(ValidatePublicationName(options.publication));
  std::vector<TableInfo> tables;
  for (const QualifiedName& name : options.tables) {
    ASSIGN_OR_RETURN(tables.emplace_back(), LookUpTable(conn, name));
  }
  ASSIGN_OR_RETURN(
      PgResult existing,
      conn.ExecParams(
          "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1",
          {options.publication}));
  if (PQntuples(existing.get()) > 0) {
    return CheckExistingPublication(conn, options, tables);
  }

  ASSIGN_OR_RETURN(std::string publication,
                   conn.QuoteIdentifier(options.publication));
  std::string sql = absl::StrCat("CREATE PUBLICATION ", publication);
  for (size_t i = 0; i < options.tables.size(); ++i) {
    ASSIGN_OR_RETURN(std::string schema,
                     conn.QuoteIdentifier(options.tables[i].schema));
    ASSIGN_OR_RETURN(std::string name,
                     conn.QuoteIdentifier(options.tables[i].name));
    absl::StrAppend(&sql, i == 0 ? " FOR TABLE " : ", ", schema, ".", name);
  }
  absl::StrAppend(&sql, " WITH (publish = 'insert'");
  // A partitioned table's inserts are decoded per partition; published as
  // the root's, they reach the table's name (and --table).
  if (std::any_of(tables.begin(), tables.end(),
                  [](const TableInfo& t) { return t.partitioned; })) {
    absl::StrAppend(&sql, ", publish_via_partition_root = true");
  }
  sql.push_back(')');
  absl::StatusOr<PgResult> created = conn.Exec(sql);
  if (created.ok()) {
    spdlog::info("created publication {}{}", options.publication,
                 options.tables.empty()
                     ? std::string(" (messages only, no table)")
                     : absl::StrCat(" for table ", TablesToString(options)));
    return absl::OkStatus();
  }
  if (absl::IsAlreadyExists(created.status())) {
    // Another process created it between our check and CREATE.
    return CheckExistingPublication(conn, options, tables);
  }
  return WithContext(
      absl::StrCat("cannot create publication ", options.publication),
      created.status());
}

absl::StatusOr<std::optional<SlotInfo>> InspectSlot(
    PgConnection& conn, const ReplicationSetupOptions& options) {
  RETURN_IF_ERROR(ValidateSlotName(options.slot));
  ASSIGN_OR_RETURN(
      PgResult existing,
      conn.ExecParams(
          absl::StrCat(
              "SELECT s.slot_type, s.plugin, s.database, "
              "s.confirmed_flush_lsn, pg_catalog.current_database(), "
              "s.restart_lsn, s.wal_status, s.active::text, ",
              // Columns of newer servers (failover, synced and
              // invalidation_reason 17+, conflicting 16+), read by name
              // where the server has them: NULL where it does not.
              "j ->> 'failover', j ->> 'synced', j ->> 'invalidation_reason', "
              "j ->> 'conflicting' FROM pg_catalog.pg_replication_slots s, "
              "LATERAL pg_catalog.to_jsonb(s) j WHERE s.slot_name = $1"),
          {options.slot}));
  if (PQntuples(existing.get()) == 0) return std::nullopt;
  const PGresult* r = existing.get();
  const std::string slot_type = FieldOrEmpty(r, 0, 0);
  const std::string plugin = FieldOrEmpty(r, 0, 1);
  const std::string database = FieldOrEmpty(r, 0, 2);
  const std::string confirmed = FieldOrEmpty(r, 0, 3);
  const std::string current_database = FieldOrEmpty(r, 0, 4);
  const std::string restart = FieldOrEmpty(r, 0, 5);
  if (slot_type != "logical") {
    return absl::FailedPreconditionError(absl::StrCat(
        "replication slot ", options.slot, " is a ", slot_type,
        " slot, outboxd needs a logical slot using 'pgoutput': drop it "
        "or choose another --slot"));
  }
  if (plugin != "pgoutput") {
    return absl::FailedPreconditionError(absl::StrCat(
        "replication slot ", options.slot, " uses plugin '", plugin,
        "', outboxd needs 'pgoutput': drop the slot "
        "(SELECT pg_drop_replication_slot('",
        options.slot, "')) or choose another --slot"));
  }
  if (database != current_database) {
    return absl::FailedPreconditionError(absl::StrCat(
        "replication slot ", options.slot, " belongs to database '", database,
        "' but outboxd is connected to '", current_database,
        "': connect to that database or choose another --slot"));
  }
  SlotInfo info;
  if (!confirmed.empty()) {
    ASSIGN_OR_RETURN(info.confirmed_flush, Lsn::Parse(confirmed));
  }
  if (!restart.empty()) {
    ASSIGN_OR_RETURN(info.restart_lsn, Lsn::Parse(restart));
  }
  info.wal_status = FieldOrEmpty(r, 0, 6);
  info.active = FieldOrEmpty(r, 0, 7) == "true";
  if (!PQgetisnull(r, 0, 8)) info.failover = FieldOrEmpty(r, 0, 8) == "true";
  info.synced = FieldOrEmpty(r, 0, 9) == "true";
  info.invalidation_reason = FieldOrEmpty(r, 0, 10);
  if (!PQgetisnull(r, 0, 11)) {
    info.conflicting = FieldOrEmpty(r, 0, 11) == "true";
  }
  return info;
}

absl::Status CheckFailoverSupported(PgConnection& conn, FailoverSlot mode) {
  if (mode != FailoverSlot::kOn ||
      conn.server_version() >= kFailoverSlotServerVersion) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "--failover-slot=on needs PostgreSQL 17 or later (failover slots) but "
      "the server is ",
      PQparameterStatus(conn.raw(), "server_version") != nullptr
          ? PQparameterStatus(conn.raw(), "server_version")
          : std::to_string(conn.server_version()),
      ": use --failover-slot=auto or off (a promotion then loses the slot, "
      "see --on-slot-loss)"));
}

bool CreatesFailoverSlot(PgConnection& conn, FailoverSlot mode) {
  return mode != FailoverSlot::kOff &&
         conn.server_version() >= kFailoverSlotServerVersion;
}

absl::StatusOr<Lsn> CreateSlot(PgConnection& conn,
                               const ReplicationSetupOptions& options) {
  RETURN_IF_ERROR(ValidateSlotName(options.slot));
  RETURN_IF_ERROR(CheckFailoverSupported(conn, options.failover));
  const bool failover = CreatesFailoverSlot(conn, options.failover);
  // (slot_name, plugin, temporary, twophase, failover): the fifth argument
  // exists from 17 on.
  absl::StatusOr<PgResult> created = conn.ExecParams(
      failover ? "SELECT lsn FROM pg_catalog.pg_create_logical_replication_"
                 "slot($1, 'pgoutput', false, false, true)"
               : "SELECT lsn FROM pg_catalog.pg_create_logical_replication_"
                 "slot($1, 'pgoutput')",
      {options.slot});
  if (!created.ok()) {
    return WithContext(
        absl::StrCat("cannot create replication slot ", options.slot),
        created.status());
  }
  Lsn start;
  if (PQntuples(created->get()) == 1) {
    ASSIGN_OR_RETURN(start, Lsn::Parse(FieldOrEmpty(created->get(), 0, 0)));
  }
  spdlog::info("created logical replication slot {} (pgoutput{}) at {}",
               options.slot, failover ? ", failover" : "", start.ToString());
  return start;
}

absl::Status DropSlot(PgConnection& conn, const std::string& slot) {
  RETURN_IF_ERROR(ValidateSlotName(slot));
  absl::StatusOr<PgResult> dropped =
      conn.ExecParams("SELECT pg_catalog.pg_drop_replication_slot($1)", {slot});
  if (!dropped.ok()) {
    return WithContext(absl::StrCat("cannot drop replication slot ", slot),
                       dropped.status());
  }
  spdlog::warn("dropped replication slot {}", slot);
  return absl::OkStatus();
}

absl::StatusOr<SlotState> EnsureSlot(PgConnection& conn,
                                     const ReplicationSetupOptions& options) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    ASSIGN_OR_RETURN(std::optional<SlotInfo> existing,
                     InspectSlot(conn, options));
    if (existing.has_value()) {
      SlotState state;
      state.confirmed_flush = existing->confirmed_flush;
      return state;
    }
    absl::StatusOr<Lsn> created = CreateSlot(conn, options);
    if (absl::IsAlreadyExists(created.status())) {
      continue;  // created concurrently: inspect it
    }
    RETURN_IF_ERROR(created.status());
    SlotState state;
    state.created = true;
    state.confirmed_flush = *created;
    return state;
  }
  return absl::UnavailableError(
      absl::StrCat("replication slot ", options.slot,
                   " was created and dropped concurrently; try again"));
}

absl::StatusOr<ServerWal> ReadServerWal(PgConnection& conn) {
  // The timeline is the first 8 hex digits of the WAL file name (no
  // privilege needed, unlike pg_control_checkpoint(), which also lags a
  // promotion until its first checkpoint).
  ASSIGN_OR_RETURN(
      PgResult r,
      conn.Exec("SELECT pg_is_in_recovery()::text, CASE WHEN NOT "
                "pg_is_in_recovery() THEN pg_current_wal_lsn()::text END, "
                "CASE WHEN NOT pg_is_in_recovery() THEN "
                "substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END"));
  if (PQntuples(r.get()) != 1) {
    return absl::InternalError("pg_current_wal_lsn() returned no row");
  }
  if (FieldOrEmpty(r.get(), 0, 0) == "true") {
    return absl::FailedPreconditionError(
        "the server is in recovery (a standby): outboxd streams from the "
        "primary");
  }
  ServerWal wal;
  ASSIGN_OR_RETURN(wal.current, Lsn::Parse(FieldOrEmpty(r.get(), 0, 1)));
  const std::string tli = FieldOrEmpty(r.get(), 0, 2);
  if (!absl::SimpleHexAtoi(tli, &wal.timeline)) {
    return absl::InternalError(absl::StrCat("bad timeline '", tli, "'"));
  }
  return wal;
}

absl::StatusOr<std::optional<QualifiedName>> PartitionRoot(
    PgConnection& conn, uint32_t relation_id) {
  ASSIGN_OR_RETURN(
      PgResult r,
      conn.ExecParams(
          "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c "
          "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
          "WHERE c.oid = pg_catalog.pg_partition_root($1::oid) "
          "AND c.oid <> $1::oid",
          {absl::StrCat(relation_id)}));
  if (PQntuples(r.get()) == 0) return std::nullopt;
  return QualifiedName{FieldOrEmpty(r.get(), 0, 0),
                       FieldOrEmpty(r.get(), 0, 1)};
}

absl::StatusOr<std::string> SourceIdentity(PgConnection& conn,
                                           const std::string& slot) {
  ASSIGN_OR_RETURN(
      PgResult r,
      conn.Exec("SELECT system_identifier::text || '/' || current_database() "
                "FROM pg_control_system()"));
  if (PQntuples(r.get()) != 1 || PQgetisnull(r.get(), 0, 0)) {
    return absl::InternalError("pg_control_system() returned no row");
  }
  return absl::StrCat(PQgetvalue(r.get(), 0, 0), "/", slot);
}

}  // namespace outboxd
