// --cloudevents end to end on a real Apache Kafka (one KRaft node): outboxd
// publishes outbox rows and a logical decoding message in binary mode (cdc)
// and in structured mode (poll), an independent librdkafka consumer reads
// them back and checks them against the Kafka protocol binding's rules (the
// ce_ header names, UTF-8 values, the source URI, RFC 3339 time, the
// content type, data vs data_base64, tombstones), and outbox-inbox consumes
// both modes: its handler gets the payload and the attributes.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/harness/child_process.h"
#include "tests/harness/kafka_cluster.h"
#include "tests/harness/kafka_reader.h"
#include "tests/harness/pg_cluster.h"

namespace outboxd::testing {
namespace {

constexpr char kStructuredContentType[] =
    "application/cloudevents+json; charset=UTF-8";

class CloudEventsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto cluster = PgCluster::Start();
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = cluster->release();
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(cluster_, nullptr);
    auto kafka = KafkaCluster::Shared({.nodes = 1, .partitions = 1});
    ASSERT_TRUE(kafka.ok()) << kafka.status();
    kafka_ = *kafka;
    ++counter_;
    db_ = absl::StrCat("ce", counter_);
    inbox_db_ = absl::StrCat("ceinbox", counter_);
    prefix_ = absl::StrCat("ce", counter_, ".");
    topic_ = prefix_ + "order";
    ASSERT_TRUE(cluster_->CreateDatabase(db_).ok());
    ASSERT_TRUE(cluster_->CreateDatabase(inbox_db_).ok());
    std::string install =
        ReadFile(absl::StrCat(OUTBOXD_SOURCE_DIR, "/sql/outbox.sql"));
    ASSERT_FALSE(install.empty());
    ASSERT_TRUE(cluster_->Exec(db_, install).ok());
    // The per-row content type (--column-content-type's default name).
    ASSERT_TRUE(
        cluster_->Exec(db_, "ALTER TABLE outbox ADD COLUMN content_type text")
            .ok());
    ASSERT_TRUE(cluster_
                    ->Exec(inbox_db_,
                           "CREATE TABLE received (event_id text PRIMARY KEY, "
                           "value text, attributes jsonb)")
                    .ok());
    ASSERT_TRUE(kafka_->CreateTopic(topic_, 1).ok());
  }

  void TearDown() override {
    for (auto& p : children_) {
      if (p != nullptr && p->Running()) {
        p->Signal(SIGTERM);
        if (!p->Wait(absl::Seconds(15)).has_value()) p->Signal(SIGKILL);
        p->Wait(absl::Seconds(5));
      }
    }
    children_.clear();
    cluster_
        ->Exec(db_, absl::StrCat("SELECT pg_drop_replication_slot(slot_name) "
                                 "FROM pg_replication_slots WHERE database = '",
                                 db_, "' AND NOT active"))
        .IgnoreError();
  }

  // Starts `argv` with its log in a file, and waits for `ready` in it.
  void Start(const std::string& what, std::vector<std::string> argv,
             const std::string& ready) {
    ChildOptions o;
    o.argv = std::move(argv);
    o.capture_stdout = false;
    o.stderr_file = absl::StrCat(::testing::TempDir(), "/", db_, "-", getpid(),
                                 "-", what, ".log");
    std::remove(o.stderr_file.c_str());
    auto child = ChildProcess::Start(o);
    ASSERT_TRUE(child.ok()) << child.status();
    children_.push_back(*std::move(child));
    ChildProcess* p = children_.back().get();
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (ReadFile(o.stderr_file).find(ready) == std::string::npos) {
      ASSERT_TRUE(p->Running() && absl::Now() < deadline)
          << what << " not ready:\n"
          << ReadFile(o.stderr_file);
      absl::SleepFor(absl::Milliseconds(20));
    }
  }

  void StartOutboxd(std::vector<std::string> extra, const std::string& ready) {
    std::vector<std::string> argv = {
        OUTBOXD_BINARY, "--pg=" + cluster_->ConnInfo(db_),
        "--brokers=" + kafka_->bootstrap(), "--topic-prefix=" + prefix_,
        "--metrics-address="};
    argv.insert(argv.end(), extra.begin(), extra.end());
    Start("outboxd", std::move(argv), ready);
  }

