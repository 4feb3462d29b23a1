// Integration tests of the receiving side (issue: the idempotent consumer and
// the three orderings). Real PostgreSQL 15 (one throwaway cluster: an
// "orders" database with the outbox, a "shipping" database per test that
// the inbox writes to), the dev broker, outboxd and outbox-inbox as child
// processes.
#include <libpq-fe.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "kafka/producer.h"
#include "outbox/router.h"
#include "tests/harness/child_process.h"
#include "tests/harness/dev_broker.h"
#include "tests/harness/kafka_cluster.h"
#include "tests/harness/kafka_reader.h"
#include "tests/harness/pg_cluster.h"

namespace outboxd::testing {
namespace {

// Parses the two header values of the position.
std::pair<uint64_t, uint32_t> Position(const ConsumedRecord& r) {
  uint64_t lsn = 0;
  uint32_t index = 0;
  auto l = r.Header("outbox.lsn");
  auto i = r.Header("outbox.index");
  EXPECT_TRUE(l && absl::SimpleAtoi(*l, &lsn));
  EXPECT_TRUE(i && absl::SimpleAtoi(*i, &index));
  return {lsn, index};
}

// Kafka properties that make a restarted consumer rejoin its group quickly
// (a SIGKILLed member is dropped after the session timeout).
const std::vector<std::string> kFastGroup = {
    "--kafka-property=session.timeout.ms=3000",
    "--kafka-property=heartbeat.interval.ms=300",
    "--kafka-property=max.poll.interval.ms=10000",
};

class InboxTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto cluster = PgCluster::Start();
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = cluster->release();
    auto broker = DevBroker::Start(3, 4);
    ASSERT_TRUE(broker.ok()) << broker.status();
    broker_ = broker->release();
  }
  static void TearDownTestSuite() {
    delete broker_;
    delete cluster_;
  }

  void SetUp() override {
    ASSERT_NE(cluster_, nullptr);
    ASSERT_NE(broker_, nullptr);
    ++counter_;
    orders_db_ = absl::StrCat("orders", counter_);
    shipping_db_ = absl::StrCat("shipping", counter_);
    prefix_ = absl::StrCat("i", counter_, ".");
    slot_ = absl::StrCat("islot", counter_);
    group_ = absl::StrCat("shipping", counter_);
    ASSERT_TRUE(cluster_->CreateDatabase(orders_db_).ok());
    ASSERT_TRUE(cluster_->CreateDatabase(shipping_db_).ok());
    std::string install =
        ReadFile(absl::StrCat(OUTBOXD_SOURCE_DIR, "/sql/outbox.sql"));
    ASSERT_FALSE(install.empty());
    ASSERT_TRUE(cluster_->Exec(orders_db_, install).ok());
    ASSERT_TRUE(cluster_
                    ->Exec(orders_db_,
                           "ALTER TABLE outbox ADD COLUMN IF NOT EXISTS "
                           "depends_on uuid[]")
                    .ok());
    // The receiving side: `seq` records the order of application.
    ASSERT_TRUE(Shipping("CREATE TABLE applied (seq bigserial PRIMARY KEY, "
                         "event_id text NOT NULL, aggregate text, "
                         "n integer CHECK (n >= 0), "
                         "applied_at timestamptz NOT NULL "
                         "DEFAULT clock_timestamp())")
                    .ok());
  }

  void TearDown() override {
    for (auto* list : {&inboxes_, &outboxd_}) {
      for (auto& p : *list) {
        if (p->Running()) {
          p->Signal(SIGTERM);
          p->Wait(absl::Seconds(15));
        }
      }
      list->clear();
    }
    cluster_
        ->Exec(orders_db_,
               absl::StrCat("SELECT pg_drop_replication_slot(slot_name) FROM "
                            "pg_replication_slots WHERE database = '",
                            orders_db_, "' AND NOT active"))
        .IgnoreError();
  }

