#include "benchmarks/vs_debezium_throughput.h"

#include <iostream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "benchmarks/bench_kafka.h"
#include "benchmarks/bench_pg.h"
#include "benchmarks/bench_proc.h"
#include "benchmarks/bench_results.h"
#include "benchmarks/live_extras.h"

namespace outboxd::bench::vs_debezium {
namespace {

constexpr char kThroughputType[] = "throughput";

// Pure SQL backlog: `rows` rows, 100 per transaction, ~100-byte jsonb
// payloads, 1,000 keys.
std::string BacklogSql(int64_t rows) {
  return absl::StrCat(
      "DO $$ BEGIN FOR b IN 0..", (rows + 99) / 100 - 1,
      " LOOP INSERT INTO public.outbox (aggregatetype, aggregateid, type, "
      "payload) SELECT '",
      kThroughputType,
      "', 'customer-' || (i % 1000), 'OrderCreated', "
      "jsonb_build_object('n', i, 'sku', 'SKU-' || (100000 + i % 900000), "
      "'qty', i % 9 + 1, 'total', 1999, 'currency', 'EUR', 'customer', "
      "'c-' || (i % 1000)) FROM generate_series(b * 100, least(b * 100 + 99, ",
      rows - 1, ")) i; COMMIT; END LOOP; END $$");
}

absl::StatusOr<bool> SlotConfirmedPast(BenchEnv& env, const std::string& slot,
                                       const std::string& lsn) {
  auto v = env.pg().Query(
      "postgres",
      absl::StrCat("SELECT coalesce(confirmed_flush_lsn >= '", lsn,
                   "'::pg_lsn, false) FROM pg_replication_slots WHERE "
                   "slot_name = '",
                   slot, "'"));
  if (!v.ok()) return v.status();
  return *v == "t";
}

std::string SlotConfirmed(BenchEnv& env, const std::string& slot) {
  return env.pg()
      .Query("postgres",
             absl::StrCat("SELECT confirmed_flush_lsn FROM "
                          "pg_replication_slots WHERE slot_name = '",
                          slot, "'"))
      .value_or("?");
}

absl::StatusOr<nlohmann::json> RunPublisherBacklog(
    BenchEnv& env, const RigOptions& rig, const PublisherKind& p,
    const std::string& slot, int64_t events, const std::string& end_lsn,
    absl::Duration run_timeout, pid_t broker_pid) {
  std::cerr << "== throughput: " << p.name << "\n";
  nlohmann::json j;
  j["run"] = p.name;
  j["load_before"] = LoadAverages();
  const std::string topic = absl::StrCat(p.topic_prefix, kThroughputType);
  const std::string log = absl::StrCat("throughput-", p.name);
  auto probe = WatermarkProbe::Create(env.bootstrap());
  if (!probe.ok()) return probe.status();
  double pg_cpu0 = ClusterCpuSeconds(env.postmaster_pid());
  const double broker_cpu0 = ProcessCpuSeconds(broker_pid);
  nlohmann::json settings;
  const int64_t t0 = NowNs();
  auto child = StartPublisher(env, rig, p, slot, log, &settings);
  if (!child.ok()) return child.status();
  j["settings"] = settings;
  const pid_t pid = (*child)->pid();
  testing::ChildProcess& publisher = **child;
  const RecordArrival arrival =
      WaitForRecords(**probe, topic, kPartitions, events, run_timeout,
                     [&publisher] { return publisher.Running(); });
  const int64_t first = arrival.first_ns, done = arrival.done_ns;
  const double cpu = ProcessCpuSeconds(pid);
  const int64_t rss = PeakRssBytes(pid);
  if (broker_pid > 0) {
    const double broker = ProcessCpuSeconds(broker_pid) - broker_cpu0;
    j["broker_cpu_s"] = broker;
    j["broker_cpu_us_per_event"] = broker * 1e6 / events;
  }
  j["records"] = arrival.last_total;
  if (done == 0) {
    j["error"] = absl::StrCat("only ", arrival.last_total, " of ", events,
                              " records within the run timeout");
    j["cpu_s"] = ProcessCpuSeconds(pid);
    j["peak_rss_mb"] = Mb(PeakRssBytes(pid));
    (void)StopPublisher(**child);
    env.DropSlot(slot);
    return j;
  }
  const double pg_cpu = ClusterCpuSeconds(env.postmaster_pid()) - pg_cpu0;
  // How long after the last record is in Kafka the slot passes the last
  // commit. Debezium confirms on Connect's offset flush
  // (offset.flush.interval.ms: 60 s by default, 1 s in the tuned run), so
  // it gets one flush interval + 15 s; every advance of the slot is noted,
  // so that a slot that stops short of the last commit shows where.
  int64_t confirmed = 0;
  std::string settled_lsn = SlotConfirmed(env, slot);
  int64_t settled_at = done;
  absl::Duration wait = absl::Seconds(30);
  if (p.debezium) wait = p.tuned ? absl::Seconds(16) : absl::Seconds(75);
  absl::Time confirm_deadline = absl::Now() + wait;
  while (absl::Now() < confirm_deadline) {
    auto past = SlotConfirmedPast(env, slot, end_lsn);
    int64_t now = NowNs();
    if (past.ok() && *past) {
      confirmed = now;
      break;
    }
    std::string lsn = SlotConfirmed(env, slot);
    if (lsn != settled_lsn) {
      settled_lsn = lsn;
      settled_at = now;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  j["seconds"] = (done - t0) / 1e9;
  j["events_per_s"] = EventsPerSecond(events, done - t0);
  j["first_record_after_s"] = (first - t0) / 1e9;
  j["events_per_s_after_first_record"] = EventsPerSecond(events, done - first);
  j["cpu_s"] = cpu;
  j["peak_rss_mb"] = Mb(rss);
  j["postgres_cpu_s"] = pg_cpu;
  if (confirmed != 0) {
    j["slot_confirmed_after_last_record_s"] = (confirmed - done) / 1e9;
  } else {
    j["slot_confirmed_after_last_record_s"] = nullptr;
    j["slot_wait_s"] = absl::ToDoubleSeconds(wait);
    j["slot_settled_lsn"] = settled_lsn;
    j["slot_settled_after_last_record_s"] = (settled_at - done) / 1e9;
    j["slot_settled_bytes_before_last_commit"] =
        env.pg()
            .Query("postgres", absl::StrCat("SELECT pg_wal_lsn_diff('", end_lsn,
                                            "', '", settled_lsn, "')"))
            .value_or("?");
  }
  if (!p.debezium) {
    absl::SleepFor(absl::Milliseconds(1200));  // the next statistics
    const ProduceCounts sent =
        ScrapeProduceCounts(absl::StrCat(env.work_dir(), "/", log, ".log"));
    if (sent.requests > 0) {
      j["produce_requests"] = sent.requests;
      j["records_per_request"] = sent.records / sent.requests;
    }
  }
  (void)StopPublisher(**child);
  env.DropSlot(slot);
  j["load_after"] = LoadAverages();
  std::cerr << "throughput " << p.name << ": " << j.dump() << "\n";
  return j;
}

}  // namespace

absl::StatusOr<nlohmann::json> RunThroughput(BenchEnv& env,
                                             const RigOptions& rig,
                                             const ThroughputOptions& options) {
  const int64_t events = options.events;
  std::cerr << "== throughput: backlog of " << events << " rows\n";
  nlohmann::json doc;
  const std::vector<std::string>& runs = options.runs;
  std::vector<std::string> topics;
  for (const std::string& name : runs) {
    if (name == "pg_recvlogical") continue;
    auto p = ParsePublisher(name);
    if (!p.ok()) return p.status();
    topics.push_back(absl::StrCat(p->topic_prefix, kThroughputType));
  }
  absl::Status s = CreateTopics(env.bootstrap(), topics, kPartitions);
  if (!s.ok()) return s;
  // Every run's slot exists before the first row is written.
  for (const std::string& name : runs) {
    s = env.CreateSlot(SlotName("tp_", name));
    if (!s.ok()) return s;
  }
  auto conn = PgConn::Connect(env.AdminConnInfo());
  if (!conn.ok()) return conn.status();
  int64_t t0 = NowNs();
  s = (*conn)->Exec(BacklogSql(events));
  if (!s.ok()) return s;
  int64_t t1 = NowNs();
  auto end_lsn = (*conn)->Query("SELECT pg_current_wal_insert_lsn()");
  if (!end_lsn.ok()) return end_lsn.status();
  auto payload_bytes = (*conn)->Query(
      "SELECT round(avg(octet_length(payload::text))) FROM (SELECT payload "
      "FROM public.outbox WHERE aggregatetype = 'throughput' LIMIT 1000) p");
  doc["backlog"] = {{"rows", events},
                    {"rows_per_transaction", 100},
                    {"keys", 1000},
                    {"payload_bytes_avg", payload_bytes.value_or("?")},
                    {"insert_seconds", (t1 - t0) / 1e9},
                    {"last_commit_lsn", *end_lsn}};
  std::cerr << "backlog: " << doc["backlog"].dump() << "\n";
  doc["runs"] = nlohmann::json::array();
  for (const std::string& name : runs) {
    const std::string slot = SlotName("tp_", name);
    if (name == "pg_recvlogical") {
      nlohmann::json j;
      j["run"] = name;
      j["load_before"] = LoadAverages();
      auto run = env.RunPgRecvLogical(options.pg_recvlogical, slot, *end_lsn,
                                      /*messages=*/false);
      if (!run.ok()) return run.status();
      j["seconds"] = run->seconds;
      j["events_per_s"] = run->seconds > 0 ? events / run->seconds : 0;
      j["postgres_cpu_s"] = run->postgres_cpu_s;
      j["settings"] = {{"argv",
                        "pg_recvlogical --start -S <slot> -o "
                        "proto_version=1 -o "
                        "publication_names=outbox_pub -f /dev/null "
                        "-E <last commit lsn> --no-loop -s 1"}};
      j["load_after"] = LoadAverages();
      std::cerr << "throughput pg_recvlogical: " << j.dump() << "\n";
      env.DropSlot(slot);
      doc["runs"].push_back(j);
      continue;
    }
    auto p = ParsePublisher(name);
    if (!p.ok()) return p.status();
    if (absl::StartsWith(name, "outboxd-")) {
      auto v = options.variants.find(name.substr(8));
      if (v == options.variants.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, ": no such --throughput_variants entry"));
      }
      p->outboxd_args = v->second;
    }
    auto j = RunPublisherBacklog(env, rig, *p, slot, events, *end_lsn,
                                 options.run_timeout, options.broker_pid);
    if (!j.ok()) return j.status();
    doc["runs"].push_back(*j);
  }
  return doc;
}

}  // namespace outboxd::bench::vs_debezium
