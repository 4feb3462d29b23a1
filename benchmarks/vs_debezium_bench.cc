// outboxd beside Debezium (benchmarks/README.md, benchmark 4; issue 9 part 3).
//
// On one throwaway PostgreSQL 15 and one real Apache Kafka (started by
// run-vs-debezium.sh), Debezium's PostgreSQL connector with its Outbox Event
// Router runs in Kafka Connect standalone, configured as Debezium documents
// for an outbox, and outboxd runs with its defaults. Each reads its own slot,
// created before the rows it reads were written. outboxd publishes under
// --topic-prefix=outboxd.outbox.event. (Debezium keeps the default
// outbox.event.), so both can share the broker; the tuned Debezium run
// routes to tuned.outbox.event.<type>.
//
//   equality    the same rows (every payload kind, odd keys, several
//               aggregate types) through both; their records must agree on
//               topic (modulo the prefix), key, value, `id` header and
//               partition, and per key on order. Every difference is
//               counted by kind with examples; exit 1 when there is one.
//   throughput  a backlog of N rows, then, one after the other, each on its
//               own slot: pg_recvlogical (the walsender's limit), outboxd,
//               Debezium at its defaults, Debezium tuned. Events/s from the
//               start of the process to the last record in Kafka, CPU and
//               peak RSS of the process, and how long after that the slot's
//               confirmed_flush_lsn passes the last commit.
//   latency     commit-to-consumer latency at fixed rates, one publisher at
//               a time, read by the same consumer (ReceiptRecorder).
//
// Writes <out>/vs-debezium.json, vs-debezium.md, vs-debezium_cdf.dat and
// vs-debezium_cdf.gp. Measures only (except the equality verdict).
#include <librdkafka/rdkafka.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
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
#include "tests/harness/child_process.h"
#include "tests/harness/kafka_reader.h"
#include "tests/harness/pg_cluster.h"

ABSL_FLAG(std::string, bootstrap, "", "Kafka bootstrap servers (required)");
ABSL_FLAG(std::string, connect_libs, "",
          "folder of the Kafka Connect + Debezium jars (required)");
ABSL_FLAG(std::string, connect_log4j, "",
          "log4j2 configuration for Kafka Connect");
ABSL_FLAG(std::vector<std::string>, phases,
          std::vector<std::string>({"equality", "throughput", "latency"}),
          "phases to run");
ABSL_FLAG(int64_t, equality_events, 10000, "rows of the equality phase");
ABSL_FLAG(int64_t, events, 1000000, "backlog rows of the throughput phase");
ABSL_FLAG(std::vector<std::string>, throughput_runs,
          std::vector<std::string>({"pg_recvlogical", "outboxd", "debezium",
                                    "debezium-tuned"}),
          "throughput runs, in order");
ABSL_FLAG(std::vector<std::string>, latency_publishers,
          std::vector<std::string>({"outboxd", "debezium", "debezium-tuned"}),
          "latency publishers, in order");
ABSL_FLAG(std::vector<std::string>, rates,
          std::vector<std::string>({"100", "1000", "10000"}),
          "latency: offered rates, events/s");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(15),
          "latency: load time per (publisher, rate)");
ABSL_FLAG(int, connections, 4, "latency: load generator connections");
ABSL_FLAG(absl::Duration, run_timeout, absl::Minutes(15),
          "throughput: give up on one run after this long");
ABSL_FLAG(std::vector<std::string>, outboxd_args, {},
          "extra outboxd flags, comma-separated (e.g. "
          "--kafka-property=partitioner=consistent_random to see the "
          "equality check fail)");
ABSL_FLAG(std::string, out, "benchmarks/results", "output directory");
ABSL_FLAG(std::string, work_dir, "/tmp/outboxd-bench-vs-debezium",
          "logs and Connect configuration");
ABSL_FLAG(std::string, pg_recvlogical,
          "/usr/lib/postgresql/15/bin/pg_recvlogical", "pg_recvlogical binary");

