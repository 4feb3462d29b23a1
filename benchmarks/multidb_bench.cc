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
//   multidb_bench --databases=20 --rate=1000 --duration=20s --backlog=2000
#include <librdkafka/rdkafka.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "benchmarks/bench_cli.h"
#include "benchmarks/bench_env.h"
#include "benchmarks/bench_kafka.h"
#include "benchmarks/bench_latency.h"
#include "benchmarks/bench_pg.h"
#include "benchmarks/bench_proc.h"
#include "benchmarks/bench_results.h"
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

namespace outboxd::bench {
namespace {

constexpr char kAggregate[] = "order";

// The processes of one setup.
struct Processes {
  std::vector<std::unique_ptr<testing::ChildProcess>> children;
  std::vector<pid_t> pids() const {
    std::vector<pid_t> p;
    for (const auto& c : children) p.push_back(c->pid());
    return p;
  }
  bool AllRunning() const {
    for (const auto& c : children) {
      if (!c->Running()) return false;
    }
    return true;
  }
};

std::string DatabaseName(int i) { return absl::StrCat("d", i); }

std::string SlotBase(const std::string& setup, int round) {
  return absl::StrCat(setup == "one" ? "bench_one" : "bench_perdb", "_r",
                      round);
}

// Slot of database `db` in `setup` (outboxd names it --slot_<db> with
// --databases; the per-database processes get the same names).
std::string SlotName(const std::string& setup, int round,
                     const std::string& db) {
  return absl::StrCat(SlotBase(setup, round), "_", db);
}

// The topic of a setup's round and phase ("steady": the warm-up and steady
// events; "backlog"): one per phase, because the dev broker keeps 5 MB per
// partition (librdkafka's mock cluster drops the oldest message sets beyond
// that), so that a phase's records stay readable to the end.
std::string Topic(const std::string& setup, int round,
                  const std::string& phase) {
  return absl::StrCat("bench.multidb.", setup == "one" ? "one" : "perdb", ".",
                      round, ".", phase);
}

// An independent consumer that reads the setup's topic from the beginning
// on a thread of its own while the setup runs (the dev broker keeps only the
// newest records of a partition, so reading at the end could miss the
// first ones; a gap in the offsets is counted), and tallies each event id
// and whether its outbox.source names the event's database. Events
// [first, first + count) of a phase went to database (id - first) %
// databases.
class ReadBack {
 public:
  struct Phase {
    int64_t first = 0;
    int64_t count = 0;
  };
  static absl::StatusOr<std::unique_ptr<ReadBack>> Start(
      const std::string& bootstrap, std::vector<std::string> topics,
      std::vector<std::string> dbs, std::vector<Phase> phases) {
    std::unique_ptr<ReadBack> r(new ReadBack());
    r->topics_ = std::move(topics);
    r->next_.assign(r->topics_.size(), std::vector<int64_t>(kPartitions, 0));
    r->dbs_ = std::move(dbs);
    r->phases_ = std::move(phases);
    int64_t end = 0;
    for (const Phase& p : r->phases_) end = std::max(end, p.first + p.count);
    r->seen_.assign(end, 0);
    auto rk = NewKafkaHandle(
        RD_KAFKA_CONSUMER,
        {{"bootstrap.servers", bootstrap},
         {"group.id",
          absl::StrCat("multidb-readback-", getpid(), "-", r->topics_[0])},
         {"enable.auto.commit", "false"},
         {"enable.auto.offset.store", "false"},
         // An offset the broker no longer holds: on from the oldest it
         // holds, which counts as a gap.
         {"auto.offset.reset", "earliest"},
         {"fetch.wait.max.ms", "10"}});
    if (!rk.ok()) return rk.status();
    r->rk_ = *rk;
    rd_kafka_topic_partition_list_t* parts =
        rd_kafka_topic_partition_list_new(kPartitions * r->topics_.size());
    for (const std::string& topic : r->topics_) {
      for (int p = 0; p < kPartitions; ++p) {
        rd_kafka_topic_partition_list_add(parts, topic.c_str(), p)->offset =
            RD_KAFKA_OFFSET_BEGINNING;
      }
    }
    rd_kafka_resp_err_t err = rd_kafka_assign(r->rk_, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      return absl::UnavailableError(
          absl::StrCat("assign: ", rd_kafka_err2str(err)));
    }
    r->thread_ = std::thread([p = r.get()] { p->Loop(); });
    return r;
  }
  ~ReadBack() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    if (rk_ != nullptr) {
      rd_kafka_consumer_close(rk_);
      rd_kafka_destroy(rk_);
    }
  }