  // outbox-inbox over the topic; its handler stores the event id, the value
  // it is given and the CloudEvents attributes.
  void StartInbox() {
    Start("inbox",
          {OUTBOX_INBOX_BINARY, "--pg=" + cluster_->ConnInfo(inbox_db_),
           "--brokers=" + kafka_->bootstrap(), "--group=" + prefix_ + "inbox",
           "--topics=" + topic_,
           "--handler-sql=INSERT INTO received VALUES ($7, $2, $9::jsonb)",
           "--dlq-topic=" + prefix_ + "dlq", "--instance-id=none",
           "--kafka-property=session.timeout.ms=6000",
           "--kafka-property=heartbeat.interval.ms=300"},
          "assigned");
  }

  std::vector<ConsumedRecord> Read(size_t n) {
    auto records = ReadTopic(kafka_->bootstrap(), topic_, n, absl::Seconds(60),
                             absl::Milliseconds(500));
    EXPECT_TRUE(records.ok()) << records.status();
    return records.ok() ? *std::move(records) : std::vector<ConsumedRecord>{};
  }

  // The inbox's rows by event id: value, attributes (JSON text), after
  // waiting for `n` of them.
  std::map<std::string, std::pair<std::optional<std::string>, nlohmann::json>>
  Received(size_t n) {
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    std::vector<Row> rows;
    while (absl::Now() < deadline) {
      rows = QueryRows(cluster_->ConnInfo(inbox_db_),
                       "SELECT event_id, value, attributes FROM received");
      if (rows.size() >= n) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    EXPECT_EQ(rows.size(), n);
    std::map<std::string, std::pair<std::optional<std::string>, nlohmann::json>>
        out;
    for (const Row& row : rows) {
      out[*row[0]] = {row[1], row[2].has_value()
                                  ? nlohmann::json::parse(*row[2])
                                  : nlohmann::json()};
    }
    return out;
  }

  // Checks the binding's rules shared by every record of outboxd: the
  // attributes as headers (binary mode and tombstones) agree with outboxd's
  // own headers, the key and the timestamp.
  static void ExpectAttributeHeaders(const ConsumedRecord& r) {
    SCOPED_TRACE(r.Header("id").value_or("?"));
    EXPECT_EQ(r.Header("ce_specversion"), "1.0");
    EXPECT_EQ(r.Header("ce_id"), r.Header("id"));
    EXPECT_EQ(r.Header("ce_type"), r.Header("eventType"));
    EXPECT_EQ(r.Header("ce_subject"), r.key);
    ExpectSource(r.Header("ce_source").value_or(""), r);
    ExpectTime(r.Header("ce_time").value_or(""), r);
    // No attribute header twice.
    std::map<std::string, int> seen;
    for (const auto& [name, value] : r.headers) {
      if (absl::StartsWith(name, "ce_") || name == "content-type") {
        EXPECT_EQ(++seen[name], 1) << name;
      }
    }
  }

  // The default source: "/outboxd/" + outbox.source (no byte of it needs
  // percent-encoding here), a URI-reference.
  static void ExpectSource(const std::string& source, const ConsumedRecord& r) {
    EXPECT_EQ(source, "/outboxd/" + r.Header("outbox.source").value_or("?"));
    EXPECT_TRUE(std::regex_match(
        source, std::regex("[A-Za-z0-9._~:/?#\\[\\]@!$&'()*+,;=%-]+")))
        << source;
  }

  // RFC 3339 in UTC with milliseconds, the commit time (the CreateTime).
  static void ExpectTime(const std::string& time, const ConsumedRecord& r) {
    EXPECT_TRUE(r.create_time);
    EXPECT_EQ(time, absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ",
                                     absl::FromUnixMillis(r.timestamp_ms),
                                     absl::UTCTimeZone()));
    EXPECT_TRUE(std::regex_match(
        time, std::regex("[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
                         "\\.[0-9]{3}Z")))
        << time;
  }

  static const ConsumedRecord* ByType(const std::vector<ConsumedRecord>& rs,
                                      const std::string& type) {
    for (const ConsumedRecord& r : rs) {
      if (r.Header("eventType") == type) return &r;
    }
    ADD_FAILURE() << "no record of type " << type;
    return nullptr;
  }

