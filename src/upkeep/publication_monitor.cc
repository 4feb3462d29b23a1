#include "upkeep/publication_monitor.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "pg/connection.h"

namespace outboxd {
namespace {

bool IsTrue(const PGresult* r, int row, int column) {
  return !PQgetisnull(r, row, column) &&
         std::string(PQgetvalue(r, row, column)) == "t";
}

// One query for every table: as EnsurePublication judges them at start.
absl::StatusOr<std::vector<TableCoverage>> ReadCoverage(
    PgConnection& conn, const PublicationMonitorOptions& options) {
  std::vector<std::string> schemas;
  std::vector<std::string> names;
  for (const QualifiedName& t : options.tables) {
    schemas.push_back(t.schema);
    names.push_back(t.name);
  }
  // FOR TABLES IN SCHEMA exists from 15 on.
  const char* in_schema =
      conn.server_version() >= 150000
          ? " OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication_namespace "
            "pn WHERE pn.pnpubid = p.oid AND pn.pnnspid = c.relnamespace)"
          : "";
  ASSIGN_OR_RETURN(
      PgResult r,
      conn.ExecParams(
          absl::StrCat(
              "SELECT c.oid IS NOT NULL, p.oid IS NOT NULL, "
              "coalesce(p.pubinsert, false), coalesce(p.puballtables OR "
              "EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel r WHERE "
              "r.prpubid = p.oid AND r.prrelid = c.oid)",
              in_schema,
              ", false), coalesce(c.relkind = 'p', false), "
              "coalesce(p.pubviaroot, false) "
              "FROM unnest($2::text[], $3::text[]) WITH ORDINALITY "
              "AS t(s, n, i) "
              "LEFT JOIN pg_catalog.pg_namespace ns ON ns.nspname = t.s "
              "LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = ns.oid "
              "AND c.relname = t.n "
              "LEFT JOIN pg_catalog.pg_publication p ON p.pubname = $1 "
              "ORDER BY t.i"),
          {options.publication, TextArrayLiteral(schemas),
           TextArrayLiteral(names)}));
  if (PQntuples(r.get()) != static_cast<int>(options.tables.size())) {
    return absl::InternalError("publication check: unexpected row count");
  }
  std::vector<TableCoverage> coverage;
  for (int row = 0; row < PQntuples(r.get()); ++row) {
    TableCoverage& c = coverage.emplace_back();
    c.table = options.tables[row];
    c.table_exists = IsTrue(r.get(), row, 0);
    c.publication_exists = IsTrue(r.get(), row, 1);
    c.publishes_inserts = IsTrue(r.get(), row, 2);
    c.listed = IsTrue(r.get(), row, 3);
    c.partitioned = IsTrue(r.get(), row, 4);
    c.via_root = IsTrue(r.get(), row, 5);
  }
  return coverage;
}

}  // namespace

std::optional<std::string> WhyNotCarried(const TableCoverage& c,
                                         const std::string& publication) {
  const std::string pub = QuoteIdent(publication);
  const std::string table = c.table.ToString();
  if (!c.publication_exists) {
    return absl::StrCat("publication ", publication,
                        " no longer exists: CREATE PUBLICATION ", pub,
                        " FOR TABLE ", table, " WITH (publish = 'insert')");
  }
  if (!c.table_exists) {
    return absl::StrCat("table ", table, " no longer exists");
  }
  if (!c.publishes_inserts) {
    return absl::StrCat("publication ", publication,
                        " no longer publishes inserts: ALTER PUBLICATION ", pub,
                        " SET (publish = 'insert')");
  }
  if (!c.listed) {
    return absl::StrCat("publication ", publication,
                        " no longer carries table ", table,
                        ": ALTER PUBLICATION ", pub, " ADD TABLE ", table);
  }
  if (c.partitioned && !c.via_root) {
    return absl::StrCat(
        "publication ", publication, " carries the partitioned table ", table,
        " without publish_via_partition_root: ALTER PUBLICATION ", pub,
        " SET (publish_via_partition_root = true)");
  }
  return std::nullopt;
}

PublicationWatch::Round PublicationWatch::Update(
    const std::vector<TableCoverage>& tables) {
  Round round;
  for (const TableCoverage& c : tables) {
    seen_publication_ |= c.publication_exists;
  }
  // Before outboxd created it (its first connect), nothing to judge.
  if (!seen_publication_) return round;
  const std::string meanwhile =
      reconciler_
          ? "the reconciler publishes the events committed meanwhile late, "
            "once older than --reconcile-margin (counted in "
            "outboxd_reconcile_missing_events_total)"
          : "--reconcile-interval is off, so the events committed meanwhile "
            "are never published (they stay in the table)";
  for (const TableCoverage& c : tables) {
    const std::string key = c.table.ToString();
    std::optional<std::string> why = WhyNotCarried(c, publication_);
    auto it = missing_.find(key);
    if (why.has_value()) {
      ++round.missing;
      if (it != missing_.end() && it->second == *why) continue;
      missing_[key] = *why;
      // A table never carried yet is the start check's, which refuses
      // such a publication with its own line: the warning is for a table
      // the publication no longer carries.
      if (!carried_.contains(key)) continue;
      warned_.insert(key);
      round.warnings.push_back(
          absl::StrCat(name_, *why, " (until then the events of ", key,
                       " are not streamed; ", meanwhile, ")"));
      continue;
    }
    carried_.insert(key);
    if (it == missing_.end()) continue;
    missing_.erase(it);
    if (warned_.erase(key) > 0) {
      round.infos.push_back(absl::StrCat(
          name_, "publication ", publication_, " carries ", key,
          " again: its events are streamed from now on",
          reconciler_ ? "; the reconciler publishes those committed "
                        "meanwhile late"
                      : "; those committed meanwhile were not published"));
    }
  }
  return round;
}

std::unique_ptr<PublicationMonitor> PublicationMonitor::Start(
    PublicationMonitorOptions options) {
  std::unique_ptr<PublicationMonitor> monitor(
      new PublicationMonitor(std::move(options)));
  PublicationMonitor* raw = monitor.get();
  const std::string& name = raw->options_.name;
  monitor->rounds_ = CatalogRounds::Start(
      {raw->options_.conninfo, raw->options_.interval,
       absl::StrCat(name, "publication check: cannot read the catalog"),
       absl::StrCat(name, "publication check: reading the catalog again")},
      [raw](PgConnection& conn) { return raw->Round(conn); });
  return monitor;
}

absl::Status PublicationMonitor::Round(PgConnection& conn) {
  ASSIGN_OR_RETURN(std::vector<TableCoverage> coverage,
                   ReadCoverage(conn, options_));
  PublicationWatch::Round round = watch_.Update(coverage);
  for (const std::string& line : round.warnings) {
    spdlog::warn("{}; outboxd_publication_missing_tables is {}", line,
                 round.missing);
  }
  for (const std::string& line : round.infos) spdlog::info("{}", line);
  if (options_.missing != nullptr) options_.missing->Set(round.missing);
  return absl::OkStatus();
}

}  // namespace outboxd