  absl::Status Orders(const std::string& sql) {
    return cluster_->Exec(orders_db_, sql);
  }
  absl::Status Shipping(const std::string& sql) {
    return cluster_->Exec(shipping_db_, sql);
  }
  int64_t ShippingCount(const std::string& sql) {
    auto v = cluster_->Query(shipping_db_, sql);
    EXPECT_TRUE(v.ok()) << v.status();
    int64_t n = -1;
    if (v.ok()) {
      EXPECT_TRUE(absl::SimpleAtoi(*v, &n)) << *v;
    }
    return n;
  }
  // Waits until `sql` (a count on the shipping database) reaches `expected`.
  int64_t WaitForCount(const std::string& sql, int64_t expected,
                       absl::Duration timeout) {
    absl::Time deadline = absl::Now() + timeout;
    int64_t n = -1;
    while (absl::Now() < deadline) {
      n = ShippingCount(sql);
      if (n >= expected) return n;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return n;
  }

  std::string LogPath(const std::string& what, int n) const {
    return absl::StrCat(::testing::TempDir(), "/", orders_db_, "-", what, "-",
                        n, ".log");
  }

  // Starts a child and waits until its log contains `ready`.
  ChildProcess* StartChild(std::vector<std::unique_ptr<ChildProcess>>* list,
                           const std::string& what,
                           std::vector<std::string> argv,
                           const std::string& ready) {
    int n = static_cast<int>(list->size());
    ChildOptions o;
    o.argv = std::move(argv);
    o.capture_stdout = false;
    o.stderr_file = LogPath(what, n);
    std::remove(o.stderr_file.c_str());
    auto child = ChildProcess::Start(o);
    EXPECT_TRUE(child.ok()) << child.status();
    if (!child.ok()) return nullptr;
    list->push_back(*std::move(child));
    ChildProcess* p = list->back().get();
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (!ready.empty() &&
           ReadFile(o.stderr_file).find(ready) == std::string::npos) {
      if (!p->Running() || absl::Now() > deadline) {
        ADD_FAILURE() << what << " not ready:\n" << ReadFile(o.stderr_file);
        break;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    return p;
  }

  ChildProcess* StartOutboxd(std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {OUTBOXD_BINARY,
                                     "--pg=" + cluster_->ConnInfo(orders_db_),
                                     "--brokers=" + Bootstrap(),
                                     "--topic-prefix=" + prefix_,
                                     "--slot=" + slot_,
                                     "--status-interval=200ms",
                                     "--metrics-address="};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return StartChild(&outboxd_, "outboxd", argv, "streaming from slot");
  }

  // The broker the test runs against (a derived fixture may run another).
  virtual std::string Bootstrap() const { return broker_->bootstrap(); }
  virtual absl::Status CreateTopic(const std::string& topic, int partitions) {
    return broker_->CreateTopic(topic, partitions);
  }

  // The shipping service: applies each event to `applied`. With
  // `fast_group`, kFastGroup's properties; otherwise the inbox's defaults.
  ChildProcess* StartInbox(const std::vector<std::string>& topics,
                           std::vector<std::string> extra = {},
                           const std::string& ready = "assigned",
                           bool fast_group = true) {
    std::vector<std::string> argv = {
        OUTBOX_INBOX_BINARY,
        "--pg=" + cluster_->ConnInfo(shipping_db_),
        "--brokers=" + Bootstrap(),
        "--group=" + group_,
        "--topics=" + absl::StrJoin(topics, ","),
        "--handler-sql=INSERT INTO applied (event_id, aggregate, n) VALUES "
        "($7, $1, ($2::jsonb->>'n')::integer)",
        "--dlq-topic=" + prefix_ + "dlq"};
    if (fast_group) {
      argv.insert(argv.end(), kFastGroup.begin(), kFastGroup.end());
    }
    argv.insert(argv.end(), extra.begin(), extra.end());
    return StartChild(&inboxes_, "inbox", argv, ready);
  }

  // Issue 9's liveness case: 3,000 events, two members with the inbox's
  // default group settings (--instance-id=auto, --session-timeout=10s), one
  // SIGKILLed three times (twice mid-stream, once after it) and restarted
  // at once each time; the last 100 events are written right after the
  // last restart. Exactly once, and every effect applied soon after the
  // last restart. Returns the seconds from the last restart to the last
  // effect (-1 if not all came).
  double RestartLiveness(const std::vector<std::string>& extra = {},
                         bool fast_group = false) {
    const std::string topic = prefix_ + "order";
    EXPECT_TRUE(CreateTopic(topic, 4).ok());
    StartOutboxd();
    ChildProcess* a = StartInbox({topic}, extra, "assigned", fast_group);
    ChildProcess* b = StartInbox({topic}, extra, "assigned", fast_group);
    EXPECT_NE(a, nullptr);
    EXPECT_NE(b, nullptr);
    if (a == nullptr || b == nullptr) return -1;
    constexpr int kEvents = 3000;
    constexpr int kBatch = 100;
    // The last kBatch events are written right after the last restart, so
    // the measure below includes work on the restarted member's partitions.
    auto write = [this](int first) {
      return Orders(absl::StrCat(
          "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) "
          "SELECT 'order', 'o-' || (g % 97), 'OrderPlaced', "
          "jsonb_build_object('n', g) FROM generate_series(",
          first, ", ", first + kBatch - 1, ") g"));
    };
    std::atomic<bool> writer_failed{false};
    std::thread writer([&] {
      for (int first = 0; first < kEvents - kBatch; first += kBatch) {
        if (!write(first).ok()) writer_failed = true;
        absl::SleepFor(absl::Milliseconds(50));
      }
    });
    absl::Time last_restart;
    for (int kill = 0; kill < 3; ++kill) {
      // The first two kills mid-stream, the last once the stream is written.
      if (kill == 2) {
        writer.join();
      } else {
        absl::SleepFor(absl::Milliseconds(700));
      }
      b->Signal(SIGKILL);
      b->Wait(absl::Seconds(5));
      last_restart = absl::Now();
      // Not waiting for "assigned": a member that gets its partitions back
      // at once and one that waits for a rebalance are both measured below.
      b = StartInbox({topic}, extra, "starting", fast_group);
      if (b == nullptr) break;
    }
    if (writer.joinable()) writer.join();
    EXPECT_FALSE(writer_failed);
    EXPECT_TRUE(write(kEvents - kBatch).ok());
    int64_t applied = WaitForCount("SELECT count(*) FROM applied", kEvents,
                                   absl::Seconds(120));
    const double seconds = absl::ToDoubleSeconds(absl::Now() - last_restart);
    // When the last effect was committed, by the database's clock.
    const double last_effect =
        static_cast<double>(ShippingCount(
            "SELECT (extract(epoch FROM max(applied_at)) * 1000)::bigint FROM "
            "applied")) /
        1000.0;
    const double restart_s =
        absl::ToDoubleSeconds(last_restart - absl::UnixEpoch());
    absl::SleepFor(absl::Seconds(2));  // anything extra would show now
    EXPECT_EQ(applied, kEvents) << InboxLogs();
    EXPECT_EQ(ShippingCount("SELECT count(*) FROM applied"), kEvents);
    EXPECT_EQ(ShippingCount("SELECT count(DISTINCT n) FROM applied"), kEvents);
    EXPECT_EQ(ShippingCount("SELECT count(*) FROM inbox_processed"), kEvents);
    if (applied < kEvents) return -1;
    std::printf(
        "[ measure ] %d events, 2 members, 3 SIGKILL+restart: exactly once; "
        "last effect %.1f s after the last restart (waited %.1f s)\n",
        kEvents, last_effect - restart_s, seconds);
    return last_effect - restart_s;
  }

  std::vector<ConsumedRecord> Read(const std::string& topic, size_t n,
                                   absl::Duration timeout = absl::Seconds(60)) {
    auto records = ReadTopic(Bootstrap(), topic, n, timeout);
    EXPECT_TRUE(records.ok()) << records.status();
    return records.ok() ? *std::move(records) : std::vector<ConsumedRecord>{};
  }

  std::string InboxLogs() const {
    std::string all;
    for (size_t i = 0; i < inboxes_.size(); ++i) {
      all += ReadFile(LogPath("inbox", static_cast<int>(i)));
    }
    return all;
  }

  static PgCluster* cluster_;
  static DevBroker* broker_;
  static int counter_;
  std::string orders_db_, shipping_db_, prefix_, slot_, group_;
  std::vector<std::unique_ptr<ChildProcess>> outboxd_;
  std::vector<std::unique_ptr<ChildProcess>> inboxes_;
};

PgCluster* InboxTest::cluster_ = nullptr;
DevBroker* InboxTest::broker_ = nullptr;
int InboxTest::counter_ = 0;

// outboxd --value-format=protobuf / envelope-json and the inbox decoding the
// same format: the handler gets the payload, deduplication uses the id inside
// the envelope; a value in another format fails and is dead-lettered.
TEST_F(InboxTest, EnvelopeFormatsAreDecoded) {
  const std::string topic = prefix_ + "order";
  ASSERT_TRUE(broker_->CreateTopic(topic, 4).ok());
  StartOutboxd({"--value-format=protobuf"});
  StartInbox({topic}, {"--value-format=protobuf"});
  ASSERT_TRUE(Orders("INSERT INTO outbox (aggregatetype, aggregateid, type, "
                     "payload) VALUES ('order', 'o-1', 'Placed', "
                     "'{\"n\": 7, \"name\": \"Zoë\"}'), ('order', 'o-2', "
                     "'Placed', '{\"n\": 8}')")
                  .ok());
  EXPECT_EQ(WaitForCount("SELECT count(*) FROM applied", 2, absl::Seconds(60)),
            2);
  EXPECT_EQ(ShippingCount("SELECT sum(n) FROM applied"), 15);
  // The processed ids are the events' ids from inside the envelope.
  EXPECT_EQ(ShippingCount("SELECT count(*) FROM inbox_processed p WHERE "
                          "p.event_id ~ '^[0-9a-f-]{36}$'"),
            2);
}

TEST_F(InboxTest, ValueInAnotherFormatIsDeadLettered) {
  const std::string topic = prefix_ + "order";
  ASSERT_TRUE(broker_->CreateTopic(topic, 4).ok());
  StartOutboxd();  // payload format
  StartInbox({topic}, {"--value-format=envelope-json", "--max-attempts=2",
                       "--retry-backoff=20ms"});
  ASSERT_TRUE(Orders("INSERT INTO outbox (aggregatetype, aggregateid, type, "
                     "payload) VALUES ('order', 'o-1', 'Placed', '[1, 2]')")
                  .ok());
  auto dead = Read(prefix_ + "dlq", 1, absl::Seconds(60));
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(ShippingCount("SELECT count(*) FROM applied"), 0);
  EXPECT_NE(InboxLogs().find("envelope-json"), std::string::npos)
      << InboxLogs();
}

// The same event published twice (two records with one id) is applied once;
// the duplicate is skipped and counted.
TEST_F(InboxTest, SameEventPublishedTwiceIsAppliedOnce) {
  const std::string topic = prefix_ + "order";
  ASSERT_TRUE(broker_->CreateTopic(topic, 4).ok());
  StartOutboxd();
  StartInbox({topic});
  const std::string twice = "6a4c1c1e-0d7b-4c2e-9d0a-3c1f6b2a9e01";
  std::string message = absl::StrCat(
      R"({"id": ")", twice,
      R"(", "aggregatetype": "order", "aggregateid": "o-1", "type": "OrderPlaced", "payload": {"n": 1}})");
  // A logical decoding message and then the very same one again: two
  // records, one event id (what a publisher restart produces).
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(Orders(absl::StrCat("SELECT pg_logical_emit_message(true, "
                                    "'outbox', '",
                                    message, "')"))
                    .ok());
  }
  ASSERT_TRUE(Orders("INSERT INTO outbox (aggregatetype, aggregateid, type, "
                     "payload) VALUES ('order', 'o-1', 'OrderPaid', "
                     "'{\"n\": 2}')")
                  .ok());
  ASSERT_EQ(Read(topic, 3).size(), 3u);
  EXPECT_EQ(WaitForCount("SELECT count(*) FROM applied", 2, absl::Seconds(60)),
            2);
  absl::SleepFor(absl::Seconds(1));
  EXPECT_EQ(ShippingCount("SELECT count(*) FROM applied"), 2);
  EXPECT_EQ(ShippingCount(absl::StrCat(
                "SELECT count(*) FROM applied WHERE event_id = '", twice, "'")),
            1);
  EXPECT_EQ(ShippingCount("SELECT count(*) FROM inbox_processed"), 2);
  // Every record carries its source; the inbox keeps its newest position.
  EXPECT_EQ(ShippingCount("SELECT count(*) FROM inbox_sources WHERE source "
                          "LIKE '%/" +
                          orders_db_ + "/" + slot_ + "'"),
            1);
  EXPECT_NE(InboxLogs().find("duplicate event " + twice), std::string::npos)
      << InboxLogs();
}

