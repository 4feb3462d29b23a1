// PublicationMonitor: whether the publication still carries the inserts of
// every outbox table (--table). Someone may run ALTER PUBLICATION ... DROP
// TABLE (a careless migration) while outboxd streams: from then on the
// walsender sends nothing of that table, and nothing else tells. The start
// check (pg/replication_setup.h, EnsurePublication) refuses such a
// publication; this watches it afterwards.
//
// Every `interval` (--status-interval), on a thread of its own with its own
// normal (not replication) connection to the stream's database, one
// catalog query (pg_publication, pg_publication_rel and on 15+
// pg_publication_namespace; no pg_publication_tables, which lists every
// table of a FOR ALL TABLES publication) judges each table as the start
// check does: the publication exists and publishes inserts, and lists the
// table, its schema, or all tables; a partitioned table also needs
// publish_via_partition_root. The count of tables it does not carry is
// outboxd_publication_missing_tables; a table that goes missing is one
// warning line (the publication, the table, the statement that fixes it,
// and what happens to the events committed meanwhile: published late by
// the reconciler when it is on, else never), and one info line when it is
// carried again. Until the publication has been seen once (outboxd creates
// it at its first connect) its absence is not judged. A failed query is
// logged once (and once more when it works again) and retried next round;
// publishing never waits for it.
//
// Threading: Start() and the destructor from one thread; the gauge is an
// atomic. `options.missing` must outlive the monitor.
#ifndef OUTBOXD_UPKEEP_PUBLICATION_MONITOR_H_
#define OUTBOXD_UPKEEP_PUBLICATION_MONITOR_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/time/time.h"
#include "metrics/outboxd_metrics.h"
#include "pg/connection.h"
#include "pg/identifier.h"
#include "upkeep/catalog_rounds.h"

namespace outboxd {

struct PublicationMonitorOptions {
  std::string conninfo;  // the stream's database
  std::string publication;
  std::vector<QualifiedName> tables;           // at least one
  absl::Duration interval = absl::Seconds(1);  // --status-interval
  // The stream's reconciler is on (--reconcile-interval > 0): the rows
  // committed while a table was not carried are published late.
  bool reconciler = false;
  std::string name;                   // log prefix, "[name] " or ""
  metrics::Gauge* missing = nullptr;  // outboxd_publication_missing_tables
};

// What the catalog says about one outbox table and the publication.
struct TableCoverage {
  QualifiedName table;
  bool table_exists = false;
  bool publication_exists = false;
  bool publishes_inserts = false;
  // The publication lists the table, its schema, or all tables.
  bool listed = false;
  bool partitioned = false;  // relkind 'p'
  bool via_root = false;     // publish_via_partition_root
};

// Why the publication does not carry `c`'s inserts, with the statement
// that fixes it; nullopt when it does.
std::optional<std::string> WhyNotCarried(const TableCoverage& c,
                                         const std::string& publication);

// The judging of each round, without I/O: the tables missing now and the
// log lines of what changed since the round before.
class PublicationWatch {
 public:
  PublicationWatch(std::string publication, bool reconciler, std::string name)
      : publication_(std::move(publication)),
        reconciler_(reconciler),
        name_(std::move(name)) {}

  struct Round {
    int missing = 0;  // the gauge's value
    std::vector<std::string> warnings;
    std::vector<std::string> infos;
  };
  // One reading, a TableCoverage per --table.
  Round Update(const std::vector<TableCoverage>& tables);

 private:
  const std::string publication_;
  const bool reconciler_;
  const std::string name_;
  bool seen_publication_ = false;
  // Each table missing in the round before, by its name, and why.
  absl::flat_hash_map<std::string, std::string> missing_;
  absl::flat_hash_set<std::string> carried_;  // carried in some round
  absl::flat_hash_set<std::string> warned_;   // missing, and warned about
};

class PublicationMonitor {
 public:
  static std::unique_ptr<PublicationMonitor> Start(
      PublicationMonitorOptions options);
  // Destroying it stops and joins (a running query finishes first).
  PublicationMonitor(const PublicationMonitor&) = delete;
  PublicationMonitor& operator=(const PublicationMonitor&) = delete;

  // Rounds done so far, whether they worked or not.
  uint64_t rounds() const { return rounds_->rounds(); }

 private:
  explicit PublicationMonitor(PublicationMonitorOptions options)
      : options_(std::move(options)),
        watch_(options_.publication, options_.reconciler, options_.name) {}
  absl::Status Round(PgConnection& conn);  // on the rounds' thread

  const PublicationMonitorOptions options_;
  PublicationWatch watch_;
  std::unique_ptr<CatalogRounds> rounds_;  // last: stopped first
};

}  // namespace outboxd

#endif  // OUTBOXD_UPKEEP_PUBLICATION_MONITOR_H_
