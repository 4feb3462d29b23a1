#include "benchmarks/vs_debezium_equality.h"

#include <algorithm>
#include <cstring>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "benchmarks/bench_kafka.h"
#include "benchmarks/bench_pg.h"
#include "benchmarks/bench_proc.h"
#include "benchmarks/bench_results.h"
#include "tests/harness/kafka_reader.h"

namespace outboxd::bench::vs_debezium {
namespace {

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

}  // namespace

absl::StatusOr<nlohmann::json> RunEquality(BenchEnv& env, const RigOptions& rig,
                                           int64_t rows) {
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
  auto obx = StartPublisher(env, rig, *obx_kind, "eq_outboxd",
                            "equality-outboxd", &obx_settings);
  if (!obx.ok()) return obx.status();
  auto dbz = StartPublisher(env, rig, *dbz_kind, "eq_debezium",
                            "equality-debezium", &dbz_settings);
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

}  // namespace outboxd::bench::vs_debezium