// 20,000 events while the consumer is killed with SIGKILL at random moments
// (and the publisher once, which republishes what it had not confirmed):
// every event is applied exactly once.
TEST_F(InboxTest, SigkillAtRandomMomentsAppliesEachEventExactlyOnce) {
  const std::string topic = prefix_ + "order";
  ASSERT_TRUE(broker_->CreateTopic(topic, 4).ok());
  StartOutboxd();
  const int kBatches = 40;
  const int kBatch = 500;
  const int kEvents = kBatches * kBatch;
  std::atomic<bool> writer_failed{false};
  std::atomic<int> batches_written{0};
  std::thread writer([&] {
    for (int b = 0; b < kBatches; ++b) {
      absl::Status s = Orders(absl::StrCat(
          "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) "
          "SELECT 'order', 'o-' || (g % 97), 'OrderPlaced', "
          "jsonb_build_object('n', g) FROM generate_series(",
          b * kBatch, ", ", (b + 1) * kBatch - 1, ") g"));
      if (!s.ok()) writer_failed = true;
      ++batches_written;
      absl::SleepFor(absl::Milliseconds(150));
    }
  });
  std::mt19937 rng(7);
  absl::Time start = absl::Now();
  int kills = 0;
  for (int round = 0; round < 6; ++round) {
    ChildProcess* inbox = StartInbox({topic});
    ASSERT_NE(inbox, nullptr);
    absl::SleepFor(
        absl::Milliseconds(std::uniform_int_distribution<int>(300, 2500)(rng)));
    inbox->Signal(SIGKILL);
    inbox->Wait(absl::Seconds(5));
    ++kills;
    if (round == 2) {
      // The publisher too, right after a batch was written (before its
      // next status update): it resends from its confirmed position, so
      // the inbox sees those events twice, at new offsets.
      int seen = batches_written.load();
      while (batches_written.load() == seen && seen < kBatches) {
        absl::SleepFor(absl::Milliseconds(1));
      }
      absl::SleepFor(absl::Milliseconds(30));
      outboxd_.back()->Signal(SIGKILL);
      outboxd_.back()->Wait(absl::Seconds(5));
      StartOutboxd();
    }
  }
  writer.join();
  ASSERT_FALSE(writer_failed);
  StartInbox({topic});
  int64_t applied =
      WaitForCount("SELECT count(*) FROM applied", kEvents, absl::Seconds(150));
  double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  absl::SleepFor(absl::Seconds(2));  // anything extra would show now
  EXPECT_EQ(applied, kEvents);
  EXPECT_EQ(ShippingCount("SELECT count(*) FROM applied"), kEvents);
  EXPECT_EQ(ShippingCount("SELECT count(DISTINCT event_id) FROM applied"),
            kEvents);
  EXPECT_EQ(ShippingCount("SELECT count(DISTINCT n) FROM applied"), kEvents);
  EXPECT_EQ(ShippingCount("SELECT count(*) FROM inbox_processed"), kEvents);
  size_t in_kafka = Read(topic, kEvents).size();
  size_t duplicates_skipped = 0;
  for (size_t pos = 0;
       (pos = InboxLogs().find("duplicate event", pos)) != std::string::npos;
       ++pos) {
    ++duplicates_skipped;
  }
  EXPECT_GE(in_kafka, static_cast<size_t>(kEvents));
  std::printf(
      "[ measure ] %d events applied exactly once across %d consumer "
      "kills and 1 publisher kill in %.1f s; %zu records in Kafka "
      "(%zu republished), %zu duplicates skipped by the inbox\n",
      kEvents, kills, seconds, in_kafka, in_kafka - kEvents,
      duplicates_skipped);
}