  static PgCluster* cluster_;
  static int counter_;
  KafkaCluster* kafka_ = nullptr;
  std::string db_, inbox_db_, prefix_, topic_;
  std::vector<std::unique_ptr<ChildProcess>> children_;
};

PgCluster* CloudEventsTest::cluster_ = nullptr;
int CloudEventsTest::counter_ = 0;

// Binary mode, cdc: the value is the payload, the attributes are ce_
// headers, content-type is the row's own or its column type's; a NULL
// payload is a tombstone; a logical decoding message is application/json.
TEST_F(CloudEventsTest, BinaryModeRoundTripThroughApacheKafkaAndTheInbox) {
  StartOutboxd({"--slot=" + prefix_.substr(0, prefix_.size() - 1) + "_slot",
                "--status-interval=200ms", "--cloudevents=binary"},
               "streaming from slot");
  ASSERT_TRUE(
      cluster_
          ->Exec(db_,
                 "BEGIN; INSERT INTO outbox (aggregatetype, "
                 "aggregateid, type, payload, content_type) VALUES "
                 "('order', 'Zoë-1', 'OrderPlaced', '{\"n\": 1}', "
                 "NULL), ('order', 'o-2', 'OrderShipped', '{\"n\": 2}', "
                 "'application/vnd.shop.order+json'), ('order', 'o-3', "
                 "'OrderDeleted', NULL, NULL); SELECT "
                 "pg_logical_emit_message(true, 'outbox', "
                 "'{\"id\":\"m-1\",\"aggregatetype\":\"order\","
                 "\"aggregateid\":\"o-4\",\"type\":\"OrderNoted\","
                 "\"payload\":{\"n\":4}}'); COMMIT")
          .ok());
  std::vector<ConsumedRecord> records = Read(4);
  ASSERT_EQ(records.size(), 4u);
  for (const ConsumedRecord& r : records) ExpectAttributeHeaders(r);

  const ConsumedRecord* placed = ByType(records, "OrderPlaced");
  ASSERT_NE(placed, nullptr);
  EXPECT_EQ(placed->key, "Zoë-1");  // UTF-8 in key and ce_subject alike
  EXPECT_EQ(placed->Header("ce_subject"), "Zoë-1");
  EXPECT_EQ(placed->value, "{\"n\": 1}");
  EXPECT_EQ(placed->Header("content-type"), "application/json");  // jsonb

  const ConsumedRecord* shipped = ByType(records, "OrderShipped");
  ASSERT_NE(shipped, nullptr);
  EXPECT_EQ(shipped->Header("content-type"), "application/vnd.shop.order+json");

  const ConsumedRecord* deleted = ByType(records, "OrderDeleted");
  ASSERT_NE(deleted, nullptr);
  EXPECT_FALSE(deleted->value.has_value());  // still a tombstone
  EXPECT_EQ(deleted->Header("content-type"), std::nullopt);  // no data

  const ConsumedRecord* noted = ByType(records, "OrderNoted");
  ASSERT_NE(noted, nullptr);
  EXPECT_EQ(noted->Header("ce_id"), "m-1");
  EXPECT_EQ(noted->Header("content-type"), "application/json");
  EXPECT_EQ(noted->value, "{\"n\":4}");

  // The inbox: the payload as value, the attributes beside it.
  StartInbox();
  auto received = Received(4);
  const auto& [value, attrs] = received[*placed->Header("id")];
  EXPECT_EQ(value, "{\"n\": 1}");
  EXPECT_EQ(attrs["specversion"], "1.0");
  EXPECT_EQ(attrs["subject"], "Zoë-1");
  EXPECT_EQ(attrs["type"], "OrderPlaced");
  EXPECT_EQ(attrs["datacontenttype"], "application/json");
  EXPECT_EQ(attrs["source"], *placed->Header("ce_source"));
  EXPECT_EQ(attrs["time"], *placed->Header("ce_time"));
  const auto& [tombstone, tombstone_attrs] = received[*deleted->Header("id")];
  EXPECT_FALSE(tombstone.has_value());
  EXPECT_EQ(tombstone_attrs["type"], "OrderDeleted");
  EXPECT_EQ(received["m-1"].first, "{\"n\":4}");
}