namespace outboxd::bench {
namespace {

constexpr char kOutboxdPrefix[] = "outboxd.";  // before outbox.event.
constexpr char kDebeziumTopicPrefix[] = "outbox.event.";
constexpr char kTunedTopicPrefix[] = "tuned.outbox.event.";
constexpr char kDebeziumPublication[] = "dbz_publication";

// Debezium's tuned run: its documented throughput settings, and the
// Connect worker's producer and offset-flush settings.
const std::vector<std::pair<std::string, std::string>> kTunedConnector = {
    {"max.batch.size", "8192"},
    {"max.queue.size", "32768"},
    {"poll.interval.ms", "10"},
};
const std::vector<std::pair<std::string, std::string>> kTunedWorker = {
    {"producer.linger.ms", "10"},
    {"producer.batch.size", "524288"},
    {"offset.flush.interval.ms", "1000"},
};

std::string Quote(const std::string& s) {
  return absl::StrCat("'", absl::StrReplaceAll(s, {{"'", "''"}}), "'");
}

// --- the publishers ---------------------------------------------------------

// One publisher as the benchmark runs it: outboxd, or Kafka Connect
// standalone with Debezium's connector (default or tuned settings).
struct PublisherKind {
  std::string name;          // outboxd | debezium | debezium-tuned
  std::string topic_prefix;  // prefix + aggregatetype = topic
  bool debezium = false;
  bool tuned = false;
};

absl::StatusOr<PublisherKind> ParsePublisher(const std::string& name) {
  if (name == "outboxd") {
    return PublisherKind{name, absl::StrCat(kOutboxdPrefix, "outbox.event."),
                         false, false};
  }
  if (name == "debezium") {
    return PublisherKind{name, kDebeziumTopicPrefix, true, false};
  }
  if (name == "debezium-tuned") {
    return PublisherKind{name, kTunedTopicPrefix, true, true};
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown publisher ", name));
}

std::vector<std::string> OutboxdArgs(const PublisherKind& p,
                                     const std::string& slot) {
  std::vector<std::string> args = {
      absl::StrCat("--topic-prefix=", p.topic_prefix),
      absl::StrCat("--slot=", slot), "--metrics-address=127.0.0.1:0"};
  for (const std::string& a : absl::GetFlag(FLAGS_outboxd_args)) {
    args.push_back(a);
  }
  return args;
}

std::string Properties(
    const std::vector<std::pair<std::string, std::string>>& kv) {
  std::string text;
  for (const auto& [k, v] : kv) absl::StrAppend(&text, k, "=", v, "\n");
  return text;
}

// The Connect worker and connector configuration of one run.
struct ConnectConfig {
  std::vector<std::pair<std::string, std::string>> worker;
  std::vector<std::pair<std::string, std::string>> connector;
};

ConnectConfig DebeziumConfig(BenchEnv& env, const PublisherKind& p,
                             const std::string& slot, const std::string& dir,
                             int rest_port) {
  ConnectConfig c;
  c.worker = {
      {"bootstrap.servers", env.bootstrap()},
      {"key.converter", "org.apache.kafka.connect.storage.StringConverter"},
      {"value.converter", "org.apache.kafka.connect.storage.StringConverter"},
      {"offset.storage.file.filename", absl::StrCat(dir, "/offsets")},
      {"listeners", absl::StrCat("http://127.0.0.1:", rest_port)},
  };
  c.connector = {
      {"name", absl::StrCat("outbox-", slot)},
      {"connector.class", "io.debezium.connector.postgresql.PostgresConnector"},
      {"tasks.max", "1"},
      {"database.hostname", "127.0.0.1"},
      {"database.port", absl::StrCat(env.pg().port())},
      {"database.user", "postgres"},
      {"database.password", ""},
      {"database.dbname", "postgres"},
      {"topic.prefix", "dbz"},
      {"plugin.name", "pgoutput"},
      {"slot.name", slot},
      {"publication.name", kDebeziumPublication},
      {"publication.autocreate.mode", "filtered"},
      {"table.include.list", "public.outbox"},
      {"snapshot.mode", "no_data"},
      {"transforms", "outbox"},
      {"transforms.outbox.type", "io.debezium.transforms.outbox.EventRouter"},
      {"key.converter", "org.apache.kafka.connect.storage.StringConverter"},
      {"value.converter", "org.apache.kafka.connect.storage.StringConverter"},
  };
  if (p.tuned) {
    for (const auto& kv : kTunedConnector) c.connector.push_back(kv);
    for (const auto& kv : kTunedWorker) c.worker.push_back(kv);
    c.connector.push_back(
        {"transforms.outbox.route.topic.replacement",
         absl::StrCat(kTunedTopicPrefix, "${routedByValue}")});
  }
  return c;
}

// Starts the publisher on `slot`; its log goes to work_dir/<log_name>.log.
absl::StatusOr<std::unique_ptr<testing::ChildProcess>> StartPublisher(
    BenchEnv& env, const PublisherKind& p, const std::string& slot,
    const std::string& log_name, nlohmann::json* settings) {
  if (!p.debezium) {
    std::vector<std::string> args = OutboxdArgs(p, slot);
    if (settings != nullptr) *settings = {{"outboxd_args", args}};
    return env.StartOutboxd(args, log_name);
  }
  const std::string dir = absl::StrCat(env.work_dir(), "/", log_name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto port = testing::FreeTcpPort();
  if (!port.ok()) return port.status();
  ConnectConfig c = DebeziumConfig(env, p, slot, dir, *port);
  absl::Status s = WriteFile(dir + "/worker.properties", Properties(c.worker));
  if (s.ok()) {
    s = WriteFile(dir + "/connector.properties", Properties(c.connector));
  }
  if (!s.ok()) return s;
  if (settings != nullptr) {
    nlohmann::json w, k;
    for (const auto& [key, v] : c.worker) w[key] = v;
    for (const auto& [key, v] : c.connector) k[key] = v;
    *settings = {{"worker", w}, {"connector", k}};
  }
  testing::ChildOptions o;
  // The JVM options of Kafka's connect-standalone.sh / kafka-run-class.sh.
  o.argv = {"java",
            "-Xms256M",
            "-Xmx2G",
            "-server",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true"};
  if (!absl::GetFlag(FLAGS_connect_log4j).empty()) {
    o.argv.push_back(absl::StrCat("-Dlog4j2.configurationFile=",
                                  absl::GetFlag(FLAGS_connect_log4j)));
  }
  for (const char* a :
       {"-cp", "", "org.apache.kafka.connect.cli.ConnectStandalone", "", ""}) {
    o.argv.push_back(a);
  }
  size_t n = o.argv.size();
  o.argv[n - 4] = absl::StrCat(absl::GetFlag(FLAGS_connect_libs), "/*");
  o.argv[n - 2] = dir + "/worker.properties";
  o.argv[n - 1] = dir + "/connector.properties";
  o.capture_stdout = false;
  o.stderr_file = absl::StrCat(env.work_dir(), "/", log_name, ".log");
  return testing::ChildProcess::Start(o);
}

absl::Status StopPublisher(testing::ChildProcess& child) {
  child.Signal(SIGTERM);
  std::optional<int> code = child.Wait(absl::Seconds(60));
  if (!code) {
    child.Signal(SIGKILL);
    (void)child.Wait(absl::Seconds(10));
    return absl::DeadlineExceededError("publisher did not stop in 60 s");
  }
  return absl::OkStatus();
}

// Waits until the slot is streamed by `child`; fails early if it exits.
absl::Status WaitStreaming(BenchEnv& env, const std::string& slot,
                           testing::ChildProcess& child,
                           const std::string& log) {
  absl::Time deadline = absl::Now() + absl::Seconds(180);
  while (absl::Now() < deadline) {
    if (!child.Running()) {
      return absl::InternalError(absl::StrCat(
          "publisher exited before streaming ", slot, " (see ", log, ")"));
    }
    if (env.WaitSlotActive(slot, absl::Milliseconds(200)).ok()) {
      return absl::OkStatus();
    }
  }
  return absl::DeadlineExceededError(
      absl::StrCat("slot ", slot, " not streamed in 180 s (see ", log, ")"));
}

// --- equality ----------------------------------------------------------------

const std::vector<std::string>& AggregateTypes() {
  static const auto* types =
      new std::vector<std::string>({"order", "Customer", "payment_v2-eu"});
  return *types;
}

std::string EqualityKey(int64_t i) {
  switch (i % 50) {
    case 0:
      return "";
    case 1:
      return "ключ-ü-日本";
    case 2:
      return std::string(300, 'k');
    case 3:
      return "key with spaces, 'quotes' and \\backslash";
    default:
      return absl::StrCat("agg-", i % 997);
  }
}

// The payload column of row i as an SQL expression (NULL = tombstone).
std::string EqualityPayloadSql(int64_t i) {
  switch (i % 12) {
    case 0:
      return "NULL";
    case 1:
      return "'null'";
    case 2:
      return "'{}'";
    case 3:
      return Quote(
          R"({"text": "quote \" backslash \\ newline \n tab \t", "u": "é€😀"})");
    case 4:
      return "'[1, 2.50, -0.0, 1e3, true, false, null, \"x\"]'";
    case 5:
      return "'\"just a string\"'";
    case 6:
      return "'12345678901234567890.123456789'";
    case 7:
      // ~20 kB
      return absl::StrCat("jsonb_build_object('big', repeat('x', 20000), 'i', ",
                          i, ")");
    case 8:
      return Quote(absl::StrCat(R"({"nested": {"a": [{"b": {"c": )", i,
                                R"(}}], "z": "last", "A": "first"}})"));
    default:
      return Quote(EventPayload(i));
  }
}

std::string EqualityHeadersSql(int64_t i) {
  if (i % 3 != 0) return "NULL";
  return Quote(absl::StrCat(R"({"traceparent": "00-)", i, R"(-01"})"));
}

struct Difference {
  int64_t count = 0;
  std::vector<std::string> examples;
  void Add(const std::string& example) {
    ++count;
    if (examples.size() < 5) examples.push_back(example);
  }
};

std::string Show(const std::optional<std::string>& v) {
  if (!v) return "(null)";
  if (v->size() > 80) return absl::StrCat(v->substr(0, 80), "...");
  return *v;
}

// Compares Debezium's and outboxd's records; the differences by kind.
std::map<std::string, Difference> CompareRecords(
    const std::vector<testing::ConsumedRecord>& dbz,
    const std::vector<testing::ConsumedRecord>& obx, int64_t rows,
    nlohmann::json* info) {
  std::map<std::string, Difference> diffs;
  std::map<std::string, const testing::ConsumedRecord*> by_id_dbz, by_id_obx;
  auto index = [&](const std::vector<testing::ConsumedRecord>& records,
                   std::map<std::string, const testing::ConsumedRecord*>& map,
                   const std::string& who) {
    for (const auto& r : records) {
      std::optional<std::string> id = r.Header("id");
      if (!id) {
        diffs[absl::StrCat("no id header (", who, ")")].Add(
            absl::StrCat(r.topic, "/", r.partition, "@", r.offset));
        continue;
      }
      if (!map.emplace(*id, &r).second) {
        diffs[absl::StrCat("duplicate id (", who, ")")].Add(*id);
      }
    }
  };
  index(dbz, by_id_dbz, "debezium");
  index(obx, by_id_obx, "outboxd");
  std::map<std::string, int64_t> header_names_dbz, header_names_obx;
  int64_t timestamp_differs = 0;
  std::vector<double> timestamp_delta_ms;  // Debezium's minus outboxd's
  for (const auto& r : dbz)
    for (const auto& [k, v] : r.headers) ++header_names_dbz[k];
  for (const auto& r : obx)
    for (const auto& [k, v] : r.headers) ++header_names_obx[k];
  int64_t matched = 0;
  for (const auto& [id, d] : by_id_dbz) {
    auto it = by_id_obx.find(id);
    if (it == by_id_obx.end()) {
      diffs["missing in outboxd"].Add(id);
      continue;
    }
    const testing::ConsumedRecord& o = *it->second;
    ++matched;
    std::string otopic = o.topic;
    if (absl::StartsWith(otopic, kOutboxdPrefix)) {
      otopic = otopic.substr(strlen(kOutboxdPrefix));
    }
    if (otopic != d->topic) {
      diffs["topic"].Add(
          absl::StrCat(id, ": debezium ", d->topic, ", outboxd ", o.topic));
    }
    if (o.key != d->key) {
      diffs["key"].Add(absl::StrCat(id, ": debezium '", Show(d->key),
                                    "', outboxd '", Show(o.key), "'"));
    }
    if (o.value != d->value) {
      diffs["value"].Add(absl::StrCat(id, ": debezium ", Show(d->value),
                                      " | outboxd ", Show(o.value)));
    }
    if (o.partition != d->partition) {
      diffs["partition"].Add(absl::StrCat(id, " key '", Show(d->key),
                                          "': debezium ", d->partition,
                                          ", outboxd ", o.partition));
    }
    if (o.timestamp_ms != d->timestamp_ms) ++timestamp_differs;
    timestamp_delta_ms.push_back(
        static_cast<double>(d->timestamp_ms - o.timestamp_ms));
  }
  for (const auto& [id, o] : by_id_obx) {
    if (!by_id_dbz.count(id)) diffs["missing in debezium"].Add(id);
  }
  // Per key order: the sequence of ids of each (topic, key) in offset order.
  auto sequences = [](const std::vector<testing::ConsumedRecord>& records,
                      bool strip) {
    std::map<std::pair<std::string, std::string>, std::vector<std::string>> m;
    for (const auto& r : records) {
      std::string topic = r.topic;
      if (strip && absl::StartsWith(topic, kOutboxdPrefix)) {
        topic = topic.substr(strlen(kOutboxdPrefix));
      }
      m[{topic, r.key}].push_back(r.Header("id").value_or(""));
    }
    return m;
  };
  auto seq_dbz = sequences(dbz, false);
  auto seq_obx = sequences(obx, true);
  for (const auto& [tk, ids] : seq_dbz) {
    auto it = seq_obx.find(tk);
    if (it != seq_obx.end() && it->second != ids) {
      diffs["order within a key"].Add(
          absl::StrCat(tk.first, " key '", Show(tk.second), "'"));
    }
  }
  (*info)["rows"] = rows;
  (*info)["debezium_records"] = dbz.size();
  (*info)["outboxd_records"] = obx.size();
  (*info)["matched_by_id"] = matched;
  (*info)["timestamp_differs"] = timestamp_differs;
  std::sort(timestamp_delta_ms.begin(), timestamp_delta_ms.end());
  (*info)["timestamp_debezium_minus_outboxd_ms"] = {
      {"min", Quantile(timestamp_delta_ms, 0)},
      {"p50", Quantile(timestamp_delta_ms, 0.5)},
      {"max", Quantile(timestamp_delta_ms, 1)}};
  (*info)["header_names_debezium"] = header_names_dbz;
  (*info)["header_names_outboxd"] = header_names_obx;
  return diffs;
}

absl::StatusOr<nlohmann::json> RunEquality(BenchEnv& env, int64_t rows) {
  std::cerr << "== equality: " << rows << " rows\n";
  nlohmann::json j;
  j["load_before"] = LoadAverages();
  std::vector<std::string> topics;
  for (const std::string& t : AggregateTypes()) {
    topics.push_back(absl::StrCat(kDebeziumTopicPrefix, t));
    topics.push_back(absl::StrCat(kOutboxdPrefix, kDebeziumTopicPrefix, t));
  }
  absl::Status s = CreateTopics(env.bootstrap(), topics, kPartitions);
  if (!s.ok()) return s;
  auto obx_kind = ParsePublisher("outboxd");
  auto dbz_kind = ParsePublisher("debezium");
  nlohmann::json obx_settings, dbz_settings;
  auto obx = StartPublisher(env, *obx_kind, "eq_outboxd", "equality-outboxd",
                            &obx_settings);
  if (!obx.ok()) return obx.status();
  auto dbz = StartPublisher(env, *dbz_kind, "eq_debezium", "equality-debezium",
                            &dbz_settings);
  if (!dbz.ok()) return dbz.status();
  j["outboxd_settings"] = obx_settings;
  j["debezium_settings"] = dbz_settings;
  s = WaitStreaming(env, "eq_outboxd", **obx,
                    env.work_dir() + "/equality-outboxd.log");
  if (s.ok()) {
    s = WaitStreaming(env, "eq_debezium", **dbz,
                      env.work_dir() + "/equality-debezium.log");
  }
  if (!s.ok()) return s;

  // Rows in transactions of 1..37 rows, with every payload kind.
  auto conn = PgConn::Connect(env.AdminConnInfo());
  if (!conn.ok()) return conn.status();
  std::map<std::string, int64_t> per_topic;
  int64_t i = 0;
  int64_t tx = 0;
  while (i < rows) {
    int64_t n = std::min<int64_t>(rows - i, 1 + (tx++ * 7) % 37);
    std::string sql =
        "BEGIN; INSERT INTO public.outbox (id, aggregatetype, aggregateid, "
        "type, payload, headers) VALUES ";
    for (int64_t k = 0; k < n; ++k, ++i) {
      const std::string& type = AggregateTypes()[i % AggregateTypes().size()];
      ++per_topic[type];
      absl::StrAppend(&sql, k ? "," : "", "('", Uuid(i + 1), "', ", Quote(type),
                      ", ", Quote(EqualityKey(i)), ", ",
                      Quote(absl::StrCat("Type", i % 5)), ", ",
                      EqualityPayloadSql(i), ", ", EqualityHeadersSql(i), ")");
    }
    absl::StrAppend(&sql, "; COMMIT");
    s = (*conn)->Exec(sql);
    if (!s.ok()) return s;
  }
  std::vector<testing::ConsumedRecord> dbz_records, obx_records;
  for (const auto& [type, count] : per_topic) {
    for (bool outboxd : {false, true}) {
      std::string topic = absl::StrCat(outboxd ? kOutboxdPrefix : "",
                                       kDebeziumTopicPrefix, type);
      auto records = testing::ReadTopic(env.bootstrap(), topic, count,
                                        absl::Minutes(5), absl::Seconds(3));
      if (!records.ok()) return records.status();
      std::cerr << topic << ": " << records->size() << " records of " << count
                << "\n";
      auto& into = outboxd ? obx_records : dbz_records;
      into.insert(into.end(), records->begin(), records->end());
    }
  }
  (void)StopPublisher(**obx);
  (void)StopPublisher(**dbz);
  env.DropSlot("eq_outboxd");
  env.DropSlot("eq_debezium");

  nlohmann::json info;
  auto diffs = CompareRecords(dbz_records, obx_records, rows, &info);
  j["summary"] = info;
  nlohmann::json d = nlohmann::json::object();
  int64_t total = 0;
  for (const auto& [kind, diff] : diffs) {
    d[kind] = {{"count", diff.count}, {"examples", diff.examples}};
    total += diff.count;
  }
  j["differences"] = d;
  j["difference_count"] = total;
  j["equal"] = total == 0 && info["debezium_records"].get<int64_t>() == rows &&
               info["outboxd_records"].get<int64_t>() == rows;
  j["load_after"] = LoadAverages();
  std::cerr << "equality: " << j["summary"].dump() << "\n"
            << "differences: " << d.dump(2) << "\n";
  return j;
}

// --- throughput --------------------------------------------------------------

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

absl::StatusOr<nlohmann::json> RunPublisherBacklog(BenchEnv& env,
                                                   const PublisherKind& p,
                                                   const std::string& slot,
                                                   int64_t events,
                                                   const std::string& end_lsn) {
  std::cerr << "== throughput: " << p.name << "\n";
  nlohmann::json j;
  j["run"] = p.name;
  j["load_before"] = LoadAverages();
  const std::string topic = absl::StrCat(p.topic_prefix, kThroughputType);
  const std::string log = absl::StrCat("throughput-", p.name);
  auto probe = WatermarkProbe::Create(env.bootstrap());
  if (!probe.ok()) return probe.status();
  double pg_cpu0 = ClusterCpuSeconds(env.postmaster_pid());
  nlohmann::json settings;
  const int64_t t0 = NowNs();
  auto child = StartPublisher(env, p, slot, log, &settings);
  if (!child.ok()) return child.status();
  j["settings"] = settings;
  const pid_t pid = (*child)->pid();
  testing::ChildProcess& publisher = **child;
  const RecordArrival arrival = WaitForRecords(
      **probe, topic, kPartitions, events, absl::GetFlag(FLAGS_run_timeout),
      [&publisher] { return publisher.Running(); });
  const int64_t first = arrival.first_ns, done = arrival.done_ns;
  const double cpu = ProcessCpuSeconds(pid);
  const int64_t rss = PeakRssBytes(pid);
  j["records"] = arrival.last_total;
  if (done == 0) {
    j["error"] = absl::StrCat("only ", arrival.last_total, " of ", events,
                              " records within the run timeout");
    j["cpu_s"] = ProcessCpuSeconds(pid);
    j["peak_rss_mb"] = PeakRssBytes(pid) / 1048576.0;
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
  j["peak_rss_mb"] = rss / 1048576.0;
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
  (void)StopPublisher(**child);
  env.DropSlot(slot);
  j["load_after"] = LoadAverages();
  std::cerr << "throughput " << p.name << ": " << j.dump() << "\n";
  return j;
}

absl::StatusOr<nlohmann::json> RunThroughput(BenchEnv& env, int64_t events) {
  std::cerr << "== throughput: backlog of " << events << " rows\n";
  nlohmann::json doc;
  std::vector<std::string> runs = absl::GetFlag(FLAGS_throughput_runs);
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
    s = env.CreateSlot(
        absl::StrCat("tp_", absl::StrReplaceAll(name, {{"-", "_"}})));
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
    const std::string slot =
        absl::StrCat("tp_", absl::StrReplaceAll(name, {{"-", "_"}}));
    if (name == "pg_recvlogical") {
      nlohmann::json j;
      j["run"] = name;
      j["load_before"] = LoadAverages();
      auto run = env.RunPgRecvLogical(absl::GetFlag(FLAGS_pg_recvlogical), slot,
                                      *end_lsn, /*messages=*/false);
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
    auto j = RunPublisherBacklog(env, *p, slot, events, *end_lsn);
    if (!j.ok()) return j.status();
    doc["runs"].push_back(*j);
  }
  return doc;
}

// --- latency -----------------------------------------------------------------

std::string LatencySql(const std::string& type, int64_t id) {
  return absl::StrCat(
      "BEGIN; INSERT INTO public.outbox (aggregatetype, aggregateid, type, "
      "payload) VALUES ('",
      type, "', 'order-", 1000000 + id % 1000, "', 'OrderCreated', '",
      EventPayload(id), "'); COMMIT");
}

struct LatencyRun {
  nlohmann::json summary;
  std::vector<std::pair<double, double>> cdf;
};

absl::StatusOr<LatencyRun> RunLatencyRate(BenchEnv& env, const PublisherKind& p,
                                          testing::ChildProcess& child,
                                          int rate, absl::Duration duration) {
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
  auto load = GenerateLoad(env.AdminConnInfo(), rate, events,
                           absl::GetFlag(FLAGS_connections),
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

absl::StatusOr<std::vector<LatencyRun>> RunLatency(
    BenchEnv& env, nlohmann::json& skipped_runs) {
  std::vector<int> rates;
  for (const std::string& r : absl::GetFlag(FLAGS_rates)) {
    int v = 0;
    if (!absl::SimpleAtoi(r, &v) || v <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("bad rate ", r));
    }
    rates.push_back(v);
  }
  std::vector<LatencyRun> runs;
  for (const std::string& name : absl::GetFlag(FLAGS_latency_publishers)) {
    auto p = ParsePublisher(name);
    if (!p.ok()) return p.status();
    const std::string slot =
        absl::StrCat("lat_", absl::StrReplaceAll(name, {{"-", "_"}}));
    const std::string log = absl::StrCat("latency-", name);
    nlohmann::json settings;
    auto child = StartPublisher(env, *p, slot, log, &settings);
    if (!child.ok()) return child.status();
    absl::Status s =
        WaitStreaming(env, slot, **child, env.work_dir() + "/" + log + ".log");
    if (!s.ok()) return s;
    for (int rate : rates) {
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
      auto r =
          RunLatencyRate(env, *p, **child, rate, absl::GetFlag(FLAGS_duration));
      if (!r.ok()) return r.status();
      r->summary["settings"] = settings;
      runs.push_back(*std::move(r));
    }
    (void)StopPublisher(**child);
    env.DropSlot(slot);
  }
  return runs;
}

// --- output ------------------------------------------------------------------

std::string Markdown(const nlohmann::json& doc) {
  std::string md;
  if (doc.contains("equality")) {
    const nlohmann::json& e = doc["equality"];
    const nlohmann::json& s = e["summary"];
    absl::StrAppend(
        &md, "### Equality (", s["rows"].get<int64_t>(),
        " rows through both)\n\n",
        "Debezium records: ", s["debezium_records"].get<int64_t>(),
        ", outboxd records: ", s["outboxd_records"].get<int64_t>(),
        ", matched by `id`: ", s["matched_by_id"].get<int64_t>(),
        ". Compared: topic (outboxd's `outboxd.` prefix removed), key, value, "
        "`id` header, partition, and the order of ids within each key. "
        "Differences: **",
        e["difference_count"].get<int64_t>(), "**",
        e["equal"].get<bool>() ? " (equal)" : "", ".\n\n");
    if (!e["differences"].empty()) {
      md += "| difference | count | examples |\n|---|---:|---|\n";
      for (const auto& [kind, d] : e["differences"].items()) {
        std::vector<std::string> ex;
        for (const auto& x : d["examples"]) {
          ex.push_back(absl::StrReplaceAll(x.get<std::string>(),
                                           {{"|", "\\|"}, {"\n", " "}}));
        }
        absl::StrAppend(&md, "| ", kind, " | ", d["count"].get<int64_t>(),
                        " | `", absl::StrJoin(ex, "`, `"), "` |\n");
      }
      md += "\n";
    }
    absl::StrAppend(&md, "Not compared (informational): timestamps differ on ",
                    s["timestamp_differs"].get<int64_t>(),
                    " records (outboxd: the commit time; Debezium minus "
                    "outboxd, ms: ",
                    s["timestamp_debezium_minus_outboxd_ms"].dump(),
                    "); header names (records carrying each): Debezium ",
                    s["header_names_debezium"].dump(), "; outboxd ",
                    s["header_names_outboxd"].dump(), ".\n\n");
  }
  if (doc.contains("throughput")) {
    const nlohmann::json& t = doc["throughput"];
    const nlohmann::json& b = t["backlog"];
    double outboxd_rate = 0, outboxd_cpu = 0, outboxd_rss = 0;
    for (const auto& r : t["runs"]) {
      if (r["run"] == "outboxd" && r.contains("events_per_s")) {
        outboxd_rate = r["events_per_s"].get<double>();
        outboxd_cpu = r["cpu_s"].get<double>();
        outboxd_rss = r["peak_rss_mb"].get<double>();
      }
    }
    absl::StrAppend(
        &md, "### Throughput (backlog of ", b["rows"].get<int64_t>(),
        " rows, 100 per transaction, ~",
        b["payload_bytes_avg"].get<std::string>(),
        "-byte jsonb payloads, 1,000 keys; one run after the other)\n\n",
        "| run | events/s (start to last record) | outboxd / this | first "
        "record after s | events/s after first record | CPU s | outboxd / "
        "this | peak RSS MB | outboxd / this | PostgreSQL CPU s | slot "
        "confirmed s after last record | load before / after |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for (const auto& r : t["runs"]) {
      auto f = [&](const char* key, const char* fmt) -> std::string {
        if (!r.contains(key) || r[key].is_null()) return "-";
        return FormatDouble(fmt, r[key].get<double>());
      };
      auto ratio = [&](double mine, const char* key) -> std::string {
        if (!r.contains(key) || r[key].is_null() || r[key].get<double>() == 0)
          return "-";
        return absl::StrFormat("%.2fx", mine / r[key].get<double>());
      };
      std::string confirmed = f("slot_confirmed_after_last_record_s", "%.2f");
      if (r.contains("slot_settled_lsn")) {
        confirmed = absl::StrCat(
            "not within ", FormatDouble("%.0f", r["slot_wait_s"].get<double>()),
            " s: stopped ",
            r["slot_settled_bytes_before_last_commit"].get<std::string>(),
            " bytes short, ",
            FormatDouble("%.1f",
                         r["slot_settled_after_last_record_s"].get<double>()),
            " s after the last record");
      }
      std::string rate = f("events_per_s", "%.0f");
      if (r.contains("error")) rate = r["error"].get<std::string>();
      absl::StrAppend(
          &md, "| ", r["run"].get<std::string>(), " | ", rate, " | ",
          ratio(outboxd_rate, "events_per_s"), " | ",
          f("first_record_after_s", "%.1f"), " | ",
          f("events_per_s_after_first_record", "%.0f"), " | ",
          f("cpu_s", "%.1f"), " | ",
          r["run"] == "pg_recvlogical"
              ? "-"
              : absl::StrFormat("%.2fx",
                                outboxd_cpu > 0 && r.contains("cpu_s")
                                    ? outboxd_cpu / r["cpu_s"].get<double>()
                                    : 0),
          " | ", f("peak_rss_mb", "%.0f"), " | ",
          r["run"] == "pg_recvlogical"
              ? "-"
              : absl::StrFormat(
                    "%.2fx", r.contains("peak_rss_mb")
                                 ? outboxd_rss / r["peak_rss_mb"].get<double>()
                                 : 0),
          " | ", f("postgres_cpu_s", "%.1f"), " | ", confirmed, " | ",
          r["load_before"].get<std::string>(), " / ",
          r.value("load_after", std::string("-")), " |\n");
    }
    md +=
        "\n(\"outboxd / this\": outboxd's events/s divided by the run's, and "
        "for CPU and RSS outboxd's value divided by the run's: below 1 means "
        "outboxd used less.)\n\n";
  }
  if (doc.contains("latency")) {
    md +=
        "### Latency (commit to consumer, one event per transaction, same "
        "consumer)\n\n"
        "| publisher | offered/s | committed/s | p50 ms | p90 ms | p99 ms | "
        "max ms | p50, p99: outboxd / this | publisher CPU s | kept up | "
        "load before / after |\n"
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---|---|\n";
    std::map<int, nlohmann::json> outboxd_at;
    for (const auto& r : doc["latency"]) {
      if (r["publisher"] == "outboxd") {
        outboxd_at[r["offered_rate"].get<int>()] = r["latency_ms"];
      }
    }
    for (const auto& r : doc["latency"]) {
      const auto& l = r["latency_ms"];
      std::string ratio = "-";
      auto o = outboxd_at.find(r["offered_rate"].get<int>());
      if (o != outboxd_at.end() && l["p50"].get<double>() > 0 &&
          l["p99"].get<double>() > 0) {
        ratio = absl::StrFormat(
            "%.3f, %.3f",
            o->second["p50"].get<double>() / l["p50"].get<double>(),
            o->second["p99"].get<double>() / l["p99"].get<double>());
      }
      std::string kept = r["kept_up"].get<bool>() ? "yes" : "**no**";
      if (!r["kept_up"].get<bool>() && r["publisher_kept_up"].get<bool>()) {
        kept = "publisher yes; generator short of the rate";
      }
      absl::StrAppend(
          &md, "| ", r["publisher"].get<std::string>(), " | ",
          r["offered_rate"].get<int>(), " | ",
          absl::StrFormat("%.0f", r["committed_per_s"].get<double>()), " | ",
          FormatMs(l["p50"]), " | ", FormatMs(l["p90"]), " | ",
          FormatMs(l["p99"]), " | ", FormatMs(l["max"]), " | ", ratio, " | ",
          absl::StrFormat("%.2f", r["cpu_s"].get<double>()), " | ", kept, " | ",
          r["load_before"].get<std::string>(), " / ",
          r["load_after"].get<std::string>(), " |\n");
    }
    for (const auto& r :
         doc.value("latency_skipped", nlohmann::json::array())) {
      absl::StrAppend(&md, "| ", r["publisher"].get<std::string>(), " | ",
                      r["offered_rate"].get<int>(),
                      " | - | - | - | - | - | - | - | not run: fell behind "
                      "at a lower rate | |\n");
    }
    md += "\n";
  }
  return md;
}

absl::Status WriteCdf(const std::string& out,
                      const std::vector<LatencyRun>& runs) {
  std::vector<CdfLine> lines;
  for (const LatencyRun& r : runs) {
    lines.push_back({r.summary["publisher"].get<std::string>(),
                     r.summary["offered_rate"].get<int>(), r.cdf});
  }
  return WriteCdfPlot(out,
                      {"vs-debezium", "vs_debezium_bench",
                       "outboxd vs Debezium: commit-to-consumer latency CDF "
                       "(real Kafka)",
                       0.5},
                      lines);
}

int Main(int argc, char** argv) {
  // bench_env's --broker: this benchmark's Kafka is --bootstrap.
  if (!ParseBenchFlags(
          argc, argv,
          "--broker: vs_debezium_bench takes its Kafka as --bootstrap")) {
    return kBadFlags;
  }
  if (absl::GetFlag(FLAGS_bootstrap).empty() ||
      absl::GetFlag(FLAGS_connect_libs).empty()) {
    std::cerr << "--bootstrap and --connect_libs are required "
                 "(benchmarks/run-vs-debezium.sh sets them)\n";
    return kBadFlags;
  }
  const std::vector<std::string> phase_list = absl::GetFlag(FLAGS_phases);
  const std::set<std::string> phases(phase_list.begin(), phase_list.end());
  const std::string out = absl::GetFlag(FLAGS_out);
  nlohmann::json doc;
  doc["benchmark"] = "vs-debezium";
  doc["machine"] = MachineInfo();
  doc["load_at_start"] = LoadAverages();

  BenchEnvOptions env_options;
  env_options.work_dir = absl::GetFlag(FLAGS_work_dir);
  env_options.bootstrap = absl::GetFlag(FLAGS_bootstrap);
  std::unique_ptr<BenchEnv> env = StartBenchEnvOrReport(env_options);
  if (env == nullptr) return 1;
  // What publication.autocreate.mode=filtered creates, created before any
  // row is written so that Debezium's slots can decode the backlog.
  absl::Status s = env->pg().Exec(
      "postgres", absl::StrCat("CREATE PUBLICATION ", kDebeziumPublication,
                               " FOR TABLE public.outbox"));
  if (!s.ok()) {
    std::cerr << "setup: " << s << "\n";
    return 1;
  }
  doc["setup"] = {
      {"postgres", "15, wal_level=logical, fsync=off, throwaway cluster"},
      {"kafka",
       "Apache Kafka 4.3.1, 1 KRaft node (scripts/kafka-cluster.sh), "
       "topics with 4 partitions"},
      {"connect",
       "Kafka Connect 4.3.1 standalone (file offset store), Debezium "
       "3.6.1.Final PostgreSQL connector + Outbox Event Router at its "
       "defaults, StringConverter for key and value; JVM -Xms256M -Xmx2G "
       "G1 (connect-standalone.sh's)"},
      {"outboxd",
       "defaults, --topic-prefix=outboxd.outbox.event., "
       "--metrics-address=127.0.0.1:0"},
      {"debezium_tuned_connector", nlohmann::json(kTunedConnector)},
      {"debezium_tuned_worker", nlohmann::json(kTunedWorker)},
      {"debezium_publication",
       "dbz_publication FOR TABLE public.outbox, created up front (what "
       "filtered autocreate makes)"},
  };
  int rc = 0;
  if (phases.count("equality")) {
    auto e = RunEquality(*env, absl::GetFlag(FLAGS_equality_events));
    if (!e.ok()) {
      std::cerr << "equality: " << e.status() << "\n";
      return 1;
    }
    doc["equality"] = *e;
    if (!(*e)["equal"].get<bool>()) rc = 1;
  }
  if (phases.count("throughput")) {
    auto t = RunThroughput(*env, absl::GetFlag(FLAGS_events));
    if (!t.ok()) {
      std::cerr << "throughput: " << t.status() << "\n";
      rc = 1;
    } else {
      doc["throughput"] = *t;
    }
  }
  std::vector<LatencyRun> latency;
  if (phases.count("latency")) {
    doc["latency_skipped"] = nlohmann::json::array();
    auto l = RunLatency(*env, doc["latency_skipped"]);
    if (!l.ok()) {
      std::cerr << "latency: " << l.status() << "\n";
      rc = 1;
    } else {
      latency = *std::move(l);
      doc["latency"] = nlohmann::json::array();
      for (const LatencyRun& r : latency) doc["latency"].push_back(r.summary);
    }
  }
  doc["load_at_end"] = LoadAverages();
  const bool full = phases.size() == 3;
  const std::string name = full ? "vs-debezium" : "vs-debezium-partial";
  s = WriteFile(absl::StrCat(out, "/", name, ".json"), doc.dump(2) + "\n");
  std::string md = Markdown(doc);
  if (s.ok()) s = WriteFile(absl::StrCat(out, "/", name, ".md"), md);
  if (s.ok() && !latency.empty() && full) s = WriteCdf(out, latency);
  if (!s.ok()) {
    std::cerr << s << "\n";
    return 1;
  }
  std::cout << md;
  return rc;
}

}  // namespace
}  // namespace outboxd::bench

int main(int argc, char** argv) { return outboxd::bench::Main(argc, argv); }