// Issue 9: what a crashed member costs on the dev broker (see README "What a
// crash costs"); the 15 s target is met on real Kafka (KafkaInboxTest).
TEST_F(InboxTest, CrashedMemberCostsSecondsNotMinutes) {
  // librdkafka 2.0.2's mock ignores group.instance.id: each restart joins
  // as a new member and each dead one costs a rebalance once its session
  // (10 s) expires. Measured 36 to 41 s; 130 s with librdkafka's 45 s
  // default before --session-timeout.
  double seconds = RestartLiveness();
  EXPECT_GE(seconds, 0);
  EXPECT_LT(seconds, 90.0);
}

// The same on a real 1-node Apache Kafka (inbox_test_kafka, label kafka):
// its group coordinator honours static membership and rebalances for real.
class KafkaInboxTest : public InboxTest {
 protected:
  void SetUp() override {
    auto kafka = KafkaCluster::Shared({.nodes = 1, .partitions = 4});
    ASSERT_TRUE(kafka.ok()) << kafka.status();
    kafka_ = *kafka;
    InboxTest::SetUp();
  }
  std::string Bootstrap() const override { return kafka_->bootstrap(); }
  absl::Status CreateTopic(const std::string& topic, int partitions) override {
    return kafka_->CreateTopic(topic, partitions);
  }
  KafkaCluster* kafka_ = nullptr;
};

