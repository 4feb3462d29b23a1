// Latency against polling (benchmarks/README.md, benchmark 1).
//
// For each publisher mode (cdc, poll at 1 s / 100 ms / 10 ms, notify) and
// each offered rate, a load generator commits one outbox event per
// transaction at a fixed schedule over several connections and records each
// event's commit time right after the PQexec that runs COMMIT returns; an
// independent librdkafka consumer in the same process records each event's
// receipt time (one monotonic clock for both). Per run it reports the latency
// quantiles, delivered events/s, and what the mode costs the database:
// statements/s the publisher executes (pg_stat_statements, publisher's
// role only), transactions/s of the database, CPU seconds of outboxd and of
// the whole PostgreSQL cluster.
//
// Writes <out>/latency.json, latency.csv, latency.md, latency_cdf.dat and
// latency_cdf.gp (render with gnuplot); latency-apache.*, latency-apache_cdf.*
// with --broker=apache (a single-node Apache Kafka instead of the dev
// broker). Measures only; asserts nothing.
//
//   latency_bench --modes=cdc,poll1s --rates=100,1000 --duration=15s
//   latency_bench --rates=1000 --broker=apache
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "benchmarks/bench_cli.h"
#include "benchmarks/bench_env.h"
#include "benchmarks/bench_latency.h"
#include "benchmarks/bench_pg.h"
#include "benchmarks/bench_proc.h"
#include "benchmarks/bench_results.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::vector<std::string>, modes,
          std::vector<std::string>({"cdc", "poll1s", "poll100ms", "poll10ms",
                                    "notify"}),
          "publisher modes: cdc, poll<duration> (e.g. poll100ms), notify");
ABSL_FLAG(std::vector<std::string>, rates,
          std::vector<std::string>({"100", "1000", "10000"}),
          "offered rates, events/s");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(15),
          "load time per (mode, rate)");
ABSL_FLAG(int, connections, 4, "load generator connections (threads)");
ABSL_FLAG(int, fetch_wait_ms, 1,
          "consumer fetch.wait.max.ms (bounds the consumer's own delay)");
ABSL_FLAG(std::string, out, "benchmarks/results", "output directory");
ABSL_FLAG(std::string, outboxd, "", "outboxd binary (default: the build's)");
ABSL_FLAG(std::vector<std::string>, outboxd_args, {},
          "extra outboxd flags, comma-separated (e.g. "
          "--kafka-property=linger.ms=0)");
ABSL_FLAG(std::string, work_dir, "/tmp/outboxd-bench-latency", "outboxd logs");

