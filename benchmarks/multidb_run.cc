#include "benchmarks/multidb_run.h"

#include <algorithm>
#include <atomic>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "benchmarks/bench_kafka.h"
#include "benchmarks/bench_proc.h"
#include "benchmarks/bench_results.h"
#include "benchmarks/multidb_readback.h"

namespace outboxd::bench::multidb {
namespace {

constexpr char kAggregate[] = "order";

}  // namespace

absl::Status Run::WriteSteady(int64_t first_id, int64_t events,
                              nlohmann::json& out) {
  const int ndb = static_cast<int>(dbs_.size());
  int threads = std::max(1, options_.writer_threads);
  while (ndb % threads != 0) --threads;  // a database belongs to one thread
  const int rate = options_.rate;
  const double step_ns = 1e9 / rate;
  const int64_t t0 = NowNs() + 20000000;
  std::atomic<int64_t> errors{0};
  std::atomic<int64_t> committed{0};
  std::atomic<int64_t> max_slip{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int64_t i = t; i < events; i += threads) {
        const int64_t due = t0 + static_cast<int64_t>(i * step_ns);
        const int64_t now = NowNs();
        if (now < due) {
          SleepUntilNs(due);
        } else if (now - due > max_slip.load()) {
          max_slip = now - due;
        }
        absl::Status s =
            conns_[i % ndb]->Exec(OneEventTransactionSql(first_id + i));
        if (!s.ok()) {
          if (errors.fetch_add(1) < 3) std::cerr << s << "\n";
          (void)conns_[i % ndb]->Exec("ROLLBACK");
          continue;
        }
        ++committed;
      }
    });
  }
  for (auto& th : pool) th.join();
  out["committed"] = committed.load();
  out["commit_errors"] = errors.load();
  out["committed_per_s"] = EventsPerSecond(committed.load(), NowNs() - t0);
  out["max_slip_ms"] = max_slip.load() / 1e6;
  if (errors.load() > 0) {
    return absl::InternalError(
        absl::StrCat(errors.load(), " steady commits failed"));
  }
  return absl::OkStatus();
}