// Structured mode, poll: the value is one JSON event format document; data
// is the JSON payload verbatim, a text payload as a string, anything else
// data_base64; a NULL payload is still a tombstone (binary-mode headers).
TEST_F(CloudEventsTest, StructuredModeRoundTripThroughApacheKafkaAndTheInbox) {
  StartOutboxd(
      {"--source=poll", "--poll-interval=100ms", "--cloudevents=structured"},
      "publishing from");
  ASSERT_TRUE(
      cluster_
          ->Exec(
              db_,
              "INSERT INTO outbox (aggregatetype, aggregateid, type, "
              "payload, content_type) VALUES "
              "('order', 'o-1', 'OrderPlaced', "
              "'{\"n\": 1, \"big\": 123456789012345678901234567890}', NULL), "
              "('order', 'o-2', 'OrderPacked', '{\"n\": 2}', "
              "'application/octet-stream'), "
              "('order', 'o-3', 'OrderNoted', '\"a note\"', "
              "'text/plain; charset=utf-8'), "
              "('order', 'o-4', 'OrderDeleted', NULL, NULL)")
          .ok());
  std::vector<ConsumedRecord> records = Read(4);
  ASSERT_EQ(records.size(), 4u);
  std::map<std::string, nlohmann::json> docs;
  for (const ConsumedRecord& r : records) {
    SCOPED_TRACE(r.Header("eventType").value_or("?"));
    if (!r.value.has_value()) continue;  // the tombstone, below
    EXPECT_EQ(r.Header("content-type"), kStructuredContentType);
    EXPECT_EQ(r.Header("ce_id"), std::nullopt);  // attributes in the value
    nlohmann::json doc = nlohmann::json::parse(*r.value, nullptr, false);
    ASSERT_TRUE(doc.is_object()) << *r.value;
    EXPECT_EQ(doc["specversion"], "1.0");
    EXPECT_EQ(doc["id"], *r.Header("id"));
    EXPECT_EQ(doc["type"], *r.Header("eventType"));
    EXPECT_EQ(doc["subject"], r.key);
    ExpectSource(doc["source"].get<std::string>(), r);
    ExpectTime(doc["time"].get<std::string>(), r);
    docs[*r.Header("eventType")] = doc;
  }
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs["OrderPlaced"]["datacontenttype"], "application/json");
  // The payload's own text: the big number is not rounded to a double.
  const ConsumedRecord* placed = ByType(records, "OrderPlaced");
  ASSERT_NE(placed, nullptr);
  EXPECT_TRUE(absl::StrContains(
      *placed->value,
      "\"data\":{\"n\": 1, \"big\": 123456789012345678901234567890}"))
      << *placed->value;
  EXPECT_EQ(docs["OrderPacked"]["data_base64"],
            absl::Base64Escape("{\"n\": 2}"));
  EXPECT_FALSE(docs["OrderPacked"].contains("data"));
  EXPECT_EQ(docs["OrderNoted"]["data"], "\"a note\"");

  const ConsumedRecord* deleted = ByType(records, "OrderDeleted");
  ASSERT_NE(deleted, nullptr);
  EXPECT_FALSE(deleted->value.has_value());
  ExpectAttributeHeaders(*deleted);
  EXPECT_EQ(deleted->Header("content-type"), std::nullopt);

  // The inbox: each event's data as the value.
  StartInbox();
  auto received = Received(4);
  EXPECT_EQ(received[*placed->Header("id")].first,
            "{\"n\": 1, \"big\": 123456789012345678901234567890}");
  EXPECT_EQ(received[*placed->Header("id")].second["source"],
            docs["OrderPlaced"]["source"]);
  EXPECT_EQ(received[*ByType(records, "OrderPacked")->Header("id")].first,
            "{\"n\": 2}");
  EXPECT_EQ(received[*ByType(records, "OrderNoted")->Header("id")].first,
            "\"a note\"");
  EXPECT_FALSE(received[*deleted->Header("id")].first.has_value());
}

}  // namespace
}  // namespace outboxd::testing