namespace outboxd::bench {
namespace {

using Mode = PublisherMode;

struct CostSnapshot {
  double outboxd_cpu = 0;
  double postgres_cpu = 0;
  double publisher_statements = 0;
  double db_transactions = 0;
  int64_t at_ns = 0;
};

CostSnapshot TakeCost(BenchEnv& env, pid_t outboxd) {
  CostSnapshot s;
  s.at_ns = NowNs();
  s.outboxd_cpu = ProcessCpuSeconds(outboxd);
  s.postgres_cpu = ClusterCpuSeconds(env.postmaster_pid());
  s.publisher_statements = env.PublisherStatementCalls().value_or(-1);
  s.db_transactions = env.DatabaseTransactions().value_or(-1);
  return s;
}

struct RunResult {
  nlohmann::json summary;
  std::vector<std::pair<double, double>> cdf;
};

absl::StatusOr<RunResult> RunOne(BenchEnv& env, const Mode& mode, int rate,
                                 absl::Duration duration, int run_index) {
  const int64_t events =
      static_cast<int64_t>(rate * absl::ToDoubleSeconds(duration));
  const std::string topic =
      absl::StrCat("bench.latency.", mode.name, ".", rate);
  const std::string slot = absl::StrCat("bench_latency_", run_index);
  std::cerr << absl::StreamFormat("== %s at %d events/s: %d events\n",
                                  mode.name, rate, events);

  absl::Status s = env.pg().Exec("postgres", "TRUNCATE public.outbox");
  if (s.ok()) s = env.PrepareMode(mode);
  if (!s.ok()) return s;
  s = env.CreateTopic(topic);
  if (!s.ok()) return s;

  auto recorder =
      ReceiptRecorder::Start(env.bootstrap(), topic, kPartitions, events,
                             absl::GetFlag(FLAGS_fetch_wait_ms));
  if (!recorder.ok()) return recorder.status();

  const std::vector<std::string> args =
      ModeRunArgs(mode, slot, topic, absl::GetFlag(FLAGS_outboxd_args));
  auto outboxd =
      env.StartOutboxd(args, absl::StrCat("outboxd-", mode.name, "-", rate));
  if (!outboxd.ok()) return outboxd.status();
  pid_t pid = (*outboxd)->pid();

  // Ready when a warm-up event went all the way through.
  if (mode.source == "cdc") {
    s = env.WaitSlotActive(slot, absl::Seconds(60));
    if (!s.ok()) return s;
  }
  testing::ChildProcess& child = **outboxd;
  s = WaitForWarmup(
      env.AdminConnInfo(), "order", **recorder, absl::Seconds(60),
      [&child] { return child.Running(); },
      absl::StrCat(mode.name, ": no warm-up event arrived (see ",
                   env.work_dir(), "/outboxd-", mode.name, "-", rate, ".log)"));
  if (!s.ok()) return s;

  CostSnapshot before = TakeCost(env, pid);
  auto load =
      GenerateLoad(env.AdminConnInfo(), rate, events,
                   absl::GetFlag(FLAGS_connections), OneEventTransactionSql);
  if (!load.ok()) return load.status();
  const int64_t load_end_ns = NowNs();
  int64_t committed = 0;
  for (int64_t t : load->commit_ns) committed += t != 0;

  // Drain: until everything arrived or nothing arrived for a while.
  DrainReceipts(**recorder, committed,
                std::max(absl::Seconds(5), 3 * PollInterval(mode)),
                load_end_ns);
  int64_t peak_rss = PeakRssBytes(pid);
  CostSnapshot after = TakeCost(env, pid);
  (*recorder)->Stop();
  auto code = env.StopOutboxd(child);
  if (mode.source == "cdc") {
    env.DropSlot(slot);
  }

  const LatencySample sample = MeasureLatencies(*load, **recorder);
  const std::vector<double>& latencies_ms = sample.sorted_ms;
  const int64_t delivered = sample.delivered();
  const double window_s = (after.at_ns - before.at_ns) / 1e9;

  nlohmann::json j;
  j["mode"] = mode.name;
  j["source"] = mode.source;
  j["poll_interval"] = mode.interval;
  j["offered_rate"] = rate;
  j["duration_s"] = absl::ToDoubleSeconds(duration);
  j["connections"] = absl::GetFlag(FLAGS_connections);
  j["events"] = events;
  j["committed"] = committed;
  j["commit_errors"] = load->errors;
  j["committed_per_s"] = sample.committed_per_s();
  j["generator_max_slip_ms"] = load->max_slip_ns / 1e6;
  j["delivered"] = delivered;
  j["duplicates"] = (*recorder)->duplicates();
  j["delivered_per_s"] = sample.delivered_per_s();
  // Kept up: the database took the offered rate (the generator committed
  // at least 95% of it), everything arrived, and no event waited more than
  // 1 s + 2 poll intervals (a growing backlog shows as a growing maximum).
  j["drain_after_load_s"] = (sample.last_receipt_ns - load_end_ns) / 1e9;
  j["kept_up"] =
      delivered == committed && load->errors == 0 && committed == events &&
      sample.committed_per_s() >= 0.95 * rate &&
      sample.max_ms() <
          1000.0 * (1.0 + 2 * absl::ToDoubleSeconds(PollInterval(mode)));
  j["latency_ms"] = LatencyQuantiles(latencies_ms);
  nlohmann::json cost;
  cost["window_s"] = window_s;
  cost["publisher_statements_per_s"] =
      (after.publisher_statements - before.publisher_statements) / window_s;
  cost["db_transactions_per_s"] =
      (after.db_transactions - before.db_transactions) / window_s;
  cost["outboxd_cpu_s"] = after.outboxd_cpu - before.outboxd_cpu;
  cost["postgres_cpu_s"] = after.postgres_cpu - before.postgres_cpu;
  cost["outboxd_peak_rss_mb"] = Mb(peak_rss);
  j["cost"] = cost;
  j["outboxd_exit_code"] = code.ok() ? *code : -1;
  std::cerr << j.dump() << "\n";
  return RunResult{j, CdfPoints(latencies_ms)};
}

std::string MarkdownTable(const std::vector<RunResult>& runs) {
  std::string md =
      "| mode | offered/s | committed/s | delivered/s | p50 ms | p90 ms | p99 "
      "ms | "
      "p99.9 ms | max ms | publisher stmts/s | db xacts/s | outboxd CPU s | "
      "PostgreSQL CPU s | kept up |\n"
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
  for (const RunResult& r : runs) {
    const nlohmann::json& j = r.summary;
    const nlohmann::json& l = j["latency_ms"];
    const nlohmann::json& c = j["cost"];
    absl::StrAppend(
        &md, "| ", j["mode"].get<std::string>(), " | ",
        j["offered_rate"].get<int>(), " | ",
        absl::StrFormat("%.0f", j["committed_per_s"].get<double>()), " | ",
        absl::StrFormat("%.0f", j["delivered_per_s"].get<double>()), " | ",
        FormatMs(l["p50"]), " | ", FormatMs(l["p90"]), " | ",
        FormatMs(l["p99"]), " | ", FormatMs(l["p999"]), " | ",
        FormatMs(l["max"]), " | ",
        absl::StrFormat("%.1f", c["publisher_statements_per_s"].get<double>()),
        " | ",
        absl::StrFormat("%.0f", c["db_transactions_per_s"].get<double>()),
        " | ", absl::StrFormat("%.2f", c["outboxd_cpu_s"].get<double>()), " | ",
        absl::StrFormat("%.2f", c["postgres_cpu_s"].get<double>()), " | ",
        j["kept_up"].get<bool>() ? "yes" : "**no**", " |\n");
  }
  return md;
}

std::string Csv(const std::vector<RunResult>& runs) {
  std::string csv =
      "mode,offered_rate,events,committed,delivered,committed_per_s,"
      "delivered_per_s,p50_ms,p90_ms,p99_ms,p999_ms,max_ms,"
      "publisher_statements_per_s,db_transactions_per_s,outboxd_cpu_s,"
      "postgres_cpu_s,window_s,outboxd_peak_rss_mb,kept_up\n";
  for (const RunResult& r : runs) {
    const nlohmann::json& j = r.summary;
    const nlohmann::json& l = j["latency_ms"];
    const nlohmann::json& c = j["cost"];
    absl::StrAppend(
        &csv,
        absl::StrFormat(
            "%s,%d,%d,%d,%d,%.1f,%.1f,%.3f,%.3f,%.3f,%.3f,%.3f,%.2f,%.1f,%.3f,"
            "%.3f,%.2f,%.1f,%d\n",
            j["mode"].get<std::string>(), j["offered_rate"].get<int>(),
            j["events"].get<int64_t>(), j["committed"].get<int64_t>(),
            j["delivered"].get<int64_t>(), j["committed_per_s"].get<double>(),
            j["delivered_per_s"].get<double>(), l["p50"].get<double>(),
            l["p90"].get<double>(), l["p99"].get<double>(),
            l["p999"].get<double>(), l["max"].get<double>(),
            c["publisher_statements_per_s"].get<double>(),
            c["db_transactions_per_s"].get<double>(),
            c["outboxd_cpu_s"].get<double>(), c["postgres_cpu_s"].get<double>(),
            c["window_s"].get<double>(), c["outboxd_peak_rss_mb"].get<double>(),
            j["kept_up"].get<bool>() ? 1 : 0));
  }
  return csv;
}

absl::Status WriteCdf(const std::string& out, const std::string& name,
                      const std::string& broker,
                      const std::vector<RunResult>& runs) {
  std::vector<CdfLine> lines;
  for (const RunResult& r : runs) {
    lines.push_back({r.summary["mode"].get<std::string>(),
                     r.summary["offered_rate"].get<int>(), r.cdf});
  }
  return WriteCdfPlot(
      out,
      {name, "latency_bench",
       absl::StrCat("outboxd: commit-to-consumer latency CDF per publisher "
                    "mode (",
                    broker, ")"),
       0.1},
      lines);
}

int Main(int argc, char** argv) {
  const std::optional<BrokerKind> broker = ParseBenchFlags(argc, argv);
  if (!broker) return kBadFlags;
  const std::optional<ModesAndRates> plan =
      ParseModesAndRates(absl::GetFlag(FLAGS_modes), absl::GetFlag(FLAGS_rates),
                         /*allow_max=*/false);
  if (!plan) return kBadFlags;
  const std::string out = absl::GetFlag(FLAGS_out);
  StartedBench bench = StartBench(EnvOptions(
      absl::GetFlag(FLAGS_outboxd), absl::GetFlag(FLAGS_work_dir), *broker));
  if (bench.env == nullptr) return 1;
  BenchEnv* env = bench.env.get();
  std::vector<RunResult> runs;
  nlohmann::json failures = nlohmann::json::array();
  int run_index = 0;
  for (int rate : plan->rates) {
    for (const Mode& mode : plan->modes) {
      auto r =
          RunOne(*env, mode, rate, absl::GetFlag(FLAGS_duration), run_index++);
      if (!r.ok()) {
        AddFailure(failures, absl::StrCat(mode.name, " ", rate),
                   {{"mode", mode.name}, {"rate", rate}}, r.status());
        continue;
      }
      runs.push_back(*std::move(r));
    }
  }

  nlohmann::json doc;
  doc["benchmark"] = "latency";
  doc["machine"] = bench.machine;
  doc["load_average_after"] = LoadAverage1();
  doc["setup"] = {
      {"postgres", kPostgresSetup},
      {"broker", env->broker_description()},
      {"consumer", absl::StrCat("librdkafka, assign, fetch.wait.max.ms=",
                                absl::GetFlag(FLAGS_fetch_wait_ms))},
      {"load",
       "one INSERT per transaction (BEGIN; INSERT; COMMIT in one "
       "PQexec), open-loop fixed-rate schedule"},
  };
  doc["runs"] = nlohmann::json::array();
  for (const RunResult& r : runs) doc["runs"].push_back(r.summary);
  doc["failures"] = failures;
  const std::string name = ResultStem("latency", *broker);
  const std::string stem = out + "/" + name;
  const std::string md =
      absl::StrCat("Latency, broker: ", env->broker_description(), "\n\n",
                   MarkdownTable(runs));
  absl::Status s = WriteFile(stem + ".csv", Csv(runs));
  if (s.ok()) s = WriteCdf(out, name, env->broker_description(), runs);
  if (!s.ok()) {
    std::cerr << s << "\n";
    return 1;
  }
  if (!WriteResults(stem, doc, md)) return 1;
  return failures.empty() ? 0 : 1;
}

}  // namespace
}  // namespace outboxd::bench

int main(int argc, char** argv) { return outboxd::bench::Main(argc, argv); }
