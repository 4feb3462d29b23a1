// outboxd beside Debezium (benchmarks/README.md, benchmark 4; issue 9 part 3).
//
// On one throwaway PostgreSQL 15 and one real Apache Kafka (started by
// run-vs-debezium.sh), Debezium's PostgreSQL connector with its Outbox Event
// Router runs in Kafka Connect standalone, configured as Debezium documents
// for an outbox, and outboxd runs with its defaults. Each reads its own slot,
// created before the rows it reads were written. outboxd publishes under
// --topic-prefix=outboxd.outbox.event. (Debezium keeps the default
// outbox.event.), so both can share the broker; the tuned Debezium run
// routes to tuned.outbox.event.<type>.
//
//   equality    the same rows (every payload kind, odd keys, several
//               aggregate types) through both; their records must agree on
//               topic (modulo the prefix), key, value, `id` header and
//               partition, and per key on order. Every difference is
//               counted by kind with examples; exit 1 when there is one.
//   throughput  a backlog of N rows, then, one after the other, each on its
//               own slot: pg_recvlogical (the walsender's limit), outboxd,
//               Debezium at its defaults, Debezium tuned. Events/s from the
//               start of the process to the last record in Kafka, CPU and
//               peak RSS of the process, and how long after that the slot's
//               confirmed_flush_lsn passes the last commit.
//   latency     commit-to-consumer latency at fixed rates, one publisher at
//               a time, read by the same consumer (ReceiptRecorder).
//
// Writes <out>/vs-debezium.json, vs-debezium.md, vs-debezium_cdf.dat and
// vs-debezium_cdf.gp. Measures only (except the equality verdict).
//
// This file: the flags, the setup and main(). The publishers are run by
// vs_debezium_rig, each phase is vs_debezium_<phase>, the tables
// vs_debezium_report.
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "benchmarks/bench_cli.h"
#include "benchmarks/bench_env.h"
#include "benchmarks/bench_proc.h"
#include "benchmarks/bench_results.h"
#include "benchmarks/vs_debezium_equality.h"
#include "benchmarks/vs_debezium_latency.h"
#include "benchmarks/vs_debezium_report.h"
#include "benchmarks/vs_debezium_rig.h"
#include "benchmarks/vs_debezium_throughput.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, bootstrap, "", "Kafka bootstrap servers (required)");
ABSL_FLAG(std::string, connect_libs, "",
          "folder of the Kafka Connect + Debezium jars (required)");
ABSL_FLAG(std::string, connect_log4j, "",
          "log4j2 configuration for Kafka Connect");
ABSL_FLAG(std::vector<std::string>, phases,
          std::vector<std::string>({"equality", "throughput", "latency"}),
          "phases to run");
ABSL_FLAG(int64_t, equality_events, 10000, "rows of the equality phase");
ABSL_FLAG(int64_t, events, 1000000, "backlog rows of the throughput phase");
ABSL_FLAG(std::vector<std::string>, throughput_runs,
          std::vector<std::string>({"pg_recvlogical", "outboxd", "debezium",
                                    "debezium-tuned"}),
          "throughput runs, in order");
ABSL_FLAG(std::vector<std::string>, latency_publishers,
          std::vector<std::string>({"outboxd", "debezium", "debezium-tuned"}),
          "latency publishers, in order");
ABSL_FLAG(std::vector<std::string>, rates,
          std::vector<std::string>({"100", "1000", "10000"}),
          "latency: offered rates, events/s");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(15),
          "latency: load time per (publisher, rate)");
ABSL_FLAG(int, connections, 4, "latency: load generator connections");
ABSL_FLAG(std::vector<std::string>, throughput_variants, {},
          "throughput: outboxd settings, label:flags (flags separated by "
          "spaces), run as outboxd-<label> in --throughput_runs, e.g. "
          "lz4:--kafka-property=compression.type=lz4");
ABSL_FLAG(int, broker_pid, -1,
          "the Kafka node's process: its CPU per throughput run");
ABSL_FLAG(absl::Duration, run_timeout, absl::Minutes(15),
          "throughput: give up on one run after this long");
ABSL_FLAG(std::vector<std::string>, outboxd_args, {},
          "extra outboxd flags, comma-separated (e.g. "
          "--kafka-property=partitioner=consistent_random to see the "
          "equality check fail)");
ABSL_FLAG(std::string, out, "benchmarks/results", "output directory");
ABSL_FLAG(std::string, work_dir, "/tmp/outboxd-bench-vs-debezium",
          "logs and Connect configuration");
ABSL_FLAG(std::string, pg_recvlogical,
          "/usr/lib/postgresql/15/bin/pg_recvlogical", "pg_recvlogical binary");

