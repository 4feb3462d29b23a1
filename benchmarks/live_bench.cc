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
// setting with a consumer (the CPU runs have none), --debezium adds
// Debezium in Kafka Connect as one more setting (live_publisher.h).
//
// Writes <out>/live.json and live.md (live-apache.* with --broker=apache).
// Measures only; asserts nothing.
//
// With --reconcile (benchmark 9, bench_reconcile.h) it compares reconciler
// settings instead: each of them per rate, --repeat rounds in alternated
// order; the load runs --settle before the window (the reconciler's passes
// judge rows only once they are one margin old) and --duration in it.
// Writes <out>/reconcile.json and reconcile.md.
//
//   live_bench --rates=3000,8000,max --duration=15s --modes=cdc
//   live_bench --rates=3000 --broker=apache
//   live_bench --rates=3000 --reconcile=off,default,5s --repeat=2
//       --settle=170s --duration=120s
#include <algorithm>
#include <atomic>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "benchmarks/bench_cli.h"
#include "benchmarks/bench_env.h"
#include "benchmarks/bench_kafka.h"
#include "benchmarks/bench_pg.h"
#include "benchmarks/bench_proc.h"
#include "benchmarks/bench_reconcile.h"
#include "benchmarks/bench_results.h"
#include "benchmarks/live_extras.h"
#include "benchmarks/live_publisher.h"
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
ABSL_FLAG(std::vector<std::string>, reconcile, {},
          "compare reconciler settings (off, default, <interval>, "
          "<interval>/<margin>) and write reconcile.{json,md}");
ABSL_FLAG(int, repeat, 1, "rounds of the --reconcile settings");
ABSL_FLAG(bool, debezium, false,
          "Debezium (Kafka Connect, Outbox Event Router at its defaults) as "
          "one more setting, on the same broker and load (--broker=apache)");
ABSL_FLAG(std::string, connect_libs, "",
          "with --debezium: the Kafka Connect + Debezium jars");
ABSL_FLAG(std::string, connect_log4j, "",
          "with --debezium: log4j2 configuration for Kafka Connect");
