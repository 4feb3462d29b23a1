// Throughput against the machine's limit (benchmarks/README.md, benchmark 2).
//
// Per kind of event (outbox table inserts, and transactional logical
// decoding messages), on one throwaway cluster and one dev broker:
//
//   live      outboxd (CDC) runs while N events are committed, batched
//             `--batch` per transaction over `--connections` connections;
//             time from the first COMMIT to the moment the broker holds all
//             N records (sum of the partitions' high watermarks, probed every
//             20 ms): what a user sees end to end, inserts included.
//   recvlogical  the same changes, decoded by the walsender with pgoutput
//             and streamed by pg_recvlogical to /dev/null from a second slot
//             created before the inserts (the decoding + streaming limit).
//   backlog   outboxd on a third slot created before the inserts: the same
//             WAL as pg_recvlogical, drained to Kafka (compared to it 1:1).
//   kcat      kcat producing the same keys and values, with headers of the
//             same names and sizes, to the same broker with outboxd's
//             producer settings (the producing limit).
//
// Reports events/s for each, outboxd's ratio to the smaller limit, its CPU
// seconds and its peak RSS (VmHWM). Writes <out>/throughput.json and
// throughput.md. Measures only; asserts nothing.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "benchmarks/bench_cli.h"
#include "benchmarks/bench_env.h"
#include "benchmarks/bench_kafka.h"
#include "benchmarks/bench_pg.h"
#include "benchmarks/bench_proc.h"
#include "benchmarks/bench_results.h"
#include "nlohmann/json.hpp"
#include "tests/harness/child_process.h"

ABSL_FLAG(int64_t, events, 1000000, "events per kind");
ABSL_FLAG(int, batch, 100, "events per transaction");
ABSL_FLAG(int, connections, 2, "inserting connections (threads)");
ABSL_FLAG(std::vector<std::string>, kinds,
          std::vector<std::string>({"insert", "message"}),
          "insert (outbox table rows) and/or message "
          "(pg_logical_emit_message)");
ABSL_FLAG(std::string, out, "benchmarks/results", "output directory");
ABSL_FLAG(std::string, outboxd, "", "outboxd binary (default: the build's)");
ABSL_FLAG(std::string, pg_recvlogical,
          "/usr/lib/postgresql/15/bin/pg_recvlogical", "pg_recvlogical binary");
ABSL_FLAG(std::vector<std::string>, outboxd_args, {},
          "extra outboxd flags, comma-separated (e.g. "
          "--kafka-property=linger.ms=5)");
ABSL_FLAG(std::string, work_dir, "/tmp/outboxd-bench-throughput",
          "outboxd logs and the kcat input file");

