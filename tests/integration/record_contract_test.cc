// The record contract in every mode (issue 11, item 6): one parameterized
// suite runs outboxd with --source=cdc, poll and notify over the same rows
// and checks each record exactly as the README says ("What lands in Kafka",
// "Reserved headers", "Event formats", "Bad rows", "Causal", "Several
// databases"; for poll and notify "Polling and push publishers": the
// position is outbox.seq in place of outbox.lsn / outbox.index and the
// timestamp is created_at): topic (--topic-prefix, --topic), key, value in
// every --value-format, timestamp, headers (id, eventType, the headers
// column without its reserved names, the position, outbox.depends-on,
// outbox.source), tombstones, jsonb, text and bytea payloads, and a
// dead-lettered row. A flag a mode cannot honour exits 2 with one line.
//
// Per mode, one outboxd per flag set (FlagSet below), each on its own copy of
// the outbox table so that they run side by side; the dev broker (cdc on a
// real Kafka: cdc_test_kafka).
#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <future>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "outbox_event.pb.h"
#include "tests/harness/child_process.h"
#include "tests/harness/kafka_reader.h"
#include "tests/harness/metrics_scrape.h"
#include "tests/harness/outboxd_test_base.h"
#include "tests/harness/pg_cluster.h"

namespace outboxd::testing {
namespace {

using Json = nlohmann::ordered_json;
using Headers = std::vector<std::pair<std::string, std::string>>;

enum class Mode { kCdc, kPoll, kNotify };

std::string ModeName(Mode mode) {
  switch (mode) {
    case Mode::kCdc:
      return "cdc";
    case Mode::kPoll:
      return "poll";
    case Mode::kNotify:
      return "notify";
  }
  return "?";
}

enum class PayloadType { kJsonb, kText, kBytea };

// One outboxd of a mode: its table (public.outbox for "payload", else a
// copy named outbox_<name> with payloads of `type`), value format and
// topics (prefix_<name>.<aggregatetype>, or prefix_<name> with --topic;
// dead letters to prefix_<name>.dlq).
struct FlagSet {
  std::string name;
  PayloadType type;
  std::string format;
  bool fixed_topic = false;
  bool metrics = false;  // served on a free port and checked
};

const std::vector<FlagSet>& Runs() {
  static const auto* runs = new std::vector<FlagSet>{
      {"payload", PayloadType::kJsonb, "payload", false, /*metrics=*/true},
      {"envelope", PayloadType::kJsonb, "envelope-json", /*fixed_topic=*/true},
      {"protobuf", PayloadType::kJsonb, "protobuf"},
      {"text", PayloadType::kText, "payload"},
      {"bytea", PayloadType::kBytea, "payload"},
      {"bytea_envelope", PayloadType::kBytea, "envelope-json"},
  };
  return *runs;
}

// The rows every table gets: events 0-4 in one transaction, 5 in a second.
// Event 3 is invalid (a header value that is not a string): dead-lettered.
struct EventSql {
  std::string id, aggregate_type, aggregate_id, type;
  // The payload per PayloadType (SQL; "NULL" is a tombstone).
  std::string jsonb, text, bytea;
  bool bytea_is_utf8;  // envelope-json: text, not base64
  std::string headers, depends_on;
};

std::string EventId(int n) {
  return absl::StrCat("00000000-0000-4000-8000-00000000000", n);
}

const std::vector<EventSql>& Events() {
  static const auto* events = new std::vector<EventSql>{
      {EventId(0), "order", "o-1", "Created",
       R"('{"name": "Zoë 東京 🚀", "n": 1}')", "'plain text, not JSON: ünïcödé'",
       R"('\x00ff10804142'::bytea)", false,
       // Reserved names are dropped; names are case-sensitive.
       R"('{"h1": "v1", "tx": "t1", "id": "forged", "eventType": "forged",
            "outbox.lsn": "1", "outbox.index": "9", "outbox.seq": "1",
            "outbox.source": "x", "outbox.depends-on": "y",
            "Outbox.keep": "kept"}')",
       "NULL"},
      {EventId(1), "order", "o-1", "Deleted", "NULL", "NULL", "NULL", true,
       "NULL", "NULL"},
      {EventId(2), "customer", "c-1", "Registered",
       R"('{"a": [1, {"b": null}], "c": true}')",
       R"('{"a":[1,2],  "spacing": "kept"}')", R"('\xdeadbeef'::bytea)", false,
       "'{}'",
       absl::StrCat("ARRAY['", EventId(0), "', '", EventId(1), "']::uuid[]")},
      {EventId(3), "order", "o-2", "Broken", R"('{"x": 1}')", "'bad'",
       R"('\x01'::bytea)", true, R"('{"n": 1}')", "NULL"},
      {EventId(4), "customer", "c-2", "Renamed", R"('"a JSON string"')", "''",
       "''::bytea", true, R"('{"tx": "t1"}')", "ARRAY[]::uuid[]"},
      {EventId(5), "order", "o-1", "Updated", "'{}'", "'second transaction'",
       "'ascii'::bytea", true, R"('{"tx": "t2"}')",
       absl::StrCat("ARRAY['", EventId(2), "']::uuid[]")},
  };
  return *events;
}
constexpr int kInvalidEvent = 3;
constexpr int kFirstTransactionSize = 5;

// What the database holds for one event of one table.
struct Expected {
  int n = 0;  // index in Events()
  std::string id, aggregate_type, aggregate_id, type;
  std::optional<std::string> payload;  // the bytes outboxd publishes
  std::optional<std::string> headers_text;
  Headers headers;         // the headers column without reserved names
  std::string depends_on;  // comma-separated, "" when none
  std::string seq;
  int64_t created_us = 0;
  int64_t committed_us = 0;  // the commit time of its transaction
  // Every column as text (dead-letter content).
  std::map<std::string, std::optional<std::string>> columns;
};

bool IsReserved(const std::string& name) {
  return name == "id" || name == "eventType" ||
         absl::StartsWith(name, "outbox.");
}

int64_t ToInt64(const std::optional<std::string>& text) {
  int64_t v = 0;
  EXPECT_TRUE(text.has_value() && absl::SimpleAtoi(*text, &v))
      << text.value_or("NULL");
  return v;
}

// A string field of `j`; what it is instead when it is not one.
std::string Str(const Json& j, const std::string& key) {
  auto it = j.find(key);
  if (it == j.end()) return "(absent)";
  return it->is_string() ? it->get<std::string>()
                         : absl::StrCat("(not a string: ", it->dump(), ")");
}

std::vector<std::string> Names(const Headers& headers) {
  std::vector<std::string> names;
  for (const auto& h : headers) names.push_back(h.first);
  return names;
}

class RecordContractTest : public OutboxdTestBase,
                           public ::testing::WithParamInterface<Mode> {
 protected:
  RecordContractTest()
      : OutboxdTestBase(
            {.db_stem = "rcdb",
             .prefix_stem = "rc",
             .slot_stem = "rcslot",
             .sql_files = {"/sql/outbox.sql", "/sql/outbox_notify.sql"},
             .default_args = {"--metrics-address="},
             .ready = {"streaming from slot", "publishing from"}}) {}

  // track_commit_timestamp: the commit time of a row's transaction
  // (pg_xact_commit_timestamp), the cdc records' timestamp.
  static void SetUpTestSuite() {
    StartServers(/*brokers=*/1, /*partitions=*/4,
                 {.settings = {"track_commit_timestamp=on"}});
  }

  bool Cdc() const { return GetParam() == Mode::kCdc; }

  static std::string Table(const FlagSet& run) {
    return run.name == "payload" ? "public.outbox"
                                 : absl::StrCat("public.outbox_", run.name);
  }
  std::string Slot(const FlagSet& run) const {
    return absl::StrCat(slot_, "_", run.name);
  }
  std::string Dlq(const FlagSet& run) const {
    return absl::StrCat(prefix_, run.name, ".dlq");
  }
  std::string Topic(const FlagSet& run,
                    const std::string& aggregate_type) const {
    return run.fixed_topic
               ? absl::StrCat(prefix_, run.name)
               : absl::StrCat(prefix_, run.name, ".", aggregate_type);
  }

  // outboxd of this mode for `run` (the default table without --table and
  // --publication: the defaults must work; cdc has a slot per run).
  std::vector<std::string> Argv(const FlagSet& run) const {
    std::vector<std::string> argv = {
        OUTBOXD_BINARY,
        "--pg=" + ConnInfo(),
        "--brokers=" + Bootstrap(),
        run.metrics ? "--metrics-address=127.0.0.1:0" : "--metrics-address=",
        "--source=" + ModeName(GetParam()),
        "--dlq-topic=" + Dlq(run),
        "--value-format=" + run.format};
    if (run.fixed_topic) {
      argv.push_back("--topic=" + Topic(run, ""));
    } else {
      argv.push_back(absl::StrCat("--topic-prefix=", prefix_, run.name, "."));
    }
    if (Table(run) != "public.outbox") argv.push_back("--table=" + Table(run));
    if (Cdc()) {
      argv.push_back("--slot=" + Slot(run));
      argv.push_back("--status-interval=200ms");
      if (Table(run) != "public.outbox") {
        argv.push_back("--publication=pub_" + run.name);
      }
    } else if (GetParam() == Mode::kPoll) {
      argv.push_back("--poll-interval=100ms");
    }
    return argv;
  }

  // public.outbox gets a depends_on column; every other run's table is a
  // copy of it with its payload type and the notify trigger.
  void CreateTables() {
    ASSERT_TRUE(
        Exec("ALTER TABLE public.outbox ADD COLUMN depends_on uuid[]").ok());
    for (const FlagSet& run : Runs()) {
      if (Table(run) == "public.outbox") continue;
      const char* type = run.type == PayloadType::kJsonb  ? "jsonb"
                         : run.type == PayloadType::kText ? "text"
                                                          : "bytea";
      ASSERT_TRUE(
          Exec(absl::StrCat(
                   "CREATE TABLE ", Table(run),
                   " (LIKE public.outbox INCLUDING ALL); ALTER TABLE ",
                   Table(run), " ALTER COLUMN payload TYPE ", type,
                   " USING NULL; CREATE TRIGGER outbox_notify AFTER INSERT "
                   "ON ",
                   Table(run),
                   " FOR EACH STATEMENT EXECUTE FUNCTION "
                   "public.outbox_notify()"))
              .ok())
          << run.name;
    }
  }

  // Events [from, to) into `run`'s table in one transaction.
  void Insert(const FlagSet& run, int from, int to) {
    std::vector<std::string> values;
    for (int i = from; i < to; ++i) {
      const EventSql& e = Events()[i];
      const std::string& payload = run.type == PayloadType::kJsonb  ? e.jsonb
                                   : run.type == PayloadType::kText ? e.text
                                                                    : e.bytea;
      values.push_back(absl::StrCat(
          "('", e.id, "', '", e.aggregate_type, "', '", e.aggregate_id, "', '",
          e.type, "', ", payload, ", ", e.headers, ", ", e.depends_on, ")"));
    }
    ASSERT_TRUE(Exec(absl::StrCat("BEGIN; INSERT INTO ", Table(run),
                                  " (id, aggregatetype, aggregateid, type, "
                                  "payload, headers, depends_on) VALUES ",
                                  absl::StrJoin(values, ", "), "; COMMIT"))
                    .ok())
        << run.name;
  }

  // The rows of `run`'s table, by event number.
  std::vector<Expected> ExpectedEvents(const FlagSet& run) {
    std::vector<std::string> columns;
    for (const Row& c : QueryRows(
             ConnInfo(),
             absl::StrCat("SELECT attname::text FROM pg_attribute WHERE "
                          "attrelid = '",
                          Table(run),
                          "'::regclass AND attnum > 0 AND NOT attisdropped "
                          "ORDER BY attnum"))) {
      columns.push_back(*c[0]);
    }
    std::vector<std::string> select = {
        "id::text",
        "aggregatetype",
        "aggregateid",
        "type",
        run.type == PayloadType::kBytea ? "encode(payload, 'hex')"
                                        : "payload::text",
        "headers::text",
        "coalesce(array_to_string(depends_on, ','), '')",
        "seq::text",
        "(extract(epoch FROM created_at) * 1000000)::bigint::text",
        "(extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000000)"
        "::bigint::text"};
    for (const std::string& c : columns) {
      select.push_back(absl::StrCat("\"", c, "\"::text"));
    }
    std::vector<Expected> events(Events().size());
    for (const Row& row : QueryRows(
             ConnInfo(), absl::StrCat("SELECT ", absl::StrJoin(select, ", "),
                                      " FROM ", Table(run)))) {
      Expected e;
      e.id = *row[0];
      e.n = static_cast<int>(
          std::find_if(Events().begin(), Events().end(),
                       [&](const EventSql& s) { return s.id == e.id; }) -
          Events().begin());
      e.aggregate_type = *row[1];
      e.aggregate_id = *row[2];
      e.type = *row[3];
      e.payload = row[4];
      if (e.payload.has_value() && run.type == PayloadType::kBytea) {
        e.payload = absl::HexStringToBytes(*e.payload);
      }
      e.headers_text = row[5];
      if (e.headers_text.has_value() && e.n != kInvalidEvent) {
        Json h = Json::parse(*e.headers_text);
        for (const auto& [name, value] : h.items()) {
          if (!IsReserved(name)) e.headers.emplace_back(name, value);
        }
      }
      e.depends_on = *row[6];
      e.seq = *row[7];
      e.created_us = ToInt64(row[8]);
      e.committed_us = ToInt64(row[9]);
      for (size_t c = 0; c < columns.size(); ++c) {
        e.columns[columns[c]] = row[10 + c];
      }
      if (e.n < static_cast<int>(events.size())) events[e.n] = std::move(e);
    }
    return events;
  }

  // The records of `run`: every topic it publishes to, read side by side.
  std::vector<ConsumedRecord> ReadEvents(const FlagSet& run) {
    std::map<std::string, size_t> per_topic;
    for (const EventSql& e : Events()) {
      if (&e != &Events()[kInvalidEvent])
        ++per_topic[Topic(run, e.aggregate_type)];
    }
    std::vector<std::future<absl::StatusOr<std::vector<ConsumedRecord>>>> reads;
    for (const auto& [topic, n] : per_topic) {
      reads.push_back(std::async(std::launch::async, [this, topic, n] {
        return ReadTopic(Bootstrap(), topic, n, absl::Seconds(60));
      }));
    }
    std::vector<ConsumedRecord> all;
    for (auto& read : reads) {
      auto records = read.get();
      EXPECT_TRUE(records.ok()) << run.name << ": " << records.status();
      if (records.ok()) all.insert(all.end(), records->begin(), records->end());
    }
    return all;
  }

  // The README's timestamp: the commit time of the transaction (cdc), its
  // created_at (poll, notify; to the millisecond).
  void ExpectTimestamp(const ConsumedRecord& r, const Expected& e) {
    EXPECT_TRUE(r.create_time);
    if (Cdc()) {
      EXPECT_EQ(r.timestamp_ms, e.committed_us / 1000)
          << "commit time " << e.committed_us << " us";
    } else {
      EXPECT_LT(std::abs(r.timestamp_ms * 1000 - e.created_us), 1000)
          << "created_at " << e.created_us << " us";
    }
  }

  // The position headers and outbox.source. cdc: outbox.lsn, outbox.index;
  // poll and notify: outbox.seq and neither of the others.
  Headers PositionHeaders(const ConsumedRecord& r, const Expected& e) {
    Headers h;
    if (Cdc()) {
      h.emplace_back("outbox.lsn", r.Header("outbox.lsn").value_or("(absent)"));
      h.emplace_back("outbox.index",
                     absl::StrCat(e.n < kFirstTransactionSize ? e.n : 0));
    } else {
      h.emplace_back("outbox.seq", e.seq);
    }
    return h;
  }

  void ExpectSource(const ConsumedRecord& r, const FlagSet& run) {
    auto source = r.Header("outbox.source");
    ASSERT_TRUE(source.has_value());
    // README "Several databases"; poll and notify name the table in place
    // of the slot.
    EXPECT_EQ(*source, absl::StrCat(system_id_, "/", db_, "/",
                                    Cdc() ? Slot(run) : Table(run)));
  }

  // The value in `run`'s format.
  void ExpectValue(const FlagSet& run, const ConsumedRecord& r,
                   const Expected& e) {
    if (run.format == "payload") {
      EXPECT_EQ(r.value, e.payload);  // NULL: tombstone
      return;
    }
    ASSERT_TRUE(r.value.has_value()) << "only the payload format has "
                                        "tombstones";
    if (run.format == "envelope-json") {
      ExpectEnvelope(run, r, e);
    } else {
      ExpectProtobuf(r, e);
    }
  }

  void ExpectEnvelope(const FlagSet& run, const ConsumedRecord& r,
                      const Expected& e) {
    Json j = Json::parse(*r.value, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(j.is_object()) << *r.value;
    const bool base64 = run.type == PayloadType::kBytea && e.payload &&
                        !Events()[e.n].bytea_is_utf8;
    std::vector<std::string> keys;
    for (const auto& [k, v] : j.items()) keys.push_back(k);
    std::vector<std::string> want = {"id", "aggregatetype", "aggregateid",
                                     "type", "payload"};
    if (base64) want.push_back("payload_encoding");
    want.insert(want.end(), {"headers", "position", "commit_time"});
    EXPECT_EQ(keys, want) << *r.value;
    EXPECT_EQ(Str(j, "id"), e.id);
    EXPECT_EQ(Str(j, "aggregatetype"), e.aggregate_type);
    EXPECT_EQ(Str(j, "aggregateid"), e.aggregate_id);
    EXPECT_EQ(Str(j, "type"), e.type);
    if (!e.payload.has_value()) {
      EXPECT_TRUE(j["payload"].is_null()) << *r.value;
    } else if (base64) {
      EXPECT_EQ(Str(j, "payload_encoding"), "base64");
      EXPECT_EQ(Str(j, "payload"), absl::Base64Escape(*e.payload));
    } else {
      EXPECT_EQ(Str(j, "payload"), *e.payload);
    }
    Json headers = Json::object();
    for (const auto& [name, value] : e.headers) headers[name] = value;
    EXPECT_EQ(j["headers"], headers);
    // The position, to the byte: cdc {"lsn":"<decimal>","index":n} (the
    // headers' values); poll and notify {"seq":"<decimal>"}, the row's seq
    // (a polled row has no commit LSN, none is claimed).
    const std::string position =
        Cdc() ? absl::StrCat(R"("position":{"lsn":")",
                             r.Header("outbox.lsn").value_or("(absent)"),
                             R"(","index":)", HeaderU64(r, "outbox.index"), "}")
              : absl::StrCat(R"("position":{"seq":")", e.seq, R"("})");
    EXPECT_NE(r.value->find(absl::StrCat(",", position, ",")),
              std::string::npos)
        << "want " << position << " in " << *r.value;
    EXPECT_EQ(Str(j, "commit_time"),
              absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ",
                               absl::FromUnixMillis(r.timestamp_ms),
                               absl::UTCTimeZone()));
  }

  void ExpectProtobuf(const ConsumedRecord& r, const Expected& e) {
    outboxd::v1::OutboxEvent m;
    ASSERT_TRUE(m.ParseFromString(*r.value));
    EXPECT_EQ(m.id(), e.id);
    EXPECT_EQ(m.aggregate_type(), e.aggregate_type);
    EXPECT_EQ(m.aggregate_id(), e.aggregate_id);
    EXPECT_EQ(m.type(), e.type);
    EXPECT_EQ(m.has_payload(), e.payload.has_value());
    if (e.payload.has_value()) {
      EXPECT_EQ(m.payload(), *e.payload);
    }
    Headers headers;
    for (const auto& h : m.headers()) headers.emplace_back(h.name(), h.value());
    EXPECT_EQ(headers, e.headers);
    if (Cdc()) {
      EXPECT_EQ(m.position().lsn(), HeaderU64(r, "outbox.lsn"));
      EXPECT_EQ(m.position().index(), HeaderU64(r, "outbox.index"));
      EXPECT_FALSE(m.position().has_seq());
    } else {
      // No commit LSN: Position.seq is the row's seq, lsn and index unset.
      EXPECT_TRUE(m.position().has_seq());
      EXPECT_EQ(m.position().seq(), ToInt64(e.seq));
      EXPECT_EQ(m.position().lsn(), 0u);
      EXPECT_EQ(m.position().index(), 0u);
    }
    EXPECT_EQ(m.commit_time_unix_ms(), r.timestamp_ms);
  }

  // Every part of an event's record.
  void ExpectRecord(const FlagSet& run, const ConsumedRecord& r,
                    const Expected& e) {
    SCOPED_TRACE(absl::StrCat(run.name, " event ", e.n, " (", e.type, ")"));
    EXPECT_EQ(r.topic, Topic(run, e.aggregate_type));
    EXPECT_EQ(r.key, e.aggregate_id);
    ExpectValue(run, r, e);
    ExpectTimestamp(r, e);
    Headers want = {{"id", e.id}, {"eventType", e.type}};
    want.insert(want.end(), e.headers.begin(), e.headers.end());
    for (auto& h : PositionHeaders(r, e)) want.push_back(std::move(h));
    if (!e.depends_on.empty()) {
      want.emplace_back("outbox.depends-on", e.depends_on);
    }
    want.emplace_back("outbox.source", r.Header("outbox.source").value_or(""));
    want.emplace_back("outbox.table", Table(run));  // every mode names it
    EXPECT_EQ(r.headers, want)
        << "names: " << absl::StrJoin(Names(r.headers), ", ");
    ExpectSource(r, run);
  }

  // The dead letter of the invalid event: key, the row as JSON (every value
  // the text of its column), outbox.error and the position headers.
  void ExpectDeadLetter(const FlagSet& run, const ConsumedRecord& r,
                        const Expected& e, uint64_t lsn) {
    SCOPED_TRACE(absl::StrCat(run.name, " dead letter"));
    EXPECT_EQ(r.topic, Dlq(run));
    EXPECT_EQ(r.key, e.aggregate_id);
    ExpectTimestamp(r, e);
    Headers want = {{"outbox.error", "header 'n' is not a string"}};
    if (Cdc()) {
      want.emplace_back("outbox.lsn", absl::StrCat(lsn));
      want.emplace_back("outbox.index", absl::StrCat(kInvalidEvent));
    } else {
      want.emplace_back("outbox.seq", e.seq);
    }
    want.emplace_back("outbox.table", Table(run));
    EXPECT_EQ(r.headers, want)
        << "names: " << absl::StrJoin(Names(r.headers), ", ");
    ASSERT_TRUE(r.value.has_value());
    Json j = Json::parse(*r.value, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(j.is_object()) << *r.value;
    for (const char* column :
         {"id", "aggregatetype", "aggregateid", "type", "payload", "headers"}) {
      EXPECT_TRUE(j.contains(column)) << column << " missing: " << *r.value;
    }
    for (const auto& [column, value] : j.items()) {
      auto it = e.columns.find(column);
      if (it == e.columns.end()) {
        ADD_FAILURE() << "not a column: " << column << " in " << *r.value;
      } else if (it->second.has_value()) {
        EXPECT_EQ(value, *it->second) << column;
      } else {
        EXPECT_TRUE(value.is_null()) << column << ": " << value.dump();
      }
    }
  }

  // Waits until `run`'s outboxd has finished with every row: the slot
  // confirmed past them (cdc), every row marked published (poll, notify).
  bool WaitAllDone(const FlagSet& run, Lsn after) {
    if (Cdc()) return WaitConfirmed(after, absl::Seconds(30), Slot(run));
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (Query(absl::StrCat("SELECT count(*) FROM ", Table(run),
                              " WHERE published_at IS NULL")) != "0") {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return true;
  }

  // The metrics of `run`'s outboxd (log `n`) once it is done: what moved
  // for its 5 events, 1 dead letter and 7 reserved header names.
  void ExpectMetrics(const FlagSet& run, size_t n) {
    SCOPED_TRACE(absl::StrCat(run.name, " metrics"));
    int port = MetricsPort(Log(n));
    ASSERT_GT(port, 0) << Log(n);
    int code = 0;
    const std::string scrape = Get(port, "/metrics", &code);
    ASSERT_EQ(code, 200);
    auto published = [&](const std::string& type) {
      return Sample(scrape, absl::StrCat("outboxd_events_published_total{"
                                         "topic=\"",
                                         Topic(run, type), "\"}"));
    };
    EXPECT_EQ(published("order"), 3) << scrape;
    EXPECT_EQ(published("customer"), 2) << scrape;
    EXPECT_EQ(Sample(scrape, "outboxd_events_dead_lettered_total"), 1);
    EXPECT_EQ(Sample(scrape, "outboxd_invalid_events_total"), 1);
    EXPECT_EQ(Sample(scrape, "outboxd_reserved_headers_dropped_total"), 7);
    EXPECT_EQ(Sample(scrape, "outboxd_commit_to_ack_seconds_count"), 5);
  }

  std::string system_id_;
};

INSTANTIATE_TEST_SUITE_P(Modes, RecordContractTest,
                         ::testing::Values(Mode::kCdc, Mode::kPoll,
                                           Mode::kNotify),
                         [](const auto& info) { return ModeName(info.param); });

TEST_P(RecordContractTest, EveryRecordIsExactlyAsTheReadmeSays) {
  const absl::Time start = absl::Now();
  CreateTables();
  system_id_ = Query("SELECT system_identifier::text FROM pg_control_system()");
  for (const FlagSet& run : Runs()) LaunchOutboxd({}, true, {}, Argv(run));
  ASSERT_FALSE(HasFailure());

  // Both transactions into each table.
  for (const FlagSet& run : Runs()) {
    Insert(run, 0, kFirstTransactionSize);
    Insert(run, kFirstTransactionSize, Events().size());
  }
  const Lsn after = CurrentWalLsn();

  for (size_t i = 0; i < Runs().size(); ++i) {
    const FlagSet& run = Runs()[i];
    const std::vector<Expected> expected = ExpectedEvents(run);
    ASSERT_EQ(expected.size(), Events().size());
    auto dlq = std::async(std::launch::async, [&] {
      return ReadTopic(Bootstrap(), Dlq(run), 1, absl::Seconds(60));
    });
    std::vector<ConsumedRecord> records = ReadEvents(run);
    EXPECT_EQ(records.size(), Events().size() - 1) << run.name << "\n"
                                                   << Log(i);
    std::map<int, const ConsumedRecord*> by_event;
    for (const ConsumedRecord& r : records) {
      auto it = std::find_if(
          expected.begin(), expected.end(),
          [&](const Expected& e) { return r.Header("id") == e.id; });
      if (it == expected.end() || by_event.count(it->n) > 0) {
        ADD_FAILURE() << run.name << ": unexpected record, id "
                      << r.Header("id").value_or("(none)");
        continue;
      }
      by_event[it->n] = &r;
    }
    std::optional<uint64_t> lsn[2];  // per transaction (cdc)
    for (const auto& [n, r] : by_event) {
      const int tx = n < kFirstTransactionSize ? 0 : 1;
      ExpectRecord(run, *r, expected[n]);
      if (Cdc()) {
        uint64_t l = HeaderU64(*r, "outbox.lsn");
        if (!lsn[tx].has_value()) lsn[tx] = l;
        EXPECT_EQ(l, *lsn[tx]) << run.name << ": one LSN per transaction";
      }
    }
    if (Cdc() && lsn[0] && lsn[1]) {
      EXPECT_LT(*lsn[0], *lsn[1]) << run.name;
    }
    // One aggregate's records: one partition, in commit order.
    std::vector<const ConsumedRecord*> o1;
    for (int n : {0, 1, 5}) {
      if (by_event.count(n) > 0) o1.push_back(by_event[n]);
    }
    for (size_t k = 1; k < o1.size(); ++k) {
      EXPECT_EQ(o1[k]->partition, o1[0]->partition) << run.name;
      EXPECT_GT(o1[k]->offset, o1[k - 1]->offset) << run.name;
    }

    auto dead = dlq.get();
    ASSERT_TRUE(dead.ok()) << run.name << ": " << dead.status() << "\n"
                           << Log(i);
    EXPECT_EQ(dead->size(), 1u) << run.name;
    if (!dead->empty()) {
      ExpectDeadLetter(run, dead->front(), expected[kInvalidEvent],
                       lsn[0].value_or(0));
    }
    EXPECT_TRUE(WaitAllDone(run, after)) << run.name << "\n" << Log(i);
    if (run.metrics) ExpectMetrics(run, i);
  }

  // SIGTERM: each exits 0.
  for (size_t i = 0; i < outboxd_.size(); ++i) {
    Outboxd(i).Signal(SIGTERM);
    EXPECT_EQ(Outboxd(i).Wait(absl::Seconds(20)), 0) << Runs()[i].name << "\n"
                                                     << Log(i);
  }
  std::printf("[ measure ] %s: %zu outboxd runs checked in %.1f s\n",
              ModeName(GetParam()).c_str(), Runs().size(),
              absl::ToDoubleSeconds(absl::Now() - start));
}

// Runs outboxd of this mode with `flags` and expects exit 2 with one line
// naming the first flag.
void ExpectRefused(const std::vector<std::string>& base,
                   const std::vector<std::vector<std::string>>& cases) {
  for (const auto& flags : cases) {
    std::vector<std::string> argv = base;
    argv.insert(argv.end(), flags.begin(), flags.end());
    auto r = RunCommand(argv, absl::Seconds(10));
    if (!r.ok()) {  // e.g. still running: the flag was accepted
      ADD_FAILURE() << absl::StrJoin(flags, " ") << ": " << r.status();
      continue;
    }
    const std::string flag = flags[0].substr(0, flags[0].find('='));
    std::string out(absl::StripAsciiWhitespace(r->output));
    EXPECT_EQ(r->exit_code, 2) << absl::StrJoin(flags, " ") << ": " << out;
    EXPECT_TRUE(out.find('\n') == std::string::npos &&
                absl::StartsWith(out, "outboxd: ") &&
                absl::StrContains(out, flag))
        << absl::StrJoin(flags, " ") << ": " << out;
  }
}

// What needs (outbox.lsn, outbox.index) is refused under poll and notify
// (README "Polling and push publishers" and the flag table), and so is every
// other flag of cdc's, given at all (README "Flags": the mode column).
TEST_P(RecordContractTest, AFlagTheModeCannotHonourIsExit2WithOneLine) {
  if (Cdc()) GTEST_SKIP() << "PollOnlyFlagsAreExit2UnderCdc";
  const std::vector<std::string> base = {
      OUTBOXD_BINARY, "--pg=" + ConnInfo(), "--brokers=127.0.0.1:9",
      "--metrics-address=", "--source=" + ModeName(GetParam())};
  ExpectRefused(base, {{"--ordering=global", "--topic=t"},
                       {"--delivery=exactly-once"},
                       {"--on-slot-loss=republish"},
                       {"--on-slot-loss=fail"},
                       {"--cleanup-after=1h"},
                       {"--cleanup-after=0"},
                       {"--republish-margin=1h"},
                       {"--slot=" + slot_},
                       {"--publication=outbox_pub"},
                       {"--status-interval=200ms"},
                       {"--message-prefix=outbox"},
                       {"--transactional-id=t"},
                       {"--transaction-interval=100ms"}});
  if (GetParam() == Mode::kPoll) {
    ExpectRefused(base, {{"--notify-channel=outbox"}});
  }
}

// cdc refuses the poll/notify flags rather than ignore them (e.g.
// --poll-cleanup=delete would run and delete nothing), whatever their value.
TEST_P(RecordContractTest, PollOnlyFlagsAreExit2UnderCdc) {
  if (!Cdc()) GTEST_SKIP() << "cdc only";
  ExpectRefused({OUTBOXD_BINARY, "--pg=" + ConnInfo(), "--brokers=127.0.0.1:9",
                 "--metrics-address=", "--slot=" + slot_, "--source=cdc"},
                {{"--poll-cleanup=delete"},
                 {"--poll-cleanup=mark"},
                 {"--batch-size=10"},
                 {"--poll-grace=1s"},
                 {"--poll-interval=1s"},
                 {"--notify-channel=x"}});
}

}  // namespace
}  // namespace outboxd::testing