// Static membership (the defaults): the restarted member takes its
// partitions back without waiting for its dead self's session to expire.
TEST_F(KafkaInboxTest, CrashedMemberTakesItsPartitionsBackAtOnce) {
  double seconds = RestartLiveness();
  EXPECT_GE(seconds, 0);
  EXPECT_LT(seconds, 15.0);
}

// Dynamic membership and the broker's shortest session (6 s): every kill
// and restart is a rebalance on the real group coordinator; each effect
// still applies once.
TEST_F(KafkaInboxTest, SigkillMidStreamWithRebalancesAppliesEachEffectOnce) {
  double seconds =
      RestartLiveness({"--instance-id=none", "--session-timeout=6s"});
  EXPECT_GE(seconds, 0);
}

// A session timeout the broker refuses stops the inbox with the reason,
// instead of retrying the join forever.
TEST_F(KafkaInboxTest, SessionTimeoutTheBrokerRefusesIsAClearError) {
  const std::string topic = prefix_ + "order";
  ASSERT_TRUE(CreateTopic(topic, 1).ok());
  ChildProcess* inbox =
      StartInbox({topic}, {"--session-timeout=2s"}, "", /*fast_group=*/false);
  ASSERT_NE(inbox, nullptr);
  auto code = inbox->Wait(absl::Seconds(60));
  ASSERT_TRUE(code.has_value()) << InboxLogs();
  EXPECT_EQ(*code, 1);
  EXPECT_NE(InboxLogs().find("the broker refuses --session-timeout=2s"),
            std::string::npos)
      << InboxLogs();
}

// A handler that keeps failing: after --max-attempts the record is in the
// dead-letter topic and the consumer goes on; with --on-failure=stop it
// exits 1 instead, without committing the record.
TEST_F(InboxTest, FailingHandlerEndsInDeadLetterTopic) {
  const std::string topic = prefix_ + "order";
  ASSERT_TRUE(broker_->CreateTopic(topic, 4).ok());
  StartOutboxd();
  // n = -1 breaks the CHECK (n >= 0) of the receiving table.
  ASSERT_TRUE(Orders("INSERT INTO outbox (aggregatetype, aggregateid, type, "
                     "payload) VALUES "
                     "('order', 'o-1', 'A', '{\"n\": 1}'), "
                     "('order', 'o-1', 'B', '{\"n\": -1}'), "
                     "('order', 'o-1', 'C', '{\"n\": 3}')")
                  .ok());
  std::string bad_id = QueryRows(cluster_->ConnInfo(orders_db_),
                                 "SELECT id::text FROM outbox WHERE type = "
                                 "'B'")[0][0]
                           .value_or("");
  StartInbox({topic}, {"--max-attempts=3", "--retry-backoff=20ms"});
  EXPECT_EQ(WaitForCount("SELECT count(*) FROM applied", 2, absl::Seconds(60)),
            2);
  auto dlq = Read(prefix_ + "dlq", 1);
  ASSERT_EQ(dlq.size(), 1u);
  EXPECT_EQ(dlq[0].Header("id"), bad_id);
  EXPECT_EQ(dlq[0].Header("inbox.attempts"), "3");
  EXPECT_NE(dlq[0].Header("inbox.error").value_or("").find("check"),
            std::string::npos);
  EXPECT_EQ(dlq[0].value, R"({"n": -1})");
  EXPECT_EQ(ShippingCount("SELECT count(*) FROM inbox_processed WHERE status "
                          "= 'dead-lettered'"),
            1);
  // C (after B in the same partition) was applied after B was given up.
  EXPECT_EQ(ShippingCount("SELECT count(*) FROM applied WHERE n = 3"), 1);

  // Stop mode: a fresh group stops at B with exit code 1.
  group_ += "-stop";
  ChildProcess* stopper = StartInbox(
      {topic},
      {"--max-attempts=2", "--retry-backoff=20ms", "--on-failure=stop",
       "--processed-table=stop_processed", "--offsets-table=stop_offsets",
       "--sources-table=stop_sources"});
  ASSERT_NE(stopper, nullptr);
  EXPECT_EQ(stopper->Wait(absl::Seconds(60)), 1);
  EXPECT_EQ(ShippingCount("SELECT count(*) FROM stop_processed"), 1);  // A
  EXPECT_EQ(ShippingCount("SELECT min(next_offset) FROM stop_offsets"),
            ShippingCount("SELECT min(kafka_offset) + 1 FROM stop_processed"));
}