  // Waits until every record the topic holds now has been read; false after
  // `timeout`.
  bool CatchUp(absl::Duration timeout) {
    std::vector<std::vector<int64_t>> high(
        topics_.size(), std::vector<int64_t>(kPartitions, 0));
    for (size_t t = 0; t < topics_.size(); ++t) {
      for (int p = 0; p < kPartitions; ++p) {
        int64_t lo = 0;
        if (rd_kafka_query_watermark_offsets(rk_, topics_[t].c_str(), p, &lo,
                                             &high[t][p], 10000) !=
            RD_KAFKA_RESP_ERR_NO_ERROR) {
          return false;
        }
      }
    }
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      bool all = true;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (size_t t = 0; t < topics_.size(); ++t) {
          for (int p = 0; p < kPartitions; ++p)
            all &= next_[t][p] >= high[t][p];
        }
      }
      if (all) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

  // After CatchUp: lost and duplicated events per phase and database.
  nlohmann::json Result() {
    std::lock_guard<std::mutex> lock(mu_);
    const int ndb = static_cast<int>(dbs_.size());
    nlohmann::json phases = nlohmann::json::array();
    for (const Phase& ph : phases_) {
      std::vector<int64_t> lost(ndb, 0), dups(ndb, 0);
      int64_t lost_total = 0, dups_total = 0;
      for (int64_t id = ph.first; id < ph.first + ph.count; ++id) {
        const int d = static_cast<int>((id - ph.first) % ndb);
        if (seen_[id] == 0) ++lost[d], ++lost_total;
        if (seen_[id] > 1)
          dups[d] += seen_[id] - 1, dups_total += seen_[id] - 1;
      }
      phases.push_back({{"written", ph.count},
                        {"lost", lost_total},
                        {"duplicates", dups_total},
                        {"lost_per_database", lost},
                        {"duplicates_per_database", dups}});
    }
    return {{"records_read", records_},      {"offset_gaps", gaps_},
            {"warmups", warmups_},           {"unknown_ids", unknown_},
            {"wrong_source", wrong_source_}, {"phases", phases}};
  }

 private:
  ReadBack() = default;

  // The database index of event `id`; -1 when no phase holds it.
  int DatabaseOf(int64_t id) const {
    for (const Phase& ph : phases_) {
      if (id >= ph.first && id < ph.first + ph.count) {
        return static_cast<int>((id - ph.first) %
                                static_cast<int64_t>(dbs_.size()));
      }
    }
    return -1;
  }

  void Loop() {
    while (!stop_) {
      rd_kafka_message_t* m = rd_kafka_consumer_poll(rk_, 100);
      if (m == nullptr) continue;
      if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) Count(*m);
      rd_kafka_message_destroy(m);
    }
  }

  void Count(const rd_kafka_message_t& m) {
    const int64_t id = ParseBenchId(static_cast<const char*>(m.payload),
                                    m.payload == nullptr ? 0 : m.len);
    std::string source;
    rd_kafka_headers_t* headers = nullptr;
    const void* value = nullptr;
    size_t size = 0;
    if (rd_kafka_message_headers(&m, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR &&
        rd_kafka_header_get_last(headers, "outbox.source", &value, &size) ==
            RD_KAFKA_RESP_ERR_NO_ERROR) {
      source.assign(static_cast<const char*>(value), size);
    }
    const std::string topic = rd_kafka_topic_name(m.rkt);
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t t = 0; t < topics_.size(); ++t) {
      if (topics_[t] != topic || m.partition < 0 ||
          m.partition >= kPartitions) {
        continue;
      }
      std::vector<int64_t>& next = next_[t];
      if (m.offset > next[m.partition]) gaps_ += m.offset - next[m.partition];
      next[m.partition] = m.offset + 1;
    }
    ++records_;
    if (id < 0) {
      ++warmups_;
      return;
    }
    const int d = DatabaseOf(id);
    if (d < 0) {
      ++unknown_;
      return;
    }
    ++seen_[id];
    if (source.find(absl::StrCat("/", dbs_[d], "/")) == std::string::npos &&
        ++wrong_source_ <= 3) {
      std::cerr << "event " << id << " of " << dbs_[d] << " has outbox.source '"
                << source << "'\n";
    }
  }

