// Live-rate throughput (benchmarks/README.md, benchmark 5): what outboxd
// costs per event when services write one event per transaction.
//
// Per publisher mode (cdc by default) and target rate (3000, 8000 and max
// by default), on one throwaway cluster and one broker (the dev broker, or
// a single-node Apache Kafka with --broker=apache), with a fresh
// outboxd on its own slot and topic: `--connections` writer connections
// each commit one outbox insert per transaction ("BEGIN; INSERT; COMMIT" in
// one PQexec) for `--duration`, open loop at the target rate (event i due
// at t0 + i / rate on connection i % connections; nothing is started after
// the duration, late or not), or back to back for "max". Then it waits
// until the broker holds every committed record (sum of the topic's high
// watermarks, probed every 20 ms) and reports, over the window from the load's
// start to that moment:
//
//   committed/s   commits / (last commit - first commit)
//   published/s   commits / (all records in the broker - first commit)
//   outboxd CPU   (utime + stime) delta / committed events, in µs
//   context switches of outboxd per second (voluntary + involuntary, all
//                 threads, and the main thread apart)
//   outboxd peak RSS (VmHWM), and the CPU of PostgreSQL (the whole cluster,
//                 the writers' backends included), of the writer threads
//                 (libpq client side) and of the broker (the dev broker or
//                 the Kafka JVM), in cores
//   the whole path per event: outboxd + the walsender + the broker, and
//                 the produce requests per event and records per request
//                 from outboxd's /metrics (live_extras.h)
//
// --variants compares outboxd settings in one run (alternated, --reps),
// --warmup warms the broker first, --latency adds a latency run per
// setting with a consumer (the CPU runs have none).
//
// Writes <out>/live.json and live.md (live-apache.* with --broker=apache).
// Measures only; asserts nothing.
//
//   live_bench --rates=3000,8000,max --duration=15s --modes=cdc
//   live_bench --rates=3000 --broker=apache
#include <algorithm>
#include <atomic>
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
#include "benchmarks/live_extras.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::vector<std::string>, rates,
          std::vector<std::string>({"3000", "8000", "max"}),
          "target commit rates, events/s, or max (as fast as the writers "
          "commit)");
ABSL_FLAG(std::vector<std::string>, modes, std::vector<std::string>({"cdc"}),
          "publisher modes: cdc, poll<duration> (e.g. poll100ms), notify");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(15), "load time per rate");
ABSL_FLAG(int, connections, 4, "writer connections (threads)");
ABSL_FLAG(std::string, out, "benchmarks/results", "output directory");
ABSL_FLAG(std::string, outboxd, "", "outboxd binary (default: the build's)");
ABSL_FLAG(std::vector<std::string>, outboxd_args, {},
          "extra outboxd flags, comma-separated (e.g. "
          "--kafka-property=linger.ms=0)");
ABSL_FLAG(std::string, work_dir, "/tmp/outboxd-bench-live", "outboxd logs");
ABSL_FLAG(std::vector<std::string>, variants,
          std::vector<std::string>({"default:"}),
          "compared outboxd settings, name:flags (flags separated by spaces), "
          "e.g. default:,linger5:--kafka-property=linger.ms=5");
ABSL_FLAG(int, reps, 1,
          "runs of each setting per rate, the settings' order reversed on "
          "every other one");
ABSL_FLAG(absl::Duration, warmup, absl::Seconds(-1),
          "a first run of that length at the first rate, not reported, so "
          "that the broker's JIT and caches are warm (default: 10s with "
          "--broker=apache, none on the dev broker)");
ABSL_FLAG(bool, latency, false,
          "after each CPU run, a latency run of the same setting with a "
          "consumer (commit to receipt p50/p99)");
ABSL_FLAG(int, fetch_wait_ms, 1, "the latency consumer's fetch.wait.max.ms");
ABSL_FLAG(std::string, stem, "live", "result file name (without -apache)");