// A record carrying a reserved header twice (as an older outboxd let a
// headers column forge one) is ambiguous: the inbox neither applies it nor
// guesses which value is outboxd's; it fails and is dead-lettered.
TEST_F(InboxTest, RepeatedReservedHeaderIsDeadLetteredNotGuessed) {
  const std::string topic = prefix_ + "order";
  ASSERT_TRUE(broker_->CreateTopic(topic, 4).ok());
  ProducerOptions po;
  po.brokers = broker_->bootstrap();
  bool delivered = false;
  absl::Status delivery;
  auto producer = KafkaProducer::Create(po, [&](uint64_t, absl::Status s) {
    delivered = true;
    delivery = std::move(s);
  });
  ASSERT_TRUE(producer.ok()) << producer.status();
  const std::string forged = R"({"n": 5})";
  const std::string ok_value = R"({"n": 6})";
  KafkaRecord bad;
  bad.topic = topic;
  bad.key = "o-1";
  bad.value = forged;
  bad.headers = {{"id", "6f1c5c1e-0000-4000-8000-0000000000aa"},
                 {"eventType", "A"},
                 {"outbox.lsn", "100"},
                 {"outbox.index", "0"},
                 {"outbox.lsn", "200"}};
  KafkaRecord good = bad;
  good.value = ok_value;
  good.headers = {{"id", "6f1c5c1e-0000-4000-8000-0000000000bb"},
                  {"eventType", "A"},
                  {"tenant", "t1"},
                  {"tenant", "t2"}};  // not reserved: first one counts
  for (KafkaRecord* r : {&bad, &good}) {
    delivered = false;
    ASSERT_TRUE((*producer)->Produce(*r, 1).ok());
    ASSERT_TRUE((*producer)->Flush(absl::Seconds(30)).ok());
    ASSERT_TRUE(delivered && delivery.ok()) << delivery;
  }
  ASSERT_TRUE(Shipping("ALTER TABLE applied ADD COLUMN tenant text").ok());
  ChildProcess* inbox = StartInbox(
      {topic},
      {"--max-attempts=2", "--retry-backoff=20ms",
       "--handler-sql=INSERT INTO applied (event_id, aggregate, n, tenant) "
       "VALUES ($7, $1, ($2::jsonb->>'n')::integer, $3::jsonb->>'tenant')"});
  ASSERT_NE(inbox, nullptr);
  EXPECT_EQ(WaitForCount("SELECT count(*) FROM applied", 1, absl::Seconds(60)),
            1)
      << InboxLogs();
  auto dlq = Read(prefix_ + "dlq", 1);
  ASSERT_EQ(dlq.size(), 1u) << InboxLogs();
  EXPECT_NE(dlq[0].Header("inbox.error").value_or("").find("outbox.lsn"),
            std::string::npos);
  EXPECT_EQ(ShippingCount("SELECT count(*) FROM applied WHERE n = 5"), 0);
  EXPECT_EQ(ShippingCount("SELECT count(*) FROM applied WHERE n = 6 AND "
                          "tenant = 't1'"),
            1);
}

// A deferred constraint trigger of the handler's table fails at COMMIT: that
// is the handler's failure, retried and then dead-lettered (the inbox goes
// on with the next record), not the inbox's own database failure (which
// would exit and wedge on the same record at every start).
TEST_F(InboxTest, HandlerFailingAtCommitIsRetriedThenDeadLettered) {
  ASSERT_TRUE(
      Shipping("CREATE FUNCTION reject_13() RETURNS trigger LANGUAGE plpgsql "
               "AS $$ BEGIN IF NEW.n = 13 THEN RAISE EXCEPTION "
               "'deferred check: n must not be 13' USING ERRCODE = '23514'; "
               "END IF; RETURN NULL; END $$; "
               "CREATE CONSTRAINT TRIGGER applied_not_13 AFTER INSERT ON "
               "applied DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE "
               "FUNCTION reject_13()")
          .ok());
  const std::string topic = prefix_ + "order";
  ASSERT_TRUE(broker_->CreateTopic(topic, 4).ok());
  StartOutboxd();
  ASSERT_TRUE(Orders("INSERT INTO outbox (aggregatetype, aggregateid, type, "
                     "payload) VALUES "
                     "('order', 'o-1', 'A', '{\"n\": 1}'), "
                     "('order', 'o-1', 'B', '{\"n\": 13}'), "
                     "('order', 'o-1', 'C', '{\"n\": 3}')")
                  .ok());
  std::string bad_id = QueryRows(cluster_->ConnInfo(orders_db_),
                                 "SELECT id::text FROM outbox WHERE type = "
                                 "'B'")[0][0]
                           .value_or("");
  ChildProcess* inbox =
      StartInbox({topic}, {"--max-attempts=3", "--retry-backoff=20ms"});
  ASSERT_NE(inbox, nullptr);
  EXPECT_EQ(WaitForCount("SELECT count(*) FROM applied", 2, absl::Seconds(60)),
            2)
      << InboxLogs();
  auto dlq = Read(prefix_ + "dlq", 1);
  ASSERT_EQ(dlq.size(), 1u) << InboxLogs();
  EXPECT_EQ(dlq[0].Header("id"), bad_id);
  EXPECT_EQ(dlq[0].Header("inbox.attempts"), "3");
  EXPECT_NE(dlq[0].Header("inbox.error").value_or("").find("n must not be 13"),
            std::string::npos);
  EXPECT_EQ(ShippingCount("SELECT count(*) FROM applied WHERE n = 13"), 0);
  EXPECT_EQ(ShippingCount("SELECT count(*) FROM inbox_processed WHERE "
                          "status = 'dead-lettered'"),
            1);
  EXPECT_EQ(ShippingCount("SELECT count(*) FROM applied WHERE n = 3"), 1);
  EXPECT_TRUE(inbox->Running()) << InboxLogs();
}