  std::vector<std::string> topics_;
  std::vector<std::string> dbs_;
  std::vector<Phase> phases_;
  rd_kafka_t* rk_ = nullptr;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::vector<int> seen_;                   // per event id: times read
  std::vector<std::vector<int64_t>> next_;  // [topic][partition]
  int64_t records_ = 0, gaps_ = 0, warmups_ = 0, unknown_ = 0;
  int64_t wrong_source_ = 0;
};

// --- one setup -------------------------------------------------------------

class Run {
 public:
  Run(BenchEnv& env, std::string setup, int round, std::vector<std::string> dbs)
      : env_(env),
        setup_(std::move(setup)),
        round_(round),
        dbs_(std::move(dbs)) {}

  absl::StatusOr<nlohmann::json> Go();

 private:
  absl::StatusOr<Processes> Start(const std::string& phase);
  void Stop(Processes& p, nlohmann::json& out);
  // Nanoseconds (NowNs) when every slot of the setup is active; aborted
  // when `alive()` turns false.
  absl::StatusOr<int64_t> WaitAllActive(PgConn& admin,
                                        const std::function<bool()>& alive);
  // Connections of the publisher's role: {walsenders, all}.
  std::pair<int, int> Connections(PgConn& admin);
  absl::Status WriteSteady(int64_t first_id, int64_t events, nlohmann::json&);
  absl::Status WriteBacklog(int64_t first_id, nlohmann::json&);
  BenchEnv& env_;
  const std::string setup_;
  const int round_;
  const std::vector<std::string> dbs_;
  std::vector<std::unique_ptr<PgConn>> conns_;  // one per database
};

absl::StatusOr<Processes> Run::Start(const std::string& phase) {
  std::vector<std::string> common = {
      absl::StrCat("--topic=", Topic(setup_, round_, phase)),
      absl::StrCat("--metrics-address=",
                   absl::GetFlag(FLAGS_metrics) ? "127.0.0.1:0" : ""),
      "--log-level=info"};
  for (const std::string& a : absl::GetFlag(FLAGS_outboxd_args)) {
    common.push_back(a);
  }
  Processes p;
  if (setup_ == "one") {
    std::vector<std::string> args = common;
    args.push_back(absl::StrCat("--databases=", absl::StrJoin(dbs_, ",")));
    args.push_back(absl::StrCat("--slot=", SlotBase(setup_, round_)));
    auto child = env_.StartOutboxd(
        args, absl::StrCat("outboxd-multidb-one-r", round_, "-", phase));
    if (!child.ok()) return child.status();
    p.children.push_back(*std::move(child));
    return p;
  }
  for (const std::string& db : dbs_) {
    std::vector<std::string> args = common;
    args.push_back(absl::StrCat("--slot=", SlotName(setup_, round_, db)));
    auto child = env_.StartOutboxdOn(
        db, args,
        absl::StrCat("outboxd-multidb-perdb-r", round_, "-", db, "-", phase));
    if (!child.ok()) return child.status();
    p.children.push_back(*std::move(child));
  }
  return p;
}

void Run::Stop(Processes& p, nlohmann::json& out) {
  for (auto& c : p.children) c->Signal(SIGTERM);
  std::vector<int> codes;
  for (auto& c : p.children) {
    std::optional<int> code = c->Wait(absl::Seconds(30));
    codes.push_back(code.value_or(-1));
  }
  out["exit_codes"] = codes;
}