namespace outboxd::bench::vs_debezium {
namespace {

int Main(int argc, char** argv) {
  // bench_env's --broker: this benchmark's Kafka is --bootstrap.
  if (!ParseBenchFlags(
          argc, argv,
          "--broker: vs_debezium_bench takes its Kafka as --bootstrap")) {
    return kBadFlags;
  }
  if (absl::GetFlag(FLAGS_bootstrap).empty() ||
      absl::GetFlag(FLAGS_connect_libs).empty()) {
    std::cerr << "--bootstrap and --connect_libs are required "
                 "(benchmarks/run-vs-debezium.sh sets them)\n";
    return kBadFlags;
  }
  const std::vector<std::string> phase_list = absl::GetFlag(FLAGS_phases);
  const std::set<std::string> phases(phase_list.begin(), phase_list.end());
  const std::string out = absl::GetFlag(FLAGS_out);
  nlohmann::json doc;
  doc["benchmark"] = "vs-debezium";
  doc["machine"] = MachineInfo();
  doc["load_at_start"] = LoadAverages();

  BenchEnvOptions env_options;
  env_options.work_dir = absl::GetFlag(FLAGS_work_dir);
  env_options.bootstrap = absl::GetFlag(FLAGS_bootstrap);
  std::unique_ptr<BenchEnv> env = StartBenchEnvOrReport(env_options);
  if (env == nullptr) return 1;
  // What publication.autocreate.mode=filtered creates, created before any
  // row is written so that Debezium's slots can decode the backlog.
  absl::Status s = env->pg().Exec(
      "postgres", absl::StrCat("CREATE PUBLICATION ", kDebeziumPublication,
                               " FOR TABLE public.outbox"));
  if (!s.ok()) {
    std::cerr << "setup: " << s << "\n";
    return 1;
  }
  doc["setup"] = {
      {"postgres", "15, wal_level=logical, fsync=off, throwaway cluster"},
      {"kafka",
       "Apache Kafka 4.3.1, 1 KRaft node (scripts/kafka-cluster.sh), "
       "topics with 4 partitions"},
      {"connect",
       "Kafka Connect 4.3.1 standalone (file offset store), Debezium "
       "3.6.1.Final PostgreSQL connector + Outbox Event Router at its "
       "defaults, StringConverter for key and value; JVM -Xms256M -Xmx2G "
       "G1 (connect-standalone.sh's)"},
      {"outboxd",
       "defaults, --topic-prefix=outboxd.outbox.event., "
       "--metrics-address=127.0.0.1:0"},
      {"debezium_tuned_connector", nlohmann::json(kTunedConnector)},
      {"debezium_tuned_worker", nlohmann::json(kTunedWorker)},
      {"debezium_publication",
       "dbz_publication FOR TABLE public.outbox, created up front (what "
       "filtered autocreate makes)"},
  };
  const RigOptions rig = {absl::GetFlag(FLAGS_connect_libs),
                          absl::GetFlag(FLAGS_connect_log4j),
                          absl::GetFlag(FLAGS_outboxd_args)};
  int rc = 0;
  if (phases.count("equality")) {
    auto e = RunEquality(*env, rig, absl::GetFlag(FLAGS_equality_events));
    if (!e.ok()) {
      std::cerr << "equality: " << e.status() << "\n";
      return 1;
    }
    doc["equality"] = *e;
    if (!(*e)["equal"].get<bool>()) rc = 1;
  }
  if (phases.count("throughput")) {
    ThroughputOptions o{absl::GetFlag(FLAGS_events),
                        absl::GetFlag(FLAGS_throughput_runs),
                        absl::GetFlag(FLAGS_run_timeout),
                        absl::GetFlag(FLAGS_pg_recvlogical),
                        {},
                        absl::GetFlag(FLAGS_broker_pid)};
    for (const std::string& spec : absl::GetFlag(FLAGS_throughput_variants)) {
      std::vector<std::string> kv =
          absl::StrSplit(spec, absl::MaxSplits(':', 1));
      if (kv.size() != 2) {
        std::cerr << "bad --throughput_variants entry " << spec << "\n";
        return kBadFlags;
      }
      o.variants[kv[0]] = absl::StrSplit(kv[1], ' ', absl::SkipEmpty());
    }
    auto t = RunThroughput(*env, rig, o);
    if (!t.ok()) {
      std::cerr << "throughput: " << t.status() << "\n";
      rc = 1;
    } else {
      doc["throughput"] = *t;
    }
  }
  std::vector<LatencyRun> latency;
  if (phases.count("latency")) {
    doc["latency_skipped"] = nlohmann::json::array();
    auto l = RunLatency(
        *env, rig,
        {absl::GetFlag(FLAGS_latency_publishers), absl::GetFlag(FLAGS_rates),
         absl::GetFlag(FLAGS_duration), absl::GetFlag(FLAGS_connections)},
        doc["latency_skipped"]);
    if (!l.ok()) {
      std::cerr << "latency: " << l.status() << "\n";
      rc = 1;
    } else {
      latency = *std::move(l);
      doc["latency"] = nlohmann::json::array();
      for (const LatencyRun& r : latency) doc["latency"].push_back(r.summary);
    }
  }
  doc["load_at_end"] = LoadAverages();
  const bool full = phases.size() == 3;
  const std::string name = full ? "vs-debezium" : "vs-debezium-partial";
  if (!latency.empty() && full) s = WriteCdf(out, latency);
  if (!s.ok()) {
    std::cerr << s << "\n";
    return 1;
  }
  if (!WriteResults(absl::StrCat(out, "/", name), doc, Markdown(doc))) return 1;
  return rc;
}

}  // namespace
}  // namespace outboxd::bench::vs_debezium

int main(int argc, char** argv) {
  return outboxd::bench::vs_debezium::Main(argc, argv);
}