// Per-aggregate order (the default): concurrent writers, 8 partitions, two
// consumers of one group; each aggregate's events are applied in commit
// order.
TEST_F(InboxTest, PerAggregateOrderAcrossPartitionsAndConcurrentWriters) {
  const std::string topic = prefix_ + "order";
  ASSERT_TRUE(broker_->CreateTopic(topic, 8).ok());
  ASSERT_TRUE(Orders("CREATE TABLE counters (agg text PRIMARY KEY, n integer "
                     "NOT NULL); INSERT INTO counters SELECT 'o-' || g, 0 "
                     "FROM generate_series(0, 15) g")
                  .ok());
  StartOutboxd();
  StartInbox({topic});
  StartInbox({topic});
  const int kWriters = 4;
  const int kTransactions = 100;
  std::vector<std::thread> writers;
  std::atomic<int> failures{0};
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      std::mt19937 rng(w);
      PGconn* conn = PQconnectdb(cluster_->ConnInfo(orders_db_).c_str());
      for (int t = 0; t < kTransactions; ++t) {
        // The row lock on the counter orders the aggregate's transactions:
        // commit order == n order.
        std::string agg =
            absl::StrCat("o-", std::uniform_int_distribution<int>(0, 15)(rng));
        std::string sql = absl::StrCat(
            "BEGIN; WITH c AS (UPDATE counters SET n = n + 1 WHERE agg = '",
            agg,
            "' RETURNING n) INSERT INTO outbox (aggregatetype, aggregateid, "
            "type, payload) SELECT 'order', '",
            agg, "', 'Step', jsonb_build_object('n', n) FROM c; COMMIT;");
        PGresult* r = PQexec(conn, sql.c_str());
        if (PQresultStatus(r) != PGRES_COMMAND_OK) ++failures;
        PQclear(r);
      }
      PQfinish(conn);
    });
  }
  for (auto& t : writers) t.join();
  ASSERT_EQ(failures.load(), 0);
  const int kEvents = kWriters * kTransactions;
  ASSERT_EQ(
      WaitForCount("SELECT count(*) FROM applied", kEvents, absl::Seconds(90)),
      kEvents);
  std::map<std::string, int> last;
  int violations = 0;
  for (const Row& r : QueryRows(cluster_->ConnInfo(shipping_db_),
                                "SELECT aggregate, n FROM applied ORDER BY "
                                "seq")) {
    int n = std::stoi(*r[1]);
    if (n != last[*r[0]] + 1) ++violations;
    last[*r[0]] = n;
  }
  EXPECT_EQ(violations, 0);
  // The records really are spread over the partitions.
  std::set<int32_t> partitions;
  for (const auto& rec : Read(topic, kEvents)) partitions.insert(rec.partition);
  EXPECT_GE(partitions.size(), 4u);
  // Both consumers got partitions.
  EXPECT_EQ(ShippingCount("SELECT count(DISTINCT kafka_partition) FROM "
                          "inbox_offsets"),
            static_cast<int64_t>(partitions.size()));
}

// --ordering=global: one partition, (outbox.lsn, outbox.index) strictly
// increasing over events of many concurrent transactions. Also measures what
// it costs the publisher against per-aggregate routing on the same events.
TEST_F(InboxTest, GlobalOrderingIsOneStrictlyIncreasingStream) {
  const std::string global_topic = prefix_ + "all";
  ASSERT_TRUE(broker_->CreateTopic(global_topic, 4).ok());
  ASSERT_TRUE(broker_->CreateTopic(prefix_ + "order", 4).ok());
  // Two slots see the same WAL: one per mode.
  const std::string slot_global = slot_ + "_global";
  const std::string slot_aggregate = slot_ + "_aggregate";
  for (const auto& s : {slot_global, slot_aggregate}) {
    ASSERT_TRUE(Orders(absl::StrCat("SELECT pg_create_logical_replication_"
                                    "slot('",
                                    s, "', 'pgoutput')"))
                    .ok());
  }
  const int kWriters = 4;
  const int kTransactions = 250;
  const int kPerTx = 5;
  std::vector<std::thread> writers;
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      PGconn* conn = PQconnectdb(cluster_->ConnInfo(orders_db_).c_str());
      for (int t = 0; t < kTransactions; ++t) {
        std::string sql = absl::StrCat(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) "
            "SELECT 'order', 'w",
            w, "-' || g, 'E', jsonb_build_object('n', ", t,
            ") FROM generate_series(1, ", kPerTx, ") g");
        PQclear(PQexec(conn, sql.c_str()));
      }
      PQfinish(conn);
    });
  }
  for (auto& t : writers) t.join();
  const int kEvents = kWriters * kTransactions * kPerTx;
  std::string end_lsn =
      cluster_->Query(orders_db_, "SELECT pg_current_wal_lsn()::text")
          .value_or("");

  // Publish the same events both ways; time until the slot is confirmed
  // past the last write.
  auto publish = [&](const std::string& slot,
                     std::vector<std::string> extra) -> double {
    slot_ = slot;
    absl::Time start = absl::Now();
    ChildProcess* p = StartOutboxd(std::move(extra));
    absl::Time deadline = absl::Now() + absl::Seconds(90);
    while (absl::Now() < deadline) {
      auto done = cluster_->Query(
          orders_db_, absl::StrCat("SELECT confirmed_flush_lsn >= '", end_lsn,
                                   "'::pg_lsn FROM pg_replication_slots WHERE "
                                   "slot_name = '",
                                   slot, "'"));
      if (done.ok() && *done == "t") break;
      absl::SleepFor(absl::Milliseconds(20));
    }
    double seconds = absl::ToDoubleSeconds(absl::Now() - start);
    p->Signal(SIGTERM);
    p->Wait(absl::Seconds(15));
    return seconds;
  };
  double aggregate_s = publish(slot_aggregate, {});
  double global_s =
      publish(slot_global, {"--ordering=global", "--topic=" + global_topic});
  std::printf(
      "[ measure ] %d events (startup included): per-aggregate %.2f s "
      "(%.0f/s), global %.2f s (%.0f/s)\n",
      kEvents, aggregate_s, kEvents / aggregate_s, global_s,
      kEvents / global_s);

  auto records = Read(global_topic, kEvents);
  ASSERT_EQ(records.size(), static_cast<size_t>(kEvents));
  std::pair<uint64_t, uint32_t> prev{0, 0};
  std::set<uint64_t> transactions;
  int violations = 0;
  for (size_t i = 0; i < records.size(); ++i) {
    EXPECT_EQ(records[i].partition, 0);
    auto pos = Position(records[i]);
    if (i > 0 && !(prev < pos)) ++violations;
    prev = pos;
    transactions.insert(pos.first);
  }
  EXPECT_EQ(violations, 0);
  EXPECT_EQ(transactions.size(), static_cast<size_t>(kWriters * kTransactions));

  // A consumer of the global topic applies them in that order too.
  StartInbox({global_topic});
  ASSERT_EQ(
      WaitForCount("SELECT count(*) FROM applied", kEvents, absl::Seconds(90)),
      kEvents);
  int64_t inversions = ShippingCount(
      "SELECT count(*) FROM (SELECT p.lsn, p.event_index, lag(p.lsn) OVER w "
      "AS plsn, lag(p.event_index) OVER w AS pidx FROM applied a JOIN "
      "inbox_processed p USING (event_id) WINDOW w AS (ORDER BY a.seq)) x "
      "WHERE (lsn, event_index) <= (plsn, pidx)");
  EXPECT_EQ(inversions, 0);
}

