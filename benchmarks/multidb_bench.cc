// Many databases (benchmarks/README.md, benchmark 7): one outboxd with
// --databases=d0,...,d19 against 20 outboxd processes, one per database, on
// one PostgreSQL server and one broker (the dev broker, or a single-node
// Apache Kafka with --broker=apache).
//
// Per setup ("one": one process, --databases; "per-db": a process per
// database, --pg=...dbname=dI, its own slot), on its own slots and its own
// topic, in this order:
//
//   start     the processes start on slots that do not exist yet; the time
//             from the first exec until every slot is active (a walsender
//             streams it, pg_replication_slots.active); then one warm-up
//             event per database, until the broker holds all of them.
//   idle      `--idle` without events: CPU and context switches of
//             processes whose every stream is connected.
//   steady    `--rate` events/s in total for `--duration`, one event per
//             transaction, event i in database i % databases, open loop,
//             over `--writer_threads` threads with one connection per
//             database; the window runs from the load's start until the
//             broker holds every record (sum of the topic's high
//             watermarks, probed every 20 ms). Measured: outboxd CPU
//             (utime + stime, summed over the processes) per 1,000 events,
//             context switches, RSS (VmRSS summed, sampled every 100 ms:
//             mean and max) and VmHWM summed, threads (librdkafka's "rdk:"
//             threads apart) and PostgreSQL connections of the publisher's
//             role (walsenders apart) halfway, the whole cluster's CPU.
//   backlog   the processes stop (SIGTERM); `--backlog` events per database
//             are committed (`--backlog_batch` rows per transaction); the
//             processes start again on their slots: start until every slot
//             is active, start until the broker holds every record, CPU
//             from the exec (start included) per 1,000 events, VmHWM.
//   read-back every record of the topic is read from the beginning by an
//             independent consumer, running from before the start to after
//             the backlog: per database, events lost (written, never read)
//             and duplicates, and records whose outbox.source names another
//             database.
//
// `--rounds` rounds (3 by default) run the setups alternately on the same
// server and broker; the table gives each setup's median over the rounds
// (losses and duplicates: the sum) and the ratio of the medians, with the
// range of the rounds' own ratios, because on a shared 2-core machine one
// round's figures move with the other load.
//
// Writes <out>/multidb.json and multidb.md (multidb-apache.* with
// --broker=apache). Measures only; asserts nothing.
//
// This file: the flags, the 20 databases' setup, the rounds and main(). The
// processes are run by multidb_fleet, a round's phases by multidb_run, the
// read-back by multidb_readback, the table by multidb_report.
//
//   multidb_bench --databases=20 --rate=1000 --duration=20s --backlog=2000
#include <algorithm>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "benchmarks/bench_cli.h"
#include "benchmarks/bench_env.h"
#include "benchmarks/bench_results.h"
#include "benchmarks/multidb_fleet.h"
#include "benchmarks/multidb_report.h"
#include "benchmarks/multidb_run.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(int, databases, 20, "databases on the server (d0, d1, ...)");
ABSL_FLAG(std::vector<std::string>, setups,
          std::vector<std::string>({"one", "per-db"}),
          "one (one outboxd, --databases) and/or per-db (one outboxd per "
          "database), run one after the other in this order");
ABSL_FLAG(int, rounds, 3,
          "rounds; each runs every setup once, in --setups order, and the "
          "table gives the median of the rounds (losses: the sum)");
ABSL_FLAG(int, rate, 1000, "steady load: events/s over all databases");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(20), "steady load time");
ABSL_FLAG(absl::Duration, idle, absl::Seconds(10),
          "idle time measured after the warm-up (no events)");
ABSL_FLAG(int, backlog, 2000,
          "backlog: events per database (on the dev broker at most ~10,000 "
          "records per partition stay readable: 5 MB)");
ABSL_FLAG(int, backlog_batch, 10, "backlog: events per transaction");
ABSL_FLAG(int, writer_threads, 4,
          "writer threads (each database's connection belongs to one)");
ABSL_FLAG(bool, metrics, false,
          "serve /metrics in every process (--metrics-address=127.0.0.1:0, "
          "with its slot monitor: one per process); off: "
          "--metrics-address=\"\"");
ABSL_FLAG(std::string, out, "benchmarks/results", "output directory");
ABSL_FLAG(std::string, outboxd, "", "outboxd binary (default: the build's)");
ABSL_FLAG(std::vector<std::string>, outboxd_args, {},
          "extra outboxd flags, comma-separated");
ABSL_FLAG(std::string, work_dir, "/tmp/outboxd-bench-multidb", "outboxd logs");