ABSL_FLAG(absl::Duration, settle, absl::ZeroDuration(),
          "load time before the measured window");

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
// `rate` 0 = back to back. `progress` counts the commits as they happen.
Writers Write(std::vector<std::unique_ptr<PgConn>>& conns, int rate,
              int64_t t0_ns, int64_t end_ns, std::atomic<int64_t>& progress) {
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
        progress.fetch_add(1, std::memory_order_relaxed);
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

// The load's window: `settle` of load, then the snapshot `before`, the
// produce requests and the commits so far (`before_commits`).
struct Window {
  Snapshot before;
  ProduceCounts sent_before;
  ReconcileSnapshot reconcile_before;
  int64_t before_commits = 0;
};

// One run of `variant` at `rate`; with `reconcile`, that reconciler
// setting's flags too, and its figures. The load runs `settle` before the
// window and `duration` in it.
absl::StatusOr<nlohmann::json> RunOne(BenchEnv& env, const PublisherMode& mode,
                                      const Variant& variant, int rate,
                                      absl::Duration duration, int run_index,
                                      const ReconcileSetting* reconcile,
                                      absl::Duration settle) {
  const std::string rate_name = rate > 0 ? absl::StrCat(rate) : "max";
  const std::string topic =
      absl::StrCat("bench.live.", mode.name, ".", rate_name, ".", run_index);
  const std::string slot = absl::StrCat("bench_live_", run_index);
  const int connections = absl::GetFlag(FLAGS_connections);
  std::cerr << "== " << mode.name << " " << variant.name << " at " << rate_name
            << " events/s"
            << (reconcile ? ", reconciler " + reconcile->name : "") << "\n";

  absl::Status s = env.pg().Exec("postgres", "TRUNCATE public.outbox");
  if (s.ok()) s = env.PrepareMode(mode);
  if (s.ok()) s = env.CreateTopic(topic);
  if (!s.ok()) return s;
  auto probe = WatermarkProbe::Create(env.bootstrap());
  if (!probe.ok()) return probe.status();

  std::vector<std::string> extra = VariantArgs(variant);
  if (reconcile != nullptr) {
    extra.insert(extra.end(), reconcile->args.begin(), reconcile->args.end());
  }
  const std::vector<std::string> args = ModeRunArgs(mode, slot, topic, extra);
  const std::string log_name =
      absl::StrCat("outboxd-live-", mode.name, "-", rate_name, "-", run_index);
  const std::string log_path =
      absl::StrCat(env.work_dir(), "/", log_name, ".log");
  auto outboxd = StartLivePublisher(env, variant, args, slot, topic, log_name);
  if (!outboxd.ok()) return outboxd.status();
  testing::ChildProcess& child = **outboxd;
  const pid_t pid = child.pid();
  auto alive = [&child] { return child.Running(); };

  // Ready when one warm-up event is in the broker: connections, metadata
  // and the first batch are out of the measurement.
  pid_t walsender = -1;
  if (mode.source == "cdc") {
    s = WaitLiveStreaming(env, variant, slot, child, log_name);
    if (!s.ok()) return s;
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
  // The walsender streaming now: the one seen while the slot was being
  // created (active then too) may have exited since.
  if (mode.source == "cdc") walsender = WalsenderPid(env, slot);

  auto pool = ConnectAll(env.AdminConnInfo(), connections);
  if (!pool.ok()) return pool.status();
  const int64_t t0 = NowNs() + 20000000;  // 20 ms to get the threads going
  const int64_t end = t0 + absl::ToInt64Nanoseconds(settle + duration);
  std::atomic<int64_t> progress{0};
  Window win;
  auto open_window = [&] {
    if (reconcile != nullptr) {
      s = ResetStatements(env);
      win.reconcile_before = TakeReconcileSnapshot(pid, env.postmaster_pid());
    }
    win.sent_before = ScrapeProduceCounts(log_path);
    win.before = Take(env, pid, walsender);
    win.before_commits = progress.load();
  };
  Writers w;
  if (settle == absl::ZeroDuration()) {
    open_window();
    w = Write(*pool, rate, t0, end, progress);
  } else {
    std::thread load([&] { w = Write(*pool, rate, t0, end, progress); });
    SleepUntilNs(t0 + absl::ToInt64Nanoseconds(settle));
    open_window();
    load.join();
  }
  if (!s.ok()) return s;
  const Snapshot& before = win.before;
  const int64_t load_end_ns = NowNs();
  const int64_t target = w.committed + 1;  // + the warm-up record
  RecordArrival arrival = WaitForRecords(**probe, topic, kPartitions, target,
                                         absl::Minutes(2), alive);
  const Snapshot after = Take(env, pid, walsender);
  const ReconcileSnapshot reconcile_after =
      TakeReconcileSnapshot(pid, env.postmaster_pid());
  const int64_t peak_rss = PeakRssBytes(pid);
  nlohmann::json statements;
  if (reconcile != nullptr) {
    auto st = PublisherStatements(env);
    if (!st.ok()) return st.status();
    statements = *st;
  }
  absl::SleepFor(absl::Milliseconds(1200));  // the next statistics
  const ProduceCounts sent_after = ScrapeProduceCounts(log_path);
  auto code = StopLivePublisher(env, variant, child);
  if (mode.source == "cdc") env.DropSlot(slot);

  const double window_s = (after.at_ns - before.at_ns) / 1e9;
  const int64_t n = w.committed - win.before_commits;  // in the window
  const bool all_arrived = arrival.done_ns != 0;
  const double outboxd_cpu = after.outboxd_cpu - before.outboxd_cpu;
  const int64_t switches =
      after.outboxd_switches.total() - before.outboxd_switches.total();
  nlohmann::json j;
  j["mode"] = mode.name;
  j["variant"] = variant.name;
  j["publisher"] = variant.debezium ? "debezium" : "outboxd";
  j["variant_args"] = variant.args;
  j["target_rate"] = rate_name;
  j["duration_s"] = absl::ToDoubleSeconds(duration);
  j["connections"] = connections;
  j["committed"] = w.committed;
  j["commit_errors"] = w.errors;
  j["committed_per_s"] =
      EventsPerSecond(w.committed, w.last_commit_ns - w.first_commit_ns);
  j["records_in_broker"] = arrival.last_total - 1;
  j["all_arrived"] = all_arrived;
  j["published_per_s"] =
      all_arrived
          ? EventsPerSecond(w.committed, arrival.done_ns - w.first_commit_ns)
          : 0.0;
  j["last_record_after_last_commit_s"] =
      all_arrived ? (arrival.done_ns - w.last_commit_ns) / 1e9 : -1.0;
  j["load_end_to_all_arrived_s"] =
      all_arrived ? (arrival.done_ns - load_end_ns) / 1e9 : -1.0;
  j["window_s"] = window_s;
  j["settle_s"] = absl::ToDoubleSeconds(settle);
  j["window_events"] = n;
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
      PathFigures(before, after, win.sent_before, sent_after, n, outboxd_cpu);
  if (reconcile != nullptr) {
    j["reconcile"] = ReconcileFigures(*reconcile, win.reconcile_before,
                                      reconcile_after, statements, window_s);
  }
  std::cerr << j.dump() << "\n";
  if (!all_arrived) {
    std::cerr << "only " << arrival.last_total - 1 << " of " << n
              << " records arrived\n";
  }
  return j;
}

// Everything a live_bench invocation reports.
struct Results {
  nlohmann::json runs = nlohmann::json::array();
  nlohmann::json latency = nlohmann::json::array();
  nlohmann::json failures = nlohmann::json::array();
};

// One setting at one rate: its CPU run (with `rs`, that reconciler setting,
// in round `round`), then (--latency) its latency run.
void RunSetting(BenchEnv& env, const PublisherMode& mode, const Variant& v,
                int rate, int run_index, const ReconcileSetting* rs, int round,
                Results& out) {
  const std::string rate_name = rate > 0 ? absl::StrCat(rate) : "max";
  const nlohmann::json what = {{"mode", mode.name},
                               {"variant", v.name},
                               {"rate", rate_name},
                               {"reconcile", rs ? rs->name : ""}};
  auto r = RunOne(env, mode, v, rate, absl::GetFlag(FLAGS_duration), run_index,
                  rs, absl::GetFlag(FLAGS_settle));
  if (!r.ok()) {
    AddFailure(out.failures,
               absl::StrCat(mode.name, " ", v.name, " ", rate_name,
                            rs ? " " + rs->name : ""),
               what, r.status());
    return;
  }
  if (rs != nullptr) (*r)["round"] = round;
  out.runs.push_back(*r);
  if (!absl::GetFlag(FLAGS_latency) || rate <= 0) return;
  auto l =
      RunLatency(env, v, VariantArgs(v), rate, absl::GetFlag(FLAGS_duration),
                 absl::GetFlag(FLAGS_connections),
                 absl::GetFlag(FLAGS_fetch_wait_ms), run_index);
  if (!l.ok()) {
    AddFailure(out.failures,
               absl::StrCat("latency ", mode.name, " ", v.name, " ", rate_name),
               what, l.status());
    return;
  }
  (*l)["variant"] = v.name;
  (*l)["target_rate"] = rate_name;
  std::cerr << l->dump() << "\n";
  out.latency.push_back(*l);
}

int Main(int argc, char** argv) {
  const std::optional<BrokerKind> broker = ParseBenchFlags(argc, argv);
  if (!broker) return kBadFlags;
  const std::optional<ModesAndRates> plan =
      ParseModesAndRates(absl::GetFlag(FLAGS_modes), absl::GetFlag(FLAGS_rates),
                         /*allow_max=*/true);
  if (!plan) return kBadFlags;
  std::optional<std::vector<Variant>> variants =
      ParseVariants(absl::GetFlag(FLAGS_variants));
  if (!variants || variants->empty()) return kBadFlags;
  const bool debezium = absl::GetFlag(FLAGS_debezium);
  if (debezium && (*broker != BrokerKind::kApache ||
                   absl::GetFlag(FLAGS_connect_libs).empty())) {
    std::cerr << "--debezium needs --broker=apache and --connect_libs "
                 "(benchmarks/run-live.sh --vs-debezium sets them)\n";
    return kBadFlags;
  }
  if (debezium) {
    variants->push_back(DebeziumVariant({absl::GetFlag(FLAGS_connect_libs),
                                         absl::GetFlag(FLAGS_connect_log4j),
                                         {}}));
  }
  auto settings = ParseReconcileSettings(absl::GetFlag(FLAGS_reconcile));
  if (!settings.ok()) {
    std::cerr << settings.status().message() << "\n";
    return kBadFlags;
  }
  const bool reconcile = !settings->empty();
  if (reconcile && variants->size() > 1) {
    std::cerr << "--reconcile compares the settings of one variant\n";
    return kBadFlags;
  }
  // (setting, round) of the --reconcile runs; one round of none without.
  const int rounds = reconcile ? std::max(1, absl::GetFlag(FLAGS_repeat)) : 1;
  const std::vector<std::pair<int, int>> order =
      reconcile ? AlternatedOrder(static_cast<int>(settings->size()), rounds)
                : std::vector<std::pair<int, int>>{{-1, 0}};
  const std::string out = absl::GetFlag(FLAGS_out);
  StartedBench bench = StartBench(EnvOptions(
      absl::GetFlag(FLAGS_outboxd), absl::GetFlag(FLAGS_work_dir), *broker));
  if (bench.env == nullptr) return 1;
  BenchEnv* env = bench.env.get();
  Results results;
  int run_index = 0;
  absl::Duration warmup = absl::GetFlag(FLAGS_warmup);
  if (warmup < absl::ZeroDuration()) {
    warmup = *broker == BrokerKind::kApache ? absl::Seconds(10)
                                            : absl::ZeroDuration();
  }
  if (warmup > absl::ZeroDuration()) {
    std::cerr << "== warm-up run, not reported\n";
    (void)RunOne(*env, plan->modes[0], (*variants)[0], plan->rates[0], warmup,
                 run_index++, nullptr, absl::ZeroDuration());
  }
  for (const PublisherMode& mode : plan->modes) {
    for (int rate : plan->rates) {
      for (const auto& [setting, round] : order) {
        const ReconcileSetting* rs =
            setting >= 0 ? &(*settings)[setting] : nullptr;
        for (int rep = 0; rep < absl::GetFlag(FLAGS_reps); ++rep) {
          for (const Variant& v : InRepOrder(*variants, rep)) {
            RunSetting(*env, mode, v, rate, run_index++, rs, round, results);
          }
        }
      }
    }
  }
  const nlohmann::json& runs = results.runs;
  bool all_arrived = true;
  for (const nlohmann::json& r : runs)
    all_arrived &= r["all_arrived"].get<bool>();

  nlohmann::json doc;
  doc["benchmark"] = reconcile ? "reconcile" : "live";
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
       "from the load's start (after --settle of load) until the broker "
       "holds every committed record (sum of the high watermarks, probed "
       "every 20 ms)"},
      {"settle_s", absl::ToDoubleSeconds(absl::GetFlag(FLAGS_settle))},
      {"outboxd_args", absl::GetFlag(FLAGS_outboxd_args)},
      {"variants", absl::GetFlag(FLAGS_variants)},
      {"reps", absl::GetFlag(FLAGS_reps)},
      {"warmup_s", absl::ToDoubleSeconds(warmup)},
      {"cpu_runs",
       "no consumer: the broker's CPU is the produce path's (the latency "
       "runs, --latency, are apart)"},
  };
  if (reconcile) {
    doc["setup"]["order"] = "rounds of the settings, every other reversed";
    doc["summary"] = ReconcileSummary(*settings, runs);
  }
  if (debezium) {
    doc["setup"]["debezium"] =
        "Kafka Connect standalone (file offset store), Debezium's PostgreSQL "
        "connector and Outbox Event Router at their defaults, every record "
        "routed to the run's topic; JVM -Xms256M -Xmx2G G1 "
        "(connect-standalone.sh's); its own slot, like outboxd's";
    doc["vs_debezium"] = VsDebeziumSummary(runs, results.latency);
  }
  doc["runs"] = runs;
  doc["failures"] = results.failures;
  doc["latency"] = results.latency;
  std::string name = absl::GetFlag(FLAGS_stem);
  if (reconcile && name == "live") name = "reconcile";
  const std::string stem = out + "/" + ResultStem(name, *broker);
  const std::string md =
      reconcile
          ? ReconcileMarkdown(env->broker_description(), doc["summary"], runs)
          : LiveMarkdown(env->broker_description(), runs, results.latency,
                         variants->size() > 1);
  const std::string side_by_side =
      debezium ? VsDebeziumMarkdown(doc["vs_debezium"]) : "";
  if (!WriteResults(stem, doc, md + side_by_side)) return 1;
  return results.failures.empty() && all_arrived ? 0 : 1;
}

}  // namespace
}  // namespace outboxd::bench

int main(int argc, char** argv) { return outboxd::bench::Main(argc, argv); }