absl::StatusOr<int64_t> Run::WaitAllActive(PgConn& admin,
                                           const std::function<bool()>& alive) {
  std::vector<std::string> quoted;
  for (const std::string& db : dbs_) {
    quoted.push_back(absl::StrCat("'", SlotName(setup_, round_, db), "'"));
  }
  const std::string sql = absl::StrCat(
      "SELECT count(*) FROM pg_replication_slots WHERE active AND slot_name "
      "IN (",
      absl::StrJoin(quoted, ","), ")");
  const std::string want = absl::StrCat(dbs_.size());
  const absl::Time deadline = absl::Now() + absl::Seconds(120);
  while (absl::Now() < deadline) {
    auto v = admin.Query(sql);
    if (!v.ok()) return v.status();
    if (*v == want) return NowNs();
    if (!alive()) {
      return absl::AbortedError(
          absl::StrCat("an outboxd exited (logs in ", env_.work_dir(), ")"));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError("not every slot active within 120 s");
}

std::pair<int, int> Run::Connections(PgConn& admin) {
  auto v = admin.Query(absl::StrCat(
      "SELECT count(*) FILTER (WHERE backend_type = 'walsender') || ' ' || "
      "count(*) FROM pg_stat_activity WHERE usename = '",
      kPublisherRole, "'"));
  std::pair<int, int> c{0, 0};
  if (!v.ok()) return c;
  const size_t space = v->find(' ');
  if (space == std::string::npos) return c;
  (void)absl::SimpleAtoi(v->substr(0, space), &c.first);
  (void)absl::SimpleAtoi(v->substr(space + 1), &c.second);
  return c;
}

absl::Status Run::WriteSteady(int64_t first_id, int64_t events,
                              nlohmann::json& out) {
  const int ndb = static_cast<int>(dbs_.size());
  int threads = std::max(1, absl::GetFlag(FLAGS_writer_threads));
  while (ndb % threads != 0) --threads;  // a database belongs to one thread
  const int rate = absl::GetFlag(FLAGS_rate);
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
  const int per_db = absl::GetFlag(FLAGS_backlog);
  const int batch = std::max(1, absl::GetFlag(FLAGS_backlog_batch));
  int threads = std::max(1, absl::GetFlag(FLAGS_writer_threads));
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
      absl::ToDoubleSeconds(absl::GetFlag(FLAGS_duration)) *
      absl::GetFlag(FLAGS_rate));
  const int64_t backlog_first = steady_events;
  const int64_t backlog_events =
      static_cast<int64_t>(absl::GetFlag(FLAGS_backlog)) * ndb;
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
  auto procs = Start("steady");
  if (!procs.ok()) return procs.status();
  auto alive = [&procs] { return procs->AllRunning(); };
  auto active = WaitAllActive(**admin, alive);
  if (!active.ok()) return active.status();
  j["start"] = {{"all_slots_active_s", (*active - exec_ns) / 1e9},
                {"slots_created", true}};
  for (int d = 0; d < ndb; ++d) {
    s = conns_[d]->Exec(absl::StrCat(
        "INSERT INTO public.outbox (aggregatetype, aggregateid, type, "
        "payload) VALUES ('",
        kAggregate, "', 'warmup', 'Warmup', '", EventPayload(-1), "')"));
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
    absl::SleepFor(absl::GetFlag(FLAGS_idle));
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
  steady["rate"] = absl::GetFlag(FLAGS_rate);
  steady["events"] = steady_events;
  const ProcessTotals before = Totals(pids);
  const double pg_before = ClusterCpuSeconds(env_.postmaster_pid());
  const int64_t t0 = NowNs();
  RssSampler rss(pids);
  ProcessTotals mid;
  std::pair<int, int> connections{0, 0};
  std::thread midpoint([&] {
    absl::SleepFor(absl::GetFlag(FLAGS_duration) / 2);
    mid = Totals(pids);
    auto c = PgConn::Connect(env_.AdminConnInfo());
    if (c.ok()) connections = Connections(**c);
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
      arrival.done_ns != 0
          ? (arrival.done_ns - t0) / 1e9 -
                absl::ToDoubleSeconds(absl::GetFlag(FLAGS_duration))
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
  Stop(*procs, j["steady"]);

  // --- backlog, drained by a restart ---
  nlohmann::json backlog;
  s = WriteBacklog(backlog_first, backlog);
  if (!s.ok()) return s;
  const int64_t target = backlog_events;
  const double pg_before_backlog = ClusterCpuSeconds(env_.postmaster_pid());
  const int64_t restart_ns = NowNs();
  auto again = Start("backlog");
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
    active2 = WaitAllActive(**watcher, [&counting] { return counting.load(); });
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
  backlog["batch"] = absl::GetFlag(FLAGS_backlog_batch);
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
  Stop(*again, j["backlog"]);

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
  for (const std::string& db : dbs_)
    env_.DropSlot(SlotName(setup_, round_, db));
  return j;
}

// --- output ----------------------------------------------------------------

// How a row of the table combines the rounds.
enum RowKind {
  kRatio,  // median per setup, and the ratio per-db / one
  kNone,   // median per setup, no ratio
  kSum,    // sum over the rounds (losses, duplicates)
};

struct Row {
  std::string label;
  std::vector<std::string> path;  // into a run's json
  const char* format;             // for one value
  RowKind kind = kRatio;
};

const nlohmann::json* At(const nlohmann::json& j,
                         const std::vector<std::string>& path) {
  const nlohmann::json* p = &j;
  for (const std::string& k : path) {
    if (!p->is_object() || !p->contains(k)) return nullptr;
    p = &(*p)[k];
  }
  return p;
}

double Value(const nlohmann::json& run, const Row& row) {
  const nlohmann::json* v = At(run, row.path);
  return v != nullptr && v->is_number() ? v->get<double>() : 0.0;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// The table: per setup the median of its rounds (losses: the sum), and the
// ratio of the medians with the range of the per-round ratios.
std::string Markdown(const std::string& broker, const nlohmann::json& runs,
                     const std::vector<std::string>& setups, int ndb,
                     int rounds) {
  std::string md = absl::StrCat(
      ndb, " databases on one server, broker: ", broker, "; ", rounds,
      rounds == 1 ? " round" : " rounds, setups alternating",
      rounds == 1 ? "" : ", median of the rounds (losses: sum)", "\n\n");
  const std::vector<Row> rows = {
      {"processes", {"processes"}, "%.0f", kNone},
      {"start: all slots active, s (slots created)",
       {"start", "all_slots_active_s"},
       "%.2f"},
      {"start: warm-up event of every database in the broker, s",
       {"start", "all_warmups_in_broker_s"},
       "%.2f"},
      {"idle: outboxd cores (no events)", {"idle", "cores"}, "%.4f"},
      {"idle: context switches/s", {"idle", "context_switches_per_s"}, "%.0f"},
      {"steady: committed events/s",
       {"steady", "committed_per_s"},
       "%.0f",
       kNone},
      {"steady: events lost", {"read_back", "steady", "lost"}, "%.0f", kSum},
      {"steady: duplicates",
       {"read_back", "steady", "duplicates"},
       "%.0f",
       kSum},
      {"steady: outboxd CPU s", {"steady", "outboxd", "cpu_s"}, "%.2f"},
      {"steady: outboxd CPU s per 1,000 events",
       {"steady", "outboxd", "cpu_s_per_1000_events"},
       "%.3f"},
      {"steady: outboxd cores", {"steady", "outboxd", "cores"}, "%.3f"},
      {"steady: context switches/s",
       {"steady", "outboxd", "context_switches_per_s"},
       "%.0f"},
      {"steady: RSS MB (mean VmRSS)",
       {"steady", "outboxd", "rss_mean_mb"},
       "%.1f"},
      {"steady: peak RSS MB (VmHWM)", {"steady", "outboxd", "hwm_mb"}, "%.1f"},
      {"threads", {"steady", "outboxd", "threads"}, "%.0f"},
      {"librdkafka threads", {"steady", "outboxd", "rdkafka_threads"}, "%.0f"},
      {"PostgreSQL connections of outboxd",
       {"steady", "outboxd", "pg_connections"},
       "%.0f"},
      {"... of which walsenders",
       {"steady", "outboxd", "pg_walsenders"},
       "%.0f"},
      {"steady: PostgreSQL cores", {"steady", "postgres_cores"}, "%.2f"},
      {"backlog: events lost", {"read_back", "backlog", "lost"}, "%.0f", kSum},
      {"backlog: duplicates",
       {"read_back", "backlog", "duplicates"},
       "%.0f",
       kSum},
      {"records with another database's outbox.source",
       {"read_back", "wrong_source"},
       "%.0f",
       kSum},
      {"records the read-back missed (offset gaps)",
       {"read_back", "offset_gaps"},
       "%.0f",
       kSum},
      {"backlog: restart to all slots active, s",
       {"backlog", "all_slots_active_s"},
       "%.2f"},
      {"backlog: restart to all records in the broker, s",
       {"backlog", "drain_s"},
       "%.2f"},
      {"backlog: events/s (restart included)",
       {"backlog", "events_per_s"},
       "%.0f"},
      {"backlog: outboxd CPU s (start included)",
       {"backlog", "outboxd", "cpu_s"},
       "%.2f"},
      {"backlog: outboxd CPU s per 1,000 events",
       {"backlog", "outboxd", "cpu_s_per_1000_events"},
       "%.3f"},
      {"backlog: peak RSS MB (VmHWM)",
       {"backlog", "outboxd", "hwm_mb"},
       "%.1f"},
  };
  // runs per setup, in round order.
  std::map<std::string, std::vector<const nlohmann::json*>> by_setup;
  for (const nlohmann::json& r : runs) {
    by_setup[r["setup"].get<std::string>()].push_back(&r);
  }
  md += "| |";
  std::string sep = "|---|";
  for (const std::string& setup : setups) {
    absl::StrAppend(&md, " ",
                    setup == "one" ? "one outboxd (--databases)"
                                   : absl::StrCat(ndb, " outboxd processes"),
                    " |");
    sep += "---:|";
  }
  const bool ratio = by_setup["one"].size() > 0 &&
                     by_setup["per-db"].size() > 0 && setups.size() == 2;
  if (ratio) {
    md += " processes / one |";
    sep += "---:|";
  }
  md += "\n" + sep + "\n";
  for (const Row& row : rows) {
    absl::StrAppend(&md, "| ", row.label, " |");
    std::map<std::string, double> combined;
    for (const std::string& setup : setups) {
      std::vector<double> values;
      for (const nlohmann::json* r : by_setup[setup]) {
        values.push_back(Value(*r, row));
      }
      double v = 0;
      if (row.kind == kSum) {
        for (double x : values) v += x;
      } else {
        v = Median(values);
      }
      combined[setup] = v;
      absl::StrAppend(&md, " ",
                      values.empty() ? "-" : FormatDouble(row.format, v), " |");
    }
    if (ratio) {
      if (row.kind == kRatio && combined["one"] > 0) {
        absl::StrAppend(
            &md, " ",
            FormatDouble("%.1f x", combined["per-db"] / combined["one"]));
        // The range of the ratios of the rounds that ran both setups.
        std::vector<double> per_round;
        const auto& one = by_setup["one"];
        const auto& per = by_setup["per-db"];
        for (size_t i = 0; i < std::min(one.size(), per.size()); ++i) {
          const double o = Value(*one[i], row);
          if (o > 0) per_round.push_back(Value(*per[i], row) / o);
        }
        if (per_round.size() > 1) {
          std::sort(per_round.begin(), per_round.end());
          absl::StrAppend(&md, " (", FormatDouble("%.1f", per_round.front()),
                          "-", FormatDouble("%.1f", per_round.back()), ")");
        }
        md += " |";
      } else {
        md += " |";
      }
    }
    md += "\n";
  }
  return md;
}

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

  BenchEnvOptions options;
  options.outboxd_binary = absl::GetFlag(FLAGS_outboxd);
  options.work_dir = absl::GetFlag(FLAGS_work_dir);
  options.broker = *broker;
  // Per database: a walsender and the setup's connections, per process in
  // the per-db setup; and the writers' connections.
  options.pg_settings = {absl::StrCat("max_connections=", 50 + 6 * ndb),
                         absl::StrCat("max_wal_senders=", 10 + 2 * ndb),
                         absl::StrCat("max_replication_slots=", 10 + 2 * ndb)};
  StartedBench bench = StartBench(options);
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

  nlohmann::json runs = nlohmann::json::array();
  nlohmann::json failures = nlohmann::json::array();
  bool nothing_lost = true;
  const int rounds = std::max(1, absl::GetFlag(FLAGS_rounds));
  for (int round = 0; round < rounds; ++round) {
    for (const std::string& setup : absl::GetFlag(FLAGS_setups)) {
      Run run(e, setup, round, dbs);
      auto r = run.Go();
      if (!r.ok()) {
        std::cerr << setup << ": " << r.status() << "\n";
        failures.push_back({{"setup", setup},
                            {"round", round},
                            {"error", std::string(r.status().message())}});
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
      {"postgres",
       "15, fsync=off, synchronous_commit=on, throwaway cluster, databases "
       "d0.. each with sql/outbox.sql"},
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
}  // namespace outboxd::bench

int main(int argc, char** argv) { return outboxd::bench::Main(argc, argv); }
