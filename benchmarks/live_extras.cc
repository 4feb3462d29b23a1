#include "benchmarks/live_extras.h"

#include <algorithm>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "benchmarks/bench_kafka.h"
#include "benchmarks/bench_latency.h"
#include "benchmarks/bench_pg.h"
#include "benchmarks/bench_proc.h"
#include "benchmarks/bench_results.h"
#include "tests/harness/metrics_scrape.h"

namespace outboxd::bench {

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

absl::StatusOr<nlohmann::json> RunLatency(BenchEnv& env,
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
  auto outboxd =
      env.StartOutboxd(ModeRunArgs(cdc, slot, topic, args), log_name);
  if (!outboxd.ok()) return outboxd.status();
  testing::ChildProcess& child = **outboxd;
  s = env.WaitSlotActive(slot, absl::Seconds(60));
  if (s.ok()) {
    s = WaitForWarmup(
        env.AdminConnInfo(), "order", **recorder, absl::Seconds(60),
        [&child] { return child.Running(); },
        absl::StrCat("no warm-up event (see ", env.work_dir(), "/", log_name,
                     ".log)"));
  }
  if (!s.ok()) return s;
  auto load = GenerateLoad(env.AdminConnInfo(), rate, events, connections,
                           OneEventTransactionSql);
  if (!load.ok()) return load.status();
  const int64_t load_end_ns = NowNs();
  int64_t committed = 0;
  for (int64_t t : load->commit_ns) committed += t != 0;
  DrainReceipts(**recorder, committed, absl::Seconds(5), load_end_ns);
  (*recorder)->Stop();
  (void)env.StopOutboxd(child);
  env.DropSlot(slot);
  const LatencySample sample = MeasureLatencies(*load, **recorder);
  nlohmann::json j;
  j["committed"] = committed;
  j["delivered"] = sample.delivered();
  j["committed_per_s"] = sample.committed_per_s();
  j["latency_ms"] = LatencyQuantiles(sample.sorted_ms);
  return j;
}

}  // namespace outboxd::bench