namespace outboxd::bench {
namespace {

struct Writers {
  int64_t committed = 0;
  int64_t errors = 0;
  int64_t first_commit_ns = 0;
  int64_t last_commit_ns = 0;
  double cpu_s = 0;  // of the writer threads
};

// One event per transaction on each of `conns` from `t0_ns` until `end_ns`;
// `rate` 0 = back to back.
Writers Write(std::vector<std::unique_ptr<PgConn>>& conns, int rate,
              int64_t t0_ns, int64_t end_ns) {
  const int connections = static_cast<int>(conns.size());
  std::vector<Writers> per(connections);
  std::atomic<int64_t> errors{0};
  std::atomic<int64_t> next_id{0};
  const double step_ns = rate > 0 ? 1e9 / rate : 0;
  std::vector<std::thread> threads;
  for (int c = 0; c < connections; ++c) {
    threads.emplace_back([&, c] {
      const double cpu0 = ThreadCpuSeconds();
      Writers& w = per[c];
      w.first_commit_ns = INT64_MAX;
      for (int64_t i = c;; i += connections) {
        if (rate > 0) {
          const int64_t due = t0_ns + static_cast<int64_t>(i * step_ns);
          if (due >= end_ns) break;
          if (NowNs() < due) SleepUntilNs(due);
        } else if (NowNs() < t0_ns) {
          SleepUntilNs(t0_ns);
        }
        if (NowNs() >= end_ns) break;
        absl::Status s = conns[c]->Exec(OneEventTransactionSql(next_id++));
        const int64_t now = NowNs();
        if (!s.ok()) {
          if (errors.fetch_add(1) < 3) std::cerr << s << "\n";
          (void)conns[c]->Exec("ROLLBACK");
          continue;
        }
        ++w.committed;
        w.first_commit_ns = std::min(w.first_commit_ns, now);
        w.last_commit_ns = std::max(w.last_commit_ns, now);
      }
      w.cpu_s = ThreadCpuSeconds() - cpu0;
    });
  }
  for (auto& t : threads) t.join();
  Writers all;
  all.first_commit_ns = INT64_MAX;
  for (const Writers& w : per) {
    all.committed += w.committed;
    all.cpu_s += w.cpu_s;
    if (w.committed > 0) {
      all.first_commit_ns = std::min(all.first_commit_ns, w.first_commit_ns);
      all.last_commit_ns = std::max(all.last_commit_ns, w.last_commit_ns);
    }
  }
  if (all.committed == 0) all.first_commit_ns = 0;
  all.errors = errors.load();
  return all;
}

struct Snapshot {
  int64_t at_ns = 0;
  double outboxd_cpu = 0;
  ContextSwitches outboxd_switches;
  double postgres_cpu = 0;
  double broker_cpu = 0;
  double walsender_cpu = 0;
};

Snapshot Take(BenchEnv& env, pid_t outboxd, pid_t walsender) {
  Snapshot s;
  s.at_ns = NowNs();
  s.outboxd_cpu = ProcessCpuSeconds(outboxd);
  s.outboxd_switches = ProcessContextSwitches(outboxd);
  s.postgres_cpu = ClusterCpuSeconds(env.postmaster_pid());
  s.broker_cpu = ProcessCpuSeconds(env.broker_pid());
  s.walsender_cpu = walsender > 0 ? ProcessCpuSeconds(walsender) : 0;
  return s;
}

// Per event, the whole path: outboxd, the walsender serving its slot, the
// broker; and the produce requests outboxd's statistics counted.
nlohmann::json PathFigures(const Snapshot& before, const Snapshot& after,
                           const ProduceCounts& sent_before,
                           const ProduceCounts& sent_after, int64_t n,
                           double outboxd_cpu) {
  const double walsender = after.walsender_cpu - before.walsender_cpu;
  const double broker = after.broker_cpu - before.broker_cpu;
  const double per = n > 0 ? 1e6 / n : 0.0;
  nlohmann::json p = {{"walsender_cpu_us_per_event", walsender * per},
                      {"broker_cpu_us_per_event", broker * per},
                      {"whole_path_cpu_us_per_event",
                       (outboxd_cpu + walsender + broker) * per}};
  const double requests = sent_after.requests - sent_before.requests;
  const double records = sent_after.records - sent_before.records;
  const bool counted = sent_before.requests >= 0 && sent_after.requests >= 0;
  p["produce_requests"] = counted ? requests : -1.0;
  p["records_sent"] = counted ? records : -1.0;
  p["requests_per_event"] = counted && n > 0 ? requests / n : -1.0;
  p["records_per_request"] =
      counted && requests > 0 ? records / requests : -1.0;
  return p;
}

// The outboxd flags of `variant`: --outboxd_args, then its own.
std::vector<std::string> VariantArgs(const Variant& variant) {
  std::vector<std::string> args = absl::GetFlag(FLAGS_outboxd_args);
  args.insert(args.end(), variant.args.begin(), variant.args.end());
  return args;
}

absl::StatusOr<nlohmann::json> RunOne(BenchEnv& env, const PublisherMode& mode,
                                      const Variant& variant, int rate,
                                      absl::Duration duration, int run_index) {
  const std::string rate_name = rate > 0 ? absl::StrCat(rate) : "max";
  const std::string topic =
      absl::StrCat("bench.live.", mode.name, ".", rate_name, ".", run_index);
  const std::string slot = absl::StrCat("bench_live_", run_index);
  const int connections = absl::GetFlag(FLAGS_connections);
  std::cerr << "== " << mode.name << " " << variant.name << " at " << rate_name
            << " events/s\n";

  absl::Status s = env.pg().Exec("postgres", "TRUNCATE public.outbox");
  if (s.ok()) s = env.PrepareMode(mode);
  if (s.ok()) s = env.CreateTopic(topic);
  if (!s.ok()) return s;
  auto probe = WatermarkProbe::Create(env.bootstrap());
  if (!probe.ok()) return probe.status();

  const std::vector<std::string> args =
      ModeRunArgs(mode, slot, topic, VariantArgs(variant));
  const std::string log_name =
      absl::StrCat("outboxd-live-", mode.name, "-", rate_name, "-", run_index);
  const std::string log_path =
      absl::StrCat(env.work_dir(), "/", log_name, ".log");
  auto outboxd = env.StartOutboxd(args, log_name);
  if (!outboxd.ok()) return outboxd.status();
  testing::ChildProcess& child = **outboxd;
  const pid_t pid = child.pid();
  auto alive = [&child] { return child.Running(); };

  // Ready when one warm-up event is in the broker: connections, metadata
  // and the first batch are out of the measurement.
  pid_t walsender = -1;
  if (mode.source == "cdc") {
    s = env.WaitSlotActive(slot, absl::Seconds(60));
    if (!s.ok()) return s;
    walsender = WalsenderPid(env, slot);
  }
  s = env.pg().Exec("postgres", WarmupEventSql("order"));
  if (!s.ok()) return s;
  RecordArrival warm =
      WaitForRecords(**probe, topic, kPartitions, 1, absl::Seconds(60), alive);
  if (warm.done_ns == 0) {
    return absl::DeadlineExceededError(absl::StrCat(
        "no warm-up record (see ", env.work_dir(), "/", log_name, ".log)"));
  }
  // Let the warm-up settle and librdkafka's statistics (every second)
  // count its requests.
  absl::SleepFor(absl::Milliseconds(1200));
  const ProduceCounts sent_before = ScrapeProduceCounts(log_path);

  auto pool = ConnectAll(env.AdminConnInfo(), connections);
  if (!pool.ok()) return pool.status();
  const int64_t t0 = NowNs() + 20000000;  // 20 ms to get the threads going
  const int64_t end = t0 + absl::ToInt64Nanoseconds(duration);
  const Snapshot before = Take(env, pid, walsender);
  const Writers w = Write(*pool, rate, t0, end);
  const int64_t load_end_ns = NowNs();
  const int64_t target = w.committed + 1;  // + the warm-up record
  RecordArrival arrival = WaitForRecords(**probe, topic, kPartitions, target,
                                         absl::Minutes(2), alive);
  const Snapshot after = Take(env, pid, walsender);
  const int64_t peak_rss = PeakRssBytes(pid);
  absl::SleepFor(absl::Milliseconds(1200));  // the next statistics
  const ProduceCounts sent_after = ScrapeProduceCounts(log_path);
  auto code = env.StopOutboxd(child);
  if (mode.source == "cdc") env.DropSlot(slot);

  const double window_s = (after.at_ns - before.at_ns) / 1e9;
  const int64_t n = w.committed;
  const bool all_arrived = arrival.done_ns != 0;
  const double outboxd_cpu = after.outboxd_cpu - before.outboxd_cpu;
  const int64_t switches =
      after.outboxd_switches.total() - before.outboxd_switches.total();
  nlohmann::json j;
  j["mode"] = mode.name;
  j["variant"] = variant.name;
  j["variant_args"] = variant.args;
  j["target_rate"] = rate_name;
  j["duration_s"] = absl::ToDoubleSeconds(duration);
  j["connections"] = connections;
  j["committed"] = n;
  j["commit_errors"] = w.errors;
  j["committed_per_s"] =
      EventsPerSecond(n, w.last_commit_ns - w.first_commit_ns);
  j["records_in_broker"] = arrival.last_total - 1;
  j["all_arrived"] = all_arrived;
  j["published_per_s"] =
      all_arrived ? EventsPerSecond(n, arrival.done_ns - w.first_commit_ns)
                  : 0.0;
  j["last_record_after_last_commit_s"] =
      all_arrived ? (arrival.done_ns - w.last_commit_ns) / 1e9 : -1.0;
  j["load_end_to_all_arrived_s"] =
      all_arrived ? (arrival.done_ns - load_end_ns) / 1e9 : -1.0;
  j["window_s"] = window_s;
  j["outboxd"] = {
      {"cpu_s", outboxd_cpu},
      {"cpu_us_per_event", n > 0 ? outboxd_cpu * 1e6 / n : 0.0},
      {"cores", outboxd_cpu / window_s},
      {"context_switches_per_s", switches / window_s},
      {"voluntary_switches_per_s",
       (after.outboxd_switches.voluntary - before.outboxd_switches.voluntary) /
           window_s},
      {"involuntary_switches_per_s", (after.outboxd_switches.involuntary -
                                      before.outboxd_switches.involuntary) /
                                         window_s},
      {"main_thread_switches_per_s", (after.outboxd_switches.main_thread -
                                      before.outboxd_switches.main_thread) /
                                         window_s},
      {"context_switches_per_event",
       n > 0 ? static_cast<double>(switches) / n : 0.0},
      {"peak_rss_mb", Mb(peak_rss)},
      {"exit_code", code.ok() ? *code : -1}};
  j["context"] = {
      {"postgres_cpu_s", after.postgres_cpu - before.postgres_cpu},
      {"postgres_cores", (after.postgres_cpu - before.postgres_cpu) / window_s},
      {"writers_cpu_s", w.cpu_s},
      {"writers_cores", w.cpu_s / window_s},
      {"broker_cpu_s", after.broker_cpu - before.broker_cpu},
      {"broker_cores", (after.broker_cpu - before.broker_cpu) / window_s}};
  j["path"] =
      PathFigures(before, after, sent_before, sent_after, n, outboxd_cpu);
  std::cerr << j.dump() << "\n";
  if (!all_arrived) {
    std::cerr << "only " << arrival.last_total - 1 << " of " << n
              << " records arrived\n";
  }
  return j;
}

// The figure with `decimals`, or "-" when it could not be read (negative).
std::string Fig(const nlohmann::json& v, int decimals) {
  const double d = v.get<double>();
  return d < 0 ? "-" : absl::StrFormat("%.*f", decimals, d);
}

std::string Markdown(const std::string& broker, const nlohmann::json& runs,
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
      "| p99 ms | max ms |\n|---|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const nlohmann::json& l : latency) {
    const nlohmann::json& q = l["latency_ms"];
    absl::StrAppend(
        &md, absl::StrFormat("| %s | %s | %.0f | %d | %.1f | %.1f | %.1f | "
                             "%.1f |\n",
                             l["variant"].get<std::string>(),
                             l["target_rate"].get<std::string>(),
                             l["committed_per_s"].get<double>(),
                             l["delivered"].get<int64_t>(),
                             q["p50"].get<double>(), q["p90"].get<double>(),
                             q["p99"].get<double>(), q["max"].get<double>()));
  }
  return md;
}

// One setting at one rate: its CPU run, then (--latency) its latency run.
void RunSetting(BenchEnv& env, const PublisherMode& mode, const Variant& v,
                int rate, int run_index, nlohmann::json& runs,
                nlohmann::json& latency, nlohmann::json& failures) {
  const std::string rate_name = rate > 0 ? absl::StrCat(rate) : "max";
  const nlohmann::json what = {
      {"mode", mode.name}, {"variant", v.name}, {"rate", rate_name}};
  auto r = RunOne(env, mode, v, rate, absl::GetFlag(FLAGS_duration), run_index);
  if (!r.ok()) {
    AddFailure(failures, absl::StrCat(mode.name, " ", v.name, " ", rate_name),
               what, r.status());
    return;
  }
  runs.push_back(*r);
  if (!absl::GetFlag(FLAGS_latency) || rate <= 0) return;
  auto l = RunLatency(env, VariantArgs(v), rate, absl::GetFlag(FLAGS_duration),
                      absl::GetFlag(FLAGS_connections),
                      absl::GetFlag(FLAGS_fetch_wait_ms), run_index);
  if (!l.ok()) {
    AddFailure(failures,
               absl::StrCat("latency ", mode.name, " ", v.name, " ", rate_name),
               what, l.status());
    return;
  }
  (*l)["variant"] = v.name;
  (*l)["target_rate"] = rate_name;
  std::cerr << l->dump() << "\n";
  latency.push_back(*l);
}

int Main(int argc, char** argv) {
  const std::optional<BrokerKind> broker = ParseBenchFlags(argc, argv);
  if (!broker) return kBadFlags;
  const std::optional<ModesAndRates> plan =
      ParseModesAndRates(absl::GetFlag(FLAGS_modes), absl::GetFlag(FLAGS_rates),
                         /*allow_max=*/true);
  if (!plan) return kBadFlags;
  const std::string out = absl::GetFlag(FLAGS_out);
  StartedBench bench = StartBench(EnvOptions(
      absl::GetFlag(FLAGS_outboxd), absl::GetFlag(FLAGS_work_dir), *broker));
  if (bench.env == nullptr) return 1;
  BenchEnv* env = bench.env.get();
  const std::optional<std::vector<Variant>> variants =
      ParseVariants(absl::GetFlag(FLAGS_variants));
  if (!variants || variants->empty()) return kBadFlags;
  nlohmann::json runs = nlohmann::json::array();
  nlohmann::json latency = nlohmann::json::array();
  nlohmann::json failures = nlohmann::json::array();
  int run_index = 0;
  absl::Duration warmup = absl::GetFlag(FLAGS_warmup);
  if (warmup < absl::ZeroDuration()) {
    warmup = *broker == BrokerKind::kApache ? absl::Seconds(10)
                                            : absl::ZeroDuration();
  }
  if (warmup > absl::ZeroDuration()) {
    std::cerr << "== warm-up run, not reported\n";
    (void)RunOne(*env, plan->modes[0], (*variants)[0], plan->rates[0], warmup,
                 run_index++);
  }
  for (const PublisherMode& mode : plan->modes) {
    for (int rate : plan->rates) {
      for (int rep = 0; rep < absl::GetFlag(FLAGS_reps); ++rep) {
        for (const Variant& v : InRepOrder(*variants, rep)) {
          RunSetting(*env, mode, v, rate, run_index++, runs, latency, failures);
        }
      }
    }
  }
  bool all_arrived = true;
  for (const nlohmann::json& r : runs)
    all_arrived &= r["all_arrived"].get<bool>();

  nlohmann::json doc;
  doc["benchmark"] = "live";
  doc["machine"] = bench.machine;
  doc["setup"] = {
      {"postgres", kPostgresSetup},
      {"broker", env->broker_description()},
      {"outboxd",
       "a fresh process per rate, --topic=<one topic>, default producer "
       "settings; one warm-up record before the window"},
      {"load",
       "one INSERT per transaction (BEGIN; INSERT; COMMIT in one PQexec), "
       "open loop at the target rate, or back to back for max"},
      {"window",
       "from the load's start until the broker holds every committed record "
       "(sum of the high watermarks, probed every 20 ms)"},
      {"outboxd_args", absl::GetFlag(FLAGS_outboxd_args)},
      {"variants", absl::GetFlag(FLAGS_variants)},
      {"reps", absl::GetFlag(FLAGS_reps)},
      {"warmup_s", absl::ToDoubleSeconds(warmup)},
      {"cpu_runs",
       "no consumer: the broker's CPU is the produce path's (the latency "
       "runs, --latency, are apart)"},
  };
  doc["runs"] = runs;
  doc["failures"] = failures;
  const std::string stem =
      out + "/" + ResultStem(absl::GetFlag(FLAGS_stem), *broker);
  doc["latency"] = latency;
  const std::string md =
      Markdown(env->broker_description(), runs, latency, variants->size() > 1);
  if (!WriteResults(stem, doc, md)) return 1;
  return failures.empty() && all_arrived ? 0 : 1;
}

}  // namespace
}  // namespace outboxd::bench

int main(int argc, char** argv) { return outboxd::bench::Main(argc, argv); }