// Causal order: B depends on A; B travels on another partition and arrives
// first. The inbox defers B (and what follows B on its partition) until A
// is applied. A dependency that never comes is dead-lettered after the wait.
TEST_F(InboxTest, EventWaitsForDependencyFromAnotherPartition) {
  const std::string topic = prefix_ + "order";
  ASSERT_TRUE(broker_->CreateTopic(topic, 4).ok());
  StartOutboxd();
  StartInbox({topic}, {"--dependency-wait=4s"});
  const std::string a = "0a0a0a0a-0000-4000-8000-00000000000a";
  const std::string b = "0b0b0b0b-0000-4000-8000-00000000000b";
  const std::string never = "0e0e0e0e-0000-4000-8000-00000000000e";
  // B first (aggregate k-b), with B2 behind it on the same aggregate.
  ASSERT_TRUE(
      Orders(absl::StrCat("INSERT INTO outbox (id, aggregatetype, aggregateid, "
                          "type, payload, depends_on) VALUES ('",
                          b, "', 'order', 'k-b', 'B', '{\"n\": 2}', ARRAY['", a,
                          "']::uuid[]), (gen_random_uuid(), 'order', 'k-b', "
                          "'B2', '{\"n\": 3}', NULL)"))
          .ok());
  // Let B reach the inbox and wait there.
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (InboxLogs().find("event " + b + " ") == std::string::npos &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(ShippingCount("SELECT count(*) FROM applied"), 0);
  ASSERT_TRUE(Orders(absl::StrCat("INSERT INTO outbox (id, aggregatetype, "
                                  "aggregateid, type, payload) VALUES ('",
                                  a, "', 'order', 'k-a', 'A', '{\"n\": 1}')"))
                  .ok());
  ASSERT_EQ(WaitForCount("SELECT count(*) FROM applied", 3, absl::Seconds(30)),
            3);
  std::vector<std::string> order;
  for (const Row& r : QueryRows(cluster_->ConnInfo(shipping_db_),
                                "SELECT n FROM applied ORDER BY seq")) {
    order.push_back(*r[0]);
  }
  EXPECT_EQ(order, (std::vector<std::string>{"1", "2", "3"}));
  auto records = Read(topic, 3);
  ASSERT_EQ(records.size(), 3u);
  std::map<std::string, int32_t> partition_of;
  for (const auto& r : records) partition_of[r.key] = r.partition;
  EXPECT_NE(partition_of["k-a"], partition_of["k-b"])
      << "pick aggregate ids that land on different partitions";
  for (const auto& r : records) {
    if (r.Header("id") == b) {
      EXPECT_EQ(r.Header("outbox.depends-on"), a);
    }
    EXPECT_TRUE(r.Header("outbox.source").has_value());
  }

  // A dependency that never arrives: dead-lettered after --dependency-wait.
  ASSERT_TRUE(
      Orders(absl::StrCat("INSERT INTO outbox (aggregatetype, aggregateid, "
                          "type, payload, depends_on) VALUES ('order', 'k-c', "
                          "'C', '{\"n\": 4}', ARRAY['",
                          never, "']::uuid[])"))
          .ok());
  auto dlq = Read(prefix_ + "dlq", 1, absl::Seconds(30));
  ASSERT_EQ(dlq.size(), 1u);
  EXPECT_NE(dlq[0].Header("inbox.error").value_or("").find(never),
            std::string::npos);
  EXPECT_EQ(ShippingCount("SELECT count(*) FROM applied"), 3);
}

}  // namespace
}  // namespace outboxd::testing