absl::Status Run::WriteBacklog(int64_t first_id, nlohmann::json& out) {
  const int ndb = static_cast<int>(dbs_.size());
  const int per_db = options_.backlog;
  const int batch = std::max(1, options_.backlog_batch);
  int threads = std::max(1, options_.writer_threads);
  while (ndb % threads != 0) --threads;
  std::atomic<int64_t> errors{0};
  const int64_t t0 = NowNs();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int d = t; d < ndb; d += threads) {
        for (int k = 0; k < per_db; k += batch) {
          std::string sql =
              "INSERT INTO public.outbox (aggregatetype, aggregateid, type, "
              "payload) VALUES ";
          for (int j = k; j < std::min(per_db, k + batch); ++j) {
            // Event j of database d: id first_id + j * ndb + d.
            const int64_t id = first_id + static_cast<int64_t>(j) * ndb + d;
            absl::StrAppend(&sql, j > k ? "," : "", "('", kAggregate,
                            "', 'order-", 1000000 + id % 5000,
                            "', 'OrderCreated', '", EventPayload(id), "')");
          }
          absl::Status s = conns_[d]->Exec(sql);
          if (!s.ok() && errors.fetch_add(1) < 3) std::cerr << s << "\n";
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  out["written"] = static_cast<int64_t>(per_db) * ndb;
  out["write_s"] = (NowNs() - t0) / 1e9;
  if (errors.load() > 0) {
    return absl::InternalError(
        absl::StrCat(errors.load(), " backlog transactions failed"));
  }
  return absl::OkStatus();
}

absl::StatusOr<nlohmann::json> Run::Go() {
  const int ndb = static_cast<int>(dbs_.size());
  const std::string topic = Topic(setup_, round_, "steady");
  const std::string backlog_topic = Topic(setup_, round_, "backlog");
  std::cerr << "== round " << round_ << ", " << setup_ << ": " << ndb
            << " databases\n";
  absl::Status s = env_.CreateTopic(topic);
  if (s.ok()) s = env_.CreateTopic(backlog_topic);
  if (!s.ok()) return s;
  auto probe = WatermarkProbe::Create(env_.bootstrap());
  if (!probe.ok()) return probe.status();
  auto admin = PgConn::Connect(env_.AdminConnInfo());
  if (!admin.ok()) return admin.status();
  conns_.clear();
  for (const std::string& db : dbs_) {
    auto c = PgConn::Connect(env_.pg().ConnInfo(db));
    if (!c.ok()) return c.status();
    conns_.push_back(*std::move(c));
  }
  const int64_t steady_events = static_cast<int64_t>(
      absl::ToDoubleSeconds(options_.duration) * options_.rate);
  const int64_t backlog_first = steady_events;
  const int64_t backlog_events = static_cast<int64_t>(options_.backlog) * ndb;
  auto read =
      ReadBack::Start(env_.bootstrap(), {topic, backlog_topic}, dbs_,
                      {{0, steady_events}, {backlog_first, backlog_events}});
  if (!read.ok()) return read.status();
  nlohmann::json j;
  j["setup"] = setup_;
  j["round"] = round_;
  j["processes"] = setup_ == "one" ? 1 : ndb;

  // --- start on new slots, warm-up ---
  const int64_t exec_ns = NowNs();
  auto procs = fleet_.Start("steady");
  if (!procs.ok()) return procs.status();
  auto alive = [&procs] { return procs->AllRunning(); };
  auto active = fleet_.WaitAllActive(**admin, alive);
  if (!active.ok()) return active.status();
  j["start"] = {{"all_slots_active_s", (*active - exec_ns) / 1e9},
                {"slots_created", true}};
  for (int d = 0; d < ndb; ++d) {
    s = conns_[d]->Exec(WarmupEventSql(kAggregate));
    if (!s.ok()) return s;
  }
  RecordArrival warm = WaitForRecords(**probe, topic, kPartitions, ndb,
                                      absl::Seconds(60), alive);
  if (warm.done_ns == 0) {
    return absl::DeadlineExceededError(
        absl::StrCat("warm-up: ", warm.last_total, " of ", ndb,
                     " records (logs in ", env_.work_dir(), ")"));
  }
  j["start"]["all_warmups_in_broker_s"] = (warm.done_ns - exec_ns) / 1e9;
  absl::SleepFor(absl::Milliseconds(500));

  // --- idle: every stream connected, no events ---
  const std::vector<pid_t> pids = procs->pids();
  {
    const ProcessTotals a = Totals(pids);
    const int64_t i0 = NowNs();
    absl::SleepFor(options_.idle);
    const ProcessTotals b = Totals(pids);
    const double idle_s = (NowNs() - i0) / 1e9;
    j["idle"] = {{"seconds", idle_s},
                 {"cpu_s", b.cpu_s - a.cpu_s},
                 {"cores", (b.cpu_s - a.cpu_s) / idle_s},
                 {"context_switches_per_s", (b.switches - a.switches) / idle_s},
                 {"rss_mb", Mb(b.rss)}};
  }

  // --- steady ---
  nlohmann::json steady;
  steady["rate"] = options_.rate;
  steady["events"] = steady_events;
  const ProcessTotals before = Totals(pids);
  const double pg_before = ClusterCpuSeconds(env_.postmaster_pid());
  const int64_t t0 = NowNs();
  RssSampler rss(pids);
  ProcessTotals mid;
  std::pair<int, int> connections{0, 0};
  std::thread midpoint([&] {
    absl::SleepFor(options_.duration / 2);
    mid = Totals(pids);
    auto c = PgConn::Connect(env_.AdminConnInfo());
    if (c.ok()) connections = PublisherConnections(**c);
  });
  s = WriteSteady(0, steady_events, steady);
  midpoint.join();
  if (!s.ok()) return s;
  RecordArrival arrival =
      WaitForRecords(**probe, topic, kPartitions, ndb + steady_events,
                     absl::Minutes(2), alive);
  rss.Stop();
  const ProcessTotals after = Totals(pids);
  const double pg_after = ClusterCpuSeconds(env_.postmaster_pid());
  const double window_s = (NowNs() - t0) / 1e9;
  const double cpu = after.cpu_s - before.cpu_s;
  steady["all_arrived"] = arrival.done_ns != 0;
  steady["records_in_broker"] = arrival.last_total - ndb;
  steady["window_s"] = window_s;
  steady["load_end_to_all_arrived_s"] =
      arrival.done_ns != 0 ? (arrival.done_ns - t0) / 1e9 -
                                 absl::ToDoubleSeconds(options_.duration)
                           : -1.0;
  steady["outboxd"] = {
      {"cpu_s", cpu},
      {"cpu_s_per_1000_events",
       cpu * 1000 / std::max<int64_t>(1, steady_events)},
      {"cores", cpu / window_s},
      {"context_switches_per_s", (after.switches - before.switches) / window_s},
      {"rss_mean_mb", Mb(rss.mean())},
      {"rss_max_mb", Mb(rss.max())},
      {"hwm_mb", Mb(after.hwm)},
      {"threads", mid.threads},
      {"rdkafka_threads", mid.rdkafka_threads},
      {"pg_connections", connections.second},
      {"pg_walsenders", connections.first}};
  steady["postgres_cpu_s"] = pg_after - pg_before;
  steady["postgres_cores"] = (pg_after - pg_before) / window_s;
  j["steady"] = steady;
  std::cerr << "steady: " << steady.dump() << "\n";
  Fleet::Stop(*procs, j["steady"]);

  // --- backlog, drained by a restart ---
  nlohmann::json backlog;
  s = WriteBacklog(backlog_first, backlog);
  if (!s.ok()) return s;
  const int64_t target = backlog_events;
  const double pg_before_backlog = ClusterCpuSeconds(env_.postmaster_pid());
  const int64_t restart_ns = NowNs();
  auto again = fleet_.Start("backlog");
  if (!again.ok()) return again.status();
  const std::vector<pid_t> pids2 = again->pids();
  RssSampler rss2(pids2);
  // The slots are watched on a connection and thread of their own while the
  // records are counted: the backlog may be in the broker before the last
  // slot is seen active.
  auto watcher = PgConn::Connect(env_.AdminConnInfo());
  if (!watcher.ok()) return watcher.status();
  // Only this thread reaps the children (ChildProcess is not thread-safe);
  // the watcher stops when the count gave up.
  std::atomic<bool> counting{true};
  absl::StatusOr<int64_t> active2 = absl::UnknownError("not watched");
  std::thread watch([&] {
    active2 = fleet_.WaitAllActive(**watcher,
                                   [&counting] { return counting.load(); });
  });
  auto alive2 = [&again] { return again->AllRunning(); };
  RecordArrival drained = WaitForRecords(**probe, backlog_topic, kPartitions,
                                         target, absl::Minutes(3), alive2);
  if (drained.done_ns == 0) counting = false;
  watch.join();
  rss2.Stop();
  if (!active2.ok()) return active2.status();
  const ProcessTotals end = Totals(pids2);
  const double pg_after_backlog = ClusterCpuSeconds(env_.postmaster_pid());
  const double drain_s =
      drained.done_ns != 0 ? (drained.done_ns - restart_ns) / 1e9 : -1.0;
  backlog["events"] = backlog_events;
  backlog["batch"] = options_.backlog_batch;
  backlog["all_arrived"] = drained.done_ns != 0;
  backlog["all_slots_active_s"] = (*active2 - restart_ns) / 1e9;
  backlog["drain_s"] = drain_s;
  backlog["events_per_s"] = drain_s > 0 ? backlog_events / drain_s : 0.0;
  backlog["outboxd"] = {
      {"cpu_s", end.cpu_s},
      {"cpu_s_per_1000_events",
       end.cpu_s * 1000 / std::max<int64_t>(1, backlog_events)},
      {"rss_max_mb", Mb(rss2.max())},
      {"hwm_mb", Mb(end.hwm)}};
  backlog["postgres_cpu_s"] = pg_after_backlog - pg_before_backlog;
  j["backlog"] = backlog;
  std::cerr << "backlog: " << backlog.dump() << "\n";
  Fleet::Stop(*again, j["backlog"]);

  // --- read back ---
  const bool caught_up = (*read)->CatchUp(absl::Seconds(60));
  nlohmann::json rb = (*read)->Result();
  rb["caught_up"] = caught_up;
  rb["steady"] = rb["phases"][0];
  rb["backlog"] = rb["phases"][1];
  rb.erase("phases");
  j["read_back"] = rb;
  std::cerr << "read back: lost " << rb["steady"]["lost"] << " + "
            << rb["backlog"]["lost"] << ", duplicates "
            << rb["steady"]["duplicates"] << " + "
            << rb["backlog"]["duplicates"] << ", offset gaps "
            << rb["offset_gaps"] << "\n";
  fleet_.DropSlots();
  return j;
}

}  // namespace outboxd::bench::multidb
