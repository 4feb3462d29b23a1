#include "benchmarks/live_extras.h"

#include <algorithm>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "benchmarks/bench_kafka.h"
#include "benchmarks/bench_latency.h"
#include "benchmarks/bench_pg.h"
#include "benchmarks/bench_proc.h"
#include "benchmarks/bench_results.h"
#include "benchmarks/live_publisher.h"
#include "tests/harness/metrics_scrape.h"

namespace outboxd::bench {
namespace {

// The figure with `decimals`, or "-" when it could not be read (negative).
std::string Fig(const nlohmann::json& v, int decimals) {
  const double d = v.get<double>();
  return d < 0 ? "-" : absl::StrFormat("%.*f", decimals, d);
}

// The "some" line's total of /proc/pressure/cpu: µs during which at least
// one runnable task waited for a CPU; -1 without PSI.
double CpuPressureMicros() {
  std::ifstream in("/proc/pressure/cpu");
  std::string word;
  while (in >> word) {
    if (absl::StartsWith(word, "total=")) {
      double v = -1;
      return absl::SimpleAtod(word.substr(6), &v) ? v : -1;
    }
  }
  return -1;
}

// The latency run's CPU pressure as a percentage, "-" when unknown.
std::string Pressure(const nlohmann::json& l) {
  const double p = l.value("cpu_pressure_some", -1.0);
  return p < 0 ? "-" : absl::StrFormat("%.0f %%", 100 * p);
}

}  // namespace

std::optional<std::vector<Variant>> ParseVariants(
    const std::vector<std::string>& specs) {
  std::vector<Variant> variants;
  for (const std::string& spec : specs) {
    std::vector<std::string> parts =
        absl::StrSplit(spec, absl::MaxSplits(':', 1));
    if (parts.size() != 2 || parts[0].empty()) {
      std::cerr << "bad variant " << spec << " (want name:flags)\n";
      return std::nullopt;
    }
    Variant v;
    v.name = parts[0];
    v.args = absl::StrSplit(parts[1], ' ', absl::SkipEmpty());
    variants.push_back(std::move(v));
  }
  return variants;
}

std::vector<Variant> InRepOrder(const std::vector<Variant>& variants, int rep) {
  std::vector<Variant> order = variants;
  if (rep % 2 == 1) std::reverse(order.begin(), order.end());
  return order;
}

pid_t WalsenderPid(BenchEnv& env, const std::string& slot) {
  auto v = env.pg().Query(
      "postgres",
      absl::StrCat("SELECT active_pid FROM pg_replication_slots WHERE "
                   "slot_name = '",
                   slot, "'"));
  int pid = -1;
  if (!v.ok() || !absl::SimpleAtoi(*v, &pid)) return -1;
  return pid;
}

ProduceCounts ScrapeProduceCounts(const std::string& log_path) {
  std::ifstream in(log_path);
  std::stringstream log;
  log << in.rdbuf();
  ProduceCounts counts;
  // The log may hold earlier runs' lines (the same name in the same work
  // directory): the port is this run's, the last one logged.
  const std::string text = log.str();
  const size_t last = text.rfind("metrics on http://");
  const int port =
      testing::MetricsPort(last == std::string::npos ? "" : text.substr(last));
  if (port <= 0) return counts;
  int code = 0;
  const std::string scrape = testing::Get(port, "/metrics", &code);
  if (code != 200) return counts;
  counts.requests = testing::Sample(scrape, "outboxd_kafka_requests_total");
  counts.records = testing::Sample(scrape, "outboxd_kafka_records_sent_total");
  return counts;
}

absl::StatusOr<nlohmann::json> RunLatency(BenchEnv& env, const Variant& v,
                                          const std::vector<std::string>& args,
                                          int rate, absl::Duration duration,
                                          int connections, int fetch_wait_ms,
                                          int run_index) {
  const int64_t events =
      static_cast<int64_t>(rate * absl::ToDoubleSeconds(duration));
  const std::string topic = absl::StrCat("bench.live.latency.", run_index);
  const std::string slot = absl::StrCat("bench_live_lat_", run_index);
  absl::Status s = env.pg().Exec("postgres", "TRUNCATE public.outbox");
  if (s.ok()) s = env.CreateTopic(topic);
  if (!s.ok()) return s;
  auto recorder = ReceiptRecorder::Start(env.bootstrap(), topic, kPartitions,
                                         events, fetch_wait_ms);
  if (!recorder.ok()) return recorder.status();
  PublisherMode cdc;
  cdc.name = "cdc";
  cdc.source = "cdc";
  const std::string log_name = absl::StrCat("outboxd-live-latency-", run_index);
  auto outboxd = StartLivePublisher(env, v, ModeRunArgs(cdc, slot, topic, args),
                                    slot, topic, log_name);
  if (!outboxd.ok()) return outboxd.status();
  testing::ChildProcess& child = **outboxd;
  s = WaitLiveStreaming(env, v, slot, child, log_name);
  if (s.ok()) {
    s = WaitForWarmup(
        env.AdminConnInfo(), "order", **recorder, absl::Seconds(60),
        [&child] { return child.Running(); },
        absl::StrCat("no warm-up event (see ", env.work_dir(), "/", log_name,
                     ".log)"));
  }
  if (!s.ok()) return s;
  const double pressure0 = CpuPressureMicros();
  const int64_t load_start_ns = NowNs();
  auto load = GenerateLoad(env.AdminConnInfo(), rate, events, connections,
                           OneEventTransactionSql);
  if (!load.ok()) return load.status();
  const int64_t load_end_ns = NowNs();
  const double pressure1 = CpuPressureMicros();
  int64_t committed = 0;
  for (int64_t t : load->commit_ns) committed += t != 0;
  DrainReceipts(**recorder, committed, absl::Seconds(5), load_end_ns);
  (*recorder)->Stop();
  (void)StopLivePublisher(env, v, child);
  env.DropSlot(slot);
  const LatencySample sample = MeasureLatencies(*load, **recorder);
  nlohmann::json j;
  j["committed"] = committed;
  j["delivered"] = sample.delivered();
  j["committed_per_s"] = sample.committed_per_s();
  j["latency_ms"] = LatencyQuantiles(sample.sorted_ms);
  // The share of the load's time in which some task waited for a CPU.
  j["cpu_pressure_some"] =
      pressure0 >= 0 && pressure1 >= 0
          ? (pressure1 - pressure0) * 1e3 / (load_end_ns - load_start_ns)
          : -1.0;
  return j;
}

std::string LiveMarkdown(const std::string& broker, const nlohmann::json& runs,
                         const nlohmann::json& latency, bool variants) {
  std::string md = absl::StrCat("Live rate, broker: ", broker, "\n\n");
  absl::StrAppend(&md, variants ? "| setting " : "",
                  "| mode | target/s | committed/s | published/s | all arrived "
                  "| outboxd CPU µs/event | outboxd cores | outboxd ctx "
                  "switches/s (main thread) | outboxd peak RSS MB | PostgreSQL "
                  "cores | writers cores | broker cores | walsender µs/event "
                  "| broker µs/event | whole path µs/event | produce "
                  "requests/event | records/request |\n",
                  variants ? "|---" : "",
                  "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:"
                  "|---:|---:|---:|---:|---:|\n");
  for (const nlohmann::json& j : runs) {
    const nlohmann::json& o = j["outboxd"];
    const nlohmann::json& c = j["context"];
    const nlohmann::json& p = j["path"];
    if (variants)
      absl::StrAppend(&md, "| ", j["variant"].get<std::string>(), " ");
    absl::StrAppend(
        &md,
        absl::StrFormat(
            "| %s | %s | %.0f | %.0f | %s | %.1f | %.2f | %.0f (%.0f) | %.1f | "
            "%.2f | %.2f | %.2f | %.1f | %.1f | %.1f | %s | %s |\n",
            j["mode"].get<std::string>(), j["target_rate"].get<std::string>(),
            j["committed_per_s"].get<double>(),
            j["published_per_s"].get<double>(),
            j["all_arrived"].get<bool>()
                ? absl::StrCat("yes (", j["committed"].get<int64_t>(), ")")
                : absl::StrCat("**no** (",
                               j["records_in_broker"].get<int64_t>(), " of ",
                               j["committed"].get<int64_t>(), ")"),
            o["cpu_us_per_event"].get<double>(), o["cores"].get<double>(),
            o["context_switches_per_s"].get<double>(),
            o["main_thread_switches_per_s"].get<double>(),
            o["peak_rss_mb"].get<double>(), c["postgres_cores"].get<double>(),
            c["writers_cores"].get<double>(), c["broker_cores"].get<double>(),
            p["walsender_cpu_us_per_event"].get<double>(),
            p["broker_cpu_us_per_event"].get<double>(),
            p["whole_path_cpu_us_per_event"].get<double>(),
            Fig(p["requests_per_event"], 3), Fig(p["records_per_request"], 1)));
  }
  if (latency.empty()) return md;
  md +=
      "\nLatency, commit to consumer (runs of their own, with the consumer)"
      "\n\n| setting | target/s | committed/s | delivered | p50 ms | p90 ms "
      "| p99 ms | max ms | CPU pressure |\n|---|---:|---:|---:|---:|---:|---:"
      "|---:|---:|\n";
  for (const nlohmann::json& l : latency) {
    const nlohmann::json& q = l["latency_ms"];
    absl::StrAppend(
        &md,
        absl::StrFormat("| %s | %s | %.0f | %d | %.1f | %.1f | %.1f | "
                        "%.1f | %s |\n",
                        l["variant"].get<std::string>(),
                        l["target_rate"].get<std::string>(),
                        l["committed_per_s"].get<double>(),
                        l["delivered"].get<int64_t>(), q["p50"].get<double>(),
                        q["p90"].get<double>(), q["p99"].get<double>(),
                        q["max"].get<double>(), Pressure(l)));
  }
  return md;
}

}  // namespace outboxd::bench
