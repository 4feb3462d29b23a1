#include "benchmarks/vs_debezium_latency.h"

#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "benchmarks/bench_cli.h"
#include "benchmarks/bench_kafka.h"
#include "benchmarks/bench_latency.h"
#include "benchmarks/bench_pg.h"
#include "benchmarks/bench_proc.h"
#include "benchmarks/bench_results.h"

namespace outboxd::bench::vs_debezium {
namespace {

std::string LatencySql(const std::string& type, int64_t id) {
  return absl::StrCat(
      "BEGIN; INSERT INTO public.outbox (aggregatetype, aggregateid, type, "
      "payload) VALUES ('",
      type, "', 'order-", 1000000 + id % 1000, "', 'OrderCreated', '",
      EventPayload(id), "'); COMMIT");
}

absl::StatusOr<LatencyRun> RunLatencyRate(BenchEnv& env, const PublisherKind& p,
                                          testing::ChildProcess& child,
                                          int rate, absl::Duration duration,
                                          int connections) {
  const int64_t events =
      static_cast<int64_t>(rate * absl::ToDoubleSeconds(duration));
  const std::string type = absl::StrCat("latency", rate);
  const std::string topic = absl::StrCat(p.topic_prefix, type);
  std::cerr << absl::StreamFormat("== latency %s at %d events/s: %d events\n",
                                  p.name, rate, events);
  nlohmann::json j;
  j["publisher"] = p.name;
  j["offered_rate"] = rate;
  j["load_before"] = LoadAverages();
  absl::Status s = CreateTopics(env.bootstrap(), {topic}, kPartitions);
  if (!s.ok()) return s;
  auto recorder = ReceiptRecorder::Start(env.bootstrap(), topic, kPartitions,
                                         events, /*fetch_wait_ms=*/1);
  if (!recorder.ok()) return recorder.status();
  s = WaitForWarmup(
      env.AdminConnInfo(), type, **recorder, absl::Seconds(120),
      [&child] { return child.Running(); },
      absl::StrCat(p.name, ": no warm-up event arrived on ", topic));
  if (!s.ok()) return s;
  const double cpu0 = ProcessCpuSeconds(child.pid());
  const int64_t w0 = NowNs();
  auto load = GenerateLoad(env.AdminConnInfo(), rate, events, connections,
                           [&type](int64_t i) { return LatencySql(type, i); });
  if (!load.ok()) return load.status();
  const int64_t load_end_ns = NowNs();
  int64_t committed = 0;
  for (int64_t t : load->commit_ns) committed += t != 0;
  // Stalled, or a minute of backlog: not kept up either way.
  DrainReceipts(**recorder, committed, absl::Seconds(10), load_end_ns,
                absl::Minutes(1));
  const double cpu = ProcessCpuSeconds(child.pid()) - cpu0;
  const int64_t w1 = NowNs();
  (*recorder)->Stop();

  const LatencySample sample = MeasureLatencies(*load, **recorder);
  const int64_t delivered = sample.delivered();
  const int64_t last_receipt = sample.last_receipt_ns;
  const double committed_per_s = sample.committed_per_s();
  j["events"] = events;
  j["committed"] = committed;
  j["commit_errors"] = load->errors;
  j["committed_per_s"] = committed_per_s;
  j["delivered"] = delivered;
  j["duplicates"] = (*recorder)->duplicates();
  j["drain_after_load_s"] = (last_receipt - load_end_ns) / 1e9;
  // The publisher kept up: everything committed arrived, and the last event
  // within 2 s after the load ended (no backlog left to drain; a single
  // stall of a loaded machine shows in max, not here). The run kept up
  // when, besides, the database took the offered rate (>= 95%): on a loaded
  // 2-core machine the generator itself may fall short.
  const bool publisher_kept_up =
      delivered == committed && last_receipt - load_end_ns < 2000000000;
  j["publisher_kept_up"] = publisher_kept_up;
  j["kept_up"] = publisher_kept_up && committed == events &&
                 committed_per_s >= 0.95 * rate;
  j["latency_ms"] = LatencyQuantiles(sample.sorted_ms);
  j["cpu_s"] = cpu;
  j["window_s"] = (w1 - w0) / 1e9;
  j["load_after"] = LoadAverages();
  std::cerr << j.dump() << "\n";
  return LatencyRun{j, CdfPoints(sample.sorted_ms)};
}

}  // namespace

absl::StatusOr<std::vector<LatencyRun>> RunLatency(
    BenchEnv& env, const RigOptions& rig, const LatencyOptions& options,
    nlohmann::json& skipped_runs) {
  const absl::StatusOr<std::vector<int>> rates =
      ParseRates(options.rates, /*allow_max=*/false);
  if (!rates.ok()) return rates.status();
  std::vector<LatencyRun> runs;
  for (const std::string& name : options.publishers) {
    auto p = ParsePublisher(name);
    if (!p.ok()) return p.status();
    const std::string slot = SlotName("lat_", name);
    const std::string log = absl::StrCat("latency-", name);
    nlohmann::json settings;
    auto child = StartPublisher(env, rig, *p, slot, log, &settings);
    if (!child.ok()) return child.status();
    absl::Status s =
        WaitStreaming(env, slot, **child, env.work_dir() + "/" + log + ".log");
    if (!s.ok()) return s;
    for (int rate : *rates) {
      if (!runs.empty() && runs.back().summary["publisher"] == name &&
          !runs.back().summary["publisher_kept_up"].get<bool>()) {
        // "For as long as it keeps up": a higher rate only grows the
        // backlog (and the drain would take minutes).
        nlohmann::json skipped = {{"publisher", name},
                                  {"offered_rate", rate},
                                  {"skipped",
                                   "did not keep up at a lower "
                                   "rate"}};
        std::cerr << skipped.dump() << "\n";
        skipped_runs.push_back(skipped);
        continue;
      }
      auto r = RunLatencyRate(env, *p, **child, rate, options.duration,
                              options.connections);
      if (!r.ok()) return r.status();
      r->summary["settings"] = settings;
      runs.push_back(*std::move(r));
    }
    (void)StopPublisher(**child);
    env.DropSlot(slot);
  }
  return runs;
}

}  // namespace outboxd::bench::vs_debezium