namespace outboxd::bench::multidb {
namespace {

int Main(int argc, char** argv) {
  const std::optional<BrokerKind> broker = ParseBenchFlags(argc, argv);
  if (!broker) return kBadFlags;
  const int ndb = absl::GetFlag(FLAGS_databases);
  if (ndb < 1 || ndb > 100) {
    std::cerr << "--databases: 1 to 100, not " << ndb << "\n";
    return kBadFlags;
  }
  if (absl::GetFlag(FLAGS_rate) <= 0 || absl::GetFlag(FLAGS_backlog) < 0) {
    std::cerr << "--rate must be positive and --backlog not negative\n";
    return kBadFlags;
  }
  for (const std::string& s : absl::GetFlag(FLAGS_setups)) {
    if (s != "one" && s != "per-db") {
      std::cerr << "--setups: one or per-db, not \"" << s << "\"\n";
      return kBadFlags;
    }
  }
  std::vector<std::string> dbs;
  for (int i = 0; i < ndb; ++i) dbs.push_back(DatabaseName(i));

  BenchEnvOptions env_options;
  env_options.outboxd_binary = absl::GetFlag(FLAGS_outboxd);
  env_options.work_dir = absl::GetFlag(FLAGS_work_dir);
  env_options.broker = *broker;
  // Per database: a walsender and the setup's connections, per process in
  // the per-db setup; and the writers' connections.
  env_options.pg_settings = {
      absl::StrCat("max_connections=", 50 + 6 * ndb),
      absl::StrCat("max_wal_senders=", 10 + 2 * ndb),
      absl::StrCat("max_replication_slots=", 10 + 2 * ndb)};
  StartedBench bench = StartBench(env_options);
  if (bench.env == nullptr) return 1;
  BenchEnv& e = *bench.env;
  const absl::StatusOr<std::string> install = SourceFile("sql/outbox.sql");
  if (!install.ok()) {
    std::cerr << "setup: " << install.status() << "\n";
    return 1;
  }
  for (const std::string& db : dbs) {
    absl::Status s = e.pg().CreateDatabase(db);
    if (s.ok()) s = e.pg().Exec(db, *install);
    if (!s.ok()) {
      std::cerr << "setup: database " << db << ": " << s << "\n";
      return 1;
    }
  }

  RunOptions options;
  options.rate = absl::GetFlag(FLAGS_rate);
  options.duration = absl::GetFlag(FLAGS_duration);
  options.idle = absl::GetFlag(FLAGS_idle);
  options.backlog = absl::GetFlag(FLAGS_backlog);
  options.backlog_batch = absl::GetFlag(FLAGS_backlog_batch);
  options.writer_threads = absl::GetFlag(FLAGS_writer_threads);
  options.fleet = {absl::GetFlag(FLAGS_metrics),
                   absl::GetFlag(FLAGS_outboxd_args)};
  nlohmann::json runs = nlohmann::json::array();
  nlohmann::json failures = nlohmann::json::array();
  bool nothing_lost = true;
  const int rounds = std::max(1, absl::GetFlag(FLAGS_rounds));
  for (int round = 0; round < rounds; ++round) {
    for (const std::string& setup : absl::GetFlag(FLAGS_setups)) {
      Run run(e, setup, round, dbs, options);
      auto r = run.Go();
      if (!r.ok()) {
        AddFailure(failures, setup, {{"setup", setup}, {"round", round}},
                   r.status());
        continue;
      }
      const nlohmann::json& rb = (*r)["read_back"];
      nothing_lost &= rb["steady"]["lost"].get<int64_t>() == 0 &&
                      rb["backlog"]["lost"].get<int64_t>() == 0 &&
                      rb["wrong_source"].get<int64_t>() == 0 &&
                      rb["offset_gaps"].get<int64_t>() == 0 &&
                      rb["caught_up"].get<bool>();
      runs.push_back(*r);
    }
  }

  nlohmann::json doc;
  doc["benchmark"] = "multidb";
  doc["machine"] = bench.machine;
  doc["setup"] = {
      {"postgres", absl::StrCat(kPostgresSetup,
                                ", databases d0.. each with sql/outbox.sql")},
      {"broker", e.broker_description()},
      {"databases", ndb},
      {"rounds", rounds},
      {"one",
       "one outboxd --databases=d0,...,--slot=bench_one (slots "
       "bench_one_<db>)"},
      {"per-db",
       "one outboxd per database, --pg=...dbname=<db> "
       "--slot=bench_perdb_<db>"},
      {"metrics", absl::GetFlag(FLAGS_metrics) ? "--metrics-address=127.0.0.1:0"
                                               : "--metrics-address= (off)"},
      {"steady",
       absl::StrCat(absl::GetFlag(FLAGS_rate), " events/s in total for ",
                    absl::FormatDuration(absl::GetFlag(FLAGS_duration)),
                    ", one event per transaction, event i in database i % ",
                    ndb)},
      {"backlog", absl::StrCat(absl::GetFlag(FLAGS_backlog),
                               " events per database written while stopped, ",
                               absl::GetFlag(FLAGS_backlog_batch),
                               " per transaction, drained by a restart")},
      {"outboxd_args", absl::GetFlag(FLAGS_outboxd_args)},
  };
  doc["runs"] = runs;
  doc["failures"] = failures;
  const std::string stem =
      absl::GetFlag(FLAGS_out) + "/" + ResultStem("multidb", *broker);
  const std::string md = Markdown(e.broker_description(), runs,
                                  absl::GetFlag(FLAGS_setups), ndb, rounds);
  if (!WriteResults(stem, doc, md)) return 1;
  return failures.empty() && nothing_lost ? 0 : 1;
}

}  // namespace
}  // namespace outboxd::bench::multidb

int main(int argc, char** argv) {
  return outboxd::bench::multidb::Main(argc, argv);
}