namespace outboxd::bench {
namespace {

constexpr char kTraceparentPrefix[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-";

std::string AggregateId(int64_t i) {
  return absl::StrCat("order-", 1000000 + i % 50000);
}

std::string Traceparent(int64_t i) {
  return absl::StrCat(kTraceparentPrefix, absl::StrFormat("%016x", i), "-01");
}

// One transaction's statement (without COMMIT) for events [first, last).
std::string BatchSql(const std::string& kind, int64_t first, int64_t last) {
  std::string sql = "BEGIN; ";
  if (kind == "insert") {
    absl::StrAppend(&sql,
                    "INSERT INTO public.outbox (aggregatetype, aggregateid, "
                    "type, payload, headers) VALUES ");
    for (int64_t i = first; i < last; ++i) {
      absl::StrAppend(&sql, i == first ? "" : ",", "('order', '",
                      AggregateId(i), "', 'OrderCreated', '", EventPayload(i),
                      "', '{\"traceparent\": \"", Traceparent(i), "\"}')");
    }
  } else {
    absl::StrAppend(&sql,
                    "SELECT count(pg_logical_emit_message(true, 'outbox', m)) "
                    "FROM (VALUES ");
    for (int64_t i = first; i < last; ++i) {
      nlohmann::json event = {
          {"id", Uuid(i)},
          {"aggregatetype", "order"},
          {"aggregateid", AggregateId(i)},
          {"type", "OrderCreated"},
          {"payload", nlohmann::json::parse(EventPayload(i))},
          {"headers", {{"traceparent", Traceparent(i)}}}};
      absl::StrAppend(&sql, i == first ? "" : ",", "('", event.dump(), "')");
    }
    absl::StrAppend(&sql, ") v(m)");
  }
  return sql;
}

struct InsertResult {
  int64_t first_commit_ns = 0;
  int64_t last_commit_ns = 0;
  int64_t errors = 0;
};

absl::StatusOr<InsertResult> InsertEvents(const std::string& conninfo,
                                          const std::string& kind,
                                          int64_t events, int batch,
                                          int connections) {
  auto pool = ConnectAll(conninfo, connections);
  if (!pool.ok()) return pool.status();
  std::vector<std::unique_ptr<PgConn>>& conns = *pool;
  const int64_t batches = (events + batch - 1) / batch;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> errors{0};
  std::vector<int64_t> first(connections, INT64_MAX), last(connections, 0);
  std::vector<std::thread> threads;
  for (int c = 0; c < connections; ++c) {
    threads.emplace_back([&, c] {
      for (int64_t b = next++; b < batches; b = next++) {
        int64_t lo = b * batch, hi = std::min(events, lo + batch);
        absl::Status s = conns[c]->Exec(BatchSql(kind, lo, hi));
        if (s.ok()) s = conns[c]->Exec("COMMIT");
        int64_t now = NowNs();
        if (!s.ok()) {
          if (errors++ < 3) std::cerr << s << "\n";
          (void)conns[c]->Exec("ROLLBACK");
          continue;
        }
        first[c] = std::min(first[c], now);
        last[c] = std::max(last[c], now);
      }
    });
  }
  for (auto& t : threads) t.join();
  InsertResult r;
  r.first_commit_ns = *std::min_element(first.begin(), first.end());
  r.last_commit_ns = *std::max_element(last.begin(), last.end());
  r.errors = errors.load();
  return r;
}

// The monotonic time at which the broker held all `target` records of
// `topic` (0 on timeout, or when outboxd exited first).
int64_t RecordsDone(WatermarkProbe& probe, const std::string& topic,
                    int64_t target, testing::ChildProcess& outboxd) {
  return WaitForRecords(probe, topic, kPartitions, target, absl::Minutes(10),
                        [&outboxd] { return outboxd.Running(); })
      .done_ns;
}

// What the live and backlog runs report: `events` over `ns`, the CPU
// seconds of outboxd, PostgreSQL and the dev broker, outboxd's peak RSS and
// exit code.
nlohmann::json OutboxdRun(int64_t ns, int64_t events, double cpu, double pg_cpu,
                          double broker_cpu, int64_t rss,
                          const absl::StatusOr<int>& code) {
  return {{"seconds", ns / 1e9},
          {"events_per_s", EventsPerSecond(events, ns)},
          {"outboxd_cpu_s", cpu},
          {"postgres_cpu_s", pg_cpu},
          {"devbroker_cpu_s", broker_cpu},
          {"outboxd_peak_rss_mb", Mb(rss)},
          {"outboxd_exit_code", code.ok() ? *code : -1}};
}

// The kcat input: one "key<TAB>value" line per event, values as outboxd
// publishes them for this kind.
absl::Status WriteKcatInput(const std::string& path, const std::string& kind,
                            int64_t events) {
  std::ofstream out(path, std::ios::trunc);
  for (int64_t i = 0; i < events; ++i) {
    std::string value = EventPayload(i);
    if (kind == "message") value = nlohmann::json::parse(value).dump();
    out << AggregateId(i) << '\t' << value << '\n';
  }
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::StatusOr<nlohmann::json> RunKind(BenchEnv& env, const std::string& kind,
                                       int64_t events) {
  std::cerr << "== " << kind << ": " << events << " events\n";
  nlohmann::json j;
  j["kind"] = kind;
  j["events"] = events;
  j["batch"] = absl::GetFlag(FLAGS_batch);
  j["connections"] = absl::GetFlag(FLAGS_connections);
  const std::string live_slot = absl::StrCat("bench_live_", kind);
  const std::string recv_slot = absl::StrCat("bench_recv_", kind);
  const std::string backlog_slot = absl::StrCat("bench_backlog_", kind);
  const std::string live_topic =
      absl::StrCat("bench.throughput.", kind, ".live");
  const std::string backlog_topic =
      absl::StrCat("bench.throughput.", kind, ".backlog");
  const std::string kcat_topic =
      absl::StrCat("bench.throughput.", kind, ".kcat");
  absl::Status s = env.pg().Exec("postgres", "TRUNCATE public.outbox");
  for (const std::string& t : {live_topic, backlog_topic, kcat_topic}) {
    if (s.ok()) s = env.broker().CreateTopic(t, kPartitions);
  }
  if (s.ok()) s = env.CreateSlot(recv_slot);
  if (s.ok()) s = env.CreateSlot(backlog_slot);
  if (!s.ok()) return s;
  auto probe = WatermarkProbe::Create(env.bootstrap());
  if (!probe.ok()) return probe.status();
  std::vector<std::string> common_args = {"--metrics-address=127.0.0.1:0",
                                          "--status-interval=100ms",
                                          "--log-level=info"};
  for (const std::string& a : absl::GetFlag(FLAGS_outboxd_args)) {
    common_args.push_back(a);
  }
  j["outboxd_args"] = common_args;

  // --- live: outboxd while the events are committed ----------------------
  {
    std::vector<std::string> args = common_args;
    args.push_back(absl::StrCat("--slot=", live_slot));
    args.push_back(absl::StrCat("--topic=", live_topic));
    auto outboxd = env.StartOutboxd(args, absl::StrCat("outboxd-live-", kind));
    if (!outboxd.ok()) return outboxd.status();
    s = env.WaitSlotActive(live_slot, absl::Seconds(60));
    if (!s.ok()) return s;
    pid_t pid = (*outboxd)->pid();
    double cpu0 = ProcessCpuSeconds(pid);
    double pg_cpu0 = ClusterCpuSeconds(env.postmaster_pid());
    double broker_cpu0 = ProcessCpuSeconds(env.devbroker_pid());
    auto inserted = InsertEvents(env.AdminConnInfo(), kind, events,
                                 absl::GetFlag(FLAGS_batch),
                                 absl::GetFlag(FLAGS_connections));
    if (!inserted.ok()) return inserted.status();
    int64_t done = RecordsDone(**probe, live_topic, events, **outboxd);
    double cpu = ProcessCpuSeconds(pid) - cpu0;
    double pg_cpu = ClusterCpuSeconds(env.postmaster_pid()) - pg_cpu0;
    double broker_cpu = ProcessCpuSeconds(env.devbroker_pid()) - broker_cpu0;
    int64_t rss = PeakRssBytes(pid);
    auto code = env.StopOutboxd(**outboxd);
    if (done == 0)
      return absl::DeadlineExceededError("live: not all records arrived");
    int64_t insert_ns = inserted->last_commit_ns - inserted->first_commit_ns;
    int64_t e2e_ns = done - inserted->first_commit_ns;
    j["insert"] = {{"seconds", insert_ns / 1e9},
                   {"events_per_s", EventsPerSecond(events, insert_ns)},
                   {"errors", inserted->errors}};
    j["live"] = OutboxdRun(e2e_ns, events, cpu, pg_cpu, broker_cpu, rss, code);
    j["live"]["last_ack_after_last_commit_s"] =
        (done - inserted->last_commit_ns) / 1e9;
    std::cerr << "live: " << j["live"].dump() << "\n";
  }
  auto end_lsn = env.pg().Query("postgres", "SELECT pg_current_wal_lsn()");
  if (!end_lsn.ok()) return end_lsn.status();
  j["end_lsn"] = *end_lsn;

  // --- recvlogical: the walsender's decoding + streaming limit ------------
  {
    auto run = env.RunPgRecvLogical(absl::GetFlag(FLAGS_pg_recvlogical),
                                    recv_slot, *end_lsn, kind == "message");
    if (!run.ok()) return run.status();
    j["recvlogical"] = {
        {"seconds", run->seconds},
        {"events_per_s", run->seconds > 0 ? events / run->seconds : 0},
        {"postgres_cpu_s", run->postgres_cpu_s}};
    std::cerr << "recvlogical: " << j["recvlogical"].dump() << "\n";
    env.DropSlot(recv_slot);
  }

  // --- backlog: outboxd on the same WAL as pg_recvlogical ----------------
  {
    std::vector<std::string> args = common_args;
    args.push_back(absl::StrCat("--slot=", backlog_slot));
    args.push_back(absl::StrCat("--topic=", backlog_topic));
    int64_t t0 = NowNs();
    double pg_cpu0 = ClusterCpuSeconds(env.postmaster_pid());
    double broker_cpu0 = ProcessCpuSeconds(env.devbroker_pid());
    auto outboxd =
        env.StartOutboxd(args, absl::StrCat("outboxd-backlog-", kind));
    if (!outboxd.ok()) return outboxd.status();
    pid_t pid = (*outboxd)->pid();
    int64_t done = RecordsDone(**probe, backlog_topic, events, **outboxd);
    double cpu = ProcessCpuSeconds(pid);
    int64_t rss = PeakRssBytes(pid);
    double pg_cpu = ClusterCpuSeconds(env.postmaster_pid()) - pg_cpu0;
    double broker_cpu = ProcessCpuSeconds(env.devbroker_pid()) - broker_cpu0;
    auto code = env.StopOutboxd(**outboxd);
    if (done == 0) {
      return absl::DeadlineExceededError("backlog: not all records arrived");
    }
    j["backlog"] =
        OutboxdRun(done - t0, events, cpu, pg_cpu, broker_cpu, rss, code);
    std::cerr << "backlog: " << j["backlog"].dump() << "\n";
    env.DropSlot(backlog_slot);
    env.DropSlot(live_slot);
  }

  // --- kcat: the producing limit ------------------------------------------
  {
    const std::string input =
        absl::StrCat(env.work_dir(), "/kcat-", kind, ".txt");
    s = WriteKcatInput(input, kind, events);
    if (!s.ok()) return s;
    // Static headers with the names and value sizes outboxd sends (kcat
    // cannot read per-record headers from a file).
    std::vector<std::string> argv = {
        "kcat", "-P",
        "-b",   env.bootstrap(),
        "-t",   kcat_topic,
        "-K",   "\t",
        "-l",   input,
        "-H",   absl::StrCat("id=", Uuid(1)),
        "-H",   "eventType=OrderCreated",
        "-H",   absl::StrCat("traceparent=", Traceparent(1)),
        "-H",   "outbox.lsn=24159191880",
        "-H",   "outbox.index=42",
        "-X",   "enable.idempotence=true",
        "-X",   "acks=all",
        "-X",   "linger.ms=1",
        "-X",   "queue.buffering.max.kbytes=32768",
        "-X",   "queue.buffering.max.messages=100000",
        "-X",   "partitioner=murmur2_random"};
    int64_t t0 = NowNs();
    double broker_cpu0 = ProcessCpuSeconds(env.devbroker_pid());
    auto result = testing::RunCommand(argv, absl::Minutes(10));
    int64_t t1 = NowNs();
    double broker_cpu = ProcessCpuSeconds(env.devbroker_pid()) - broker_cpu0;
    if (!result.ok()) return result.status();
    auto total = (*probe)->Total(kcat_topic, kPartitions);
    if (result->exit_code != 0 || !total.ok() || *total < events) {
      return absl::InternalError(absl::StrCat(
          "kcat exit ", result->exit_code, ", records ",
          total.ok() ? *total : -1, ": ", result->output.substr(0, 500)));
    }
    j["kcat"] = {{"seconds", (t1 - t0) / 1e9},
                 {"events_per_s", EventsPerSecond(events, t1 - t0)},
                 {"devbroker_cpu_s", broker_cpu}};
    std::cerr << "kcat: " << j["kcat"].dump() << "\n";
    std::remove(input.c_str());
  }

  double recv = j["recvlogical"]["events_per_s"].get<double>();
  double kcat = j["kcat"]["events_per_s"].get<double>();
  double limit = std::min(recv, kcat);
  j["limit"] = {{"events_per_s", limit},
                {"bound_by", recv <= kcat ? "pg_recvlogical" : "kcat"}};
  j["ratio_live_to_limit"] = j["live"]["events_per_s"].get<double>() / limit;
  j["ratio_backlog_to_limit"] =
      j["backlog"]["events_per_s"].get<double>() / limit;
  j["ratio_backlog_to_recvlogical"] =
      j["backlog"]["events_per_s"].get<double>() / recv;
  return j;
}

std::string Markdown(const nlohmann::json& runs) {
  std::string md =
      "| kind | inserts/s (commit) | outboxd live e2e/s | pg_recvlogical/s | "
      "outboxd backlog/s | kcat/s | limit | live / limit | backlog / "
      "pg_recvlogical | outboxd peak RSS MB | outboxd CPU s (live+backlog) "
      "|\n|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|\n";
  for (const nlohmann::json& j : runs) {
    absl::StrAppend(
        &md,
        absl::StrFormat(
            "| %s | %.0f | %.0f | %.0f | %.0f | %.0f | %s | %.0f%% | %.0f%% | "
            "%.1f | %.1f |\n",
            j["kind"].get<std::string>(),
            j["insert"]["events_per_s"].get<double>(),
            j["live"]["events_per_s"].get<double>(),
            j["recvlogical"]["events_per_s"].get<double>(),
            j["backlog"]["events_per_s"].get<double>(),
            j["kcat"]["events_per_s"].get<double>(),
            j["limit"]["bound_by"].get<std::string>(),
            100 * j["ratio_live_to_limit"].get<double>(),
            100 * j["ratio_backlog_to_recvlogical"].get<double>(),
            std::max(j["live"]["outboxd_peak_rss_mb"].get<double>(),
                     j["backlog"]["outboxd_peak_rss_mb"].get<double>()),
            j["live"]["outboxd_cpu_s"].get<double>() +
                j["backlog"]["outboxd_cpu_s"].get<double>()));
  }
  return md;
}

int Main(int argc, char** argv) {
  // bench_env's --broker: this benchmark measures the dev broker only.
  if (!ParseBenchFlags(
          argc, argv,
          "--broker: throughput_bench runs on the dev broker only")) {
    return kBadFlags;
  }
  for (const std::string& kind : absl::GetFlag(FLAGS_kinds)) {
    if (kind != "insert" && kind != "message") {
      std::cerr << "unknown kind " << kind << "\n";
      return kBadFlags;
    }
  }
  const std::string out = absl::GetFlag(FLAGS_out);
  nlohmann::json machine = MachineInfo();
  std::unique_ptr<BenchEnv> env = StartBenchEnvOrReport(
      EnvOptions(absl::GetFlag(FLAGS_outboxd), absl::GetFlag(FLAGS_work_dir)));
  if (env == nullptr) return 1;
  nlohmann::json runs = nlohmann::json::array();
  nlohmann::json failures = nlohmann::json::array();
  for (const std::string& kind : absl::GetFlag(FLAGS_kinds)) {
    auto r = RunKind(*env, kind, absl::GetFlag(FLAGS_events));
    if (!r.ok()) {
      AddFailure(failures, kind, {{"kind", kind}}, r.status());
      continue;
    }
    runs.push_back(*r);
  }
  nlohmann::json doc;
  doc["benchmark"] = "throughput";
  doc["machine"] = machine;
  doc["load_average_after"] = LoadAverage1();
  doc["setup"] = {
      {"postgres", kPostgresSetup},
      {"broker",
       "outbox-devbroker (librdkafka mock cluster), 1 broker, 4 "
       "partitions"},
      {"outboxd",
       "--source=cdc --topic=<one topic> --status-interval=100ms, "
       "default producer settings (idempotent, acks=all, "
       "linger.ms=1)"},
      {"done_when",
       "sum of the topic's high watermarks reaches the event "
       "count (probed every 20 ms)"},
      {"kcat",
       "-P -K'\\t' -l file, static headers of the same names and "
       "sizes, same producer settings"},
  };
  doc["runs"] = runs;
  doc["failures"] = failures;
  if (!WriteResults(out + "/throughput", doc, Markdown(runs))) return 1;
  return failures.empty() ? 0 : 1;
}

}  // namespace
}  // namespace outboxd::bench

int main(int argc, char** argv) { return outboxd::bench::Main(argc, argv); }
