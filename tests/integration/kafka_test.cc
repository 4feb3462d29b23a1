// outboxd against a real Apache Kafka (ctest label kafka): the partition
// each key lands in agrees with Kafka's own Java producer, and a leader
// killed with SIGKILL under load loses nothing, duplicates nothing and never
// lets the slot be confirmed past an unacknowledged event.
#include <libpq-fe.h>

#include <algorithm>
#include <atomic>
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

#include "absl/cleanup/cleanup.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/lsn.h"
#include "gtest/gtest.h"
#include "kafka/producer.h"
#include "kafka/read_back.h"
#include "nlohmann/json.hpp"
#include "outbox/router.h"
#include "tests/fakes/id_records.h"
#include "tests/harness/child_process.h"
#include "tests/harness/kafka_cluster.h"
#include "tests/harness/kafka_reader.h"
#include "tests/harness/outboxd_test_base.h"

namespace outboxd::testing {
namespace {

// A PostgreSQL string literal ('' doubles the quote; the harness's servers
// run with standard_conforming_strings on).
std::string Literal(const std::string& text) {
  return absl::StrCat("'", absl::StrReplaceAll(text, {{"'", "''"}}), "'");
}

// 10,000 distinct keys: the empty key, ASCII of 1 to 40 printable bytes and
// UTF-8 built from Cyrillic, CJK, accented Latin and emoji code points.
std::vector<std::string> RandomKeys(size_t count) {
  std::mt19937 rng(20260901);
  const std::vector<std::string> non_ascii = {
      "é", "ß", "ø", "ж", "ключ", "東", "京", "키", "🚀", "😀", "ñ", "Ω"};
  std::set<std::string> seen = {""};
  std::vector<std::string> keys = {""};
  while (keys.size() < count) {
    std::string key;
    int length = std::uniform_int_distribution<int>(1, 40)(rng);
    bool utf8 = keys.size() % 3 == 0;
    for (int i = 0; i < length; ++i) {
      if (utf8 && std::uniform_int_distribution<int>(0, 2)(rng) == 0) {
        key += non_ascii[std::uniform_int_distribution<size_t>(
            0, non_ascii.size() - 1)(rng)];
      } else {
        key +=
            static_cast<char>(std::uniform_int_distribution<int>(32, 126)(rng));
      }
    }
    if (seen.insert(key).second) keys.push_back(key);
  }
  return keys;
}

// The fixture's bootstrap is a real Kafka; `kafka_` is set by the derived
// fixture's SetUp before OutboxdTestBase::SetUp.
class RealKafkaTest : public OutboxdTestBase {
 protected:
  RealKafkaTest()
      : OutboxdTestBase(
            {.db_stem = "kdb", .prefix_stem = "k", .slot_stem = "kslot"}) {}
  std::string Bootstrap() const override { return kafka_->bootstrap(); }
  KafkaCluster* kafka_ = nullptr;
};

class JavaAgreementTest : public RealKafkaTest {
 protected:
  void SetUp() override {
    auto kafka = KafkaCluster::Shared({.nodes = 1, .partitions = 4});
    ASSERT_TRUE(kafka.ok()) << kafka.status();
    kafka_ = *kafka;
    RealKafkaTest::SetUp();
  }
};

// For 10,000 keys (empty and non-ASCII included) the partition outboxd's
// record lands in on a 12-partition topic is the partition Kafka's Java
// producer (kafka-clients, default partitioner) picks for the same key.
TEST_F(JavaAgreementTest, EveryKeyLandsWhereTheJavaProducerPutsIt) {
  const size_t kKeys = 10000;
  const int kPartitions = 12;
  const std::string topic = prefix_ + "keys";
  const std::string java_topic = prefix_ + "java";
  ASSERT_TRUE(kafka_->CreateTopic(topic, kPartitions).ok());
  ASSERT_TRUE(kafka_->CreateTopic(java_topic, kPartitions).ok());
  std::vector<std::string> keys = RandomKeys(kKeys);

  // The Java producer first (it runs while outboxd is not yet started).
  const std::string keys_file =
      absl::StrCat(::testing::TempDir(), "/", db_, "-", getpid(), "-keys.hex");
  const std::string out_file =
      absl::StrCat(::testing::TempDir(), "/", db_, "-", getpid(), "-java.out");
  {
    std::ofstream out(keys_file);
    for (const auto& key : keys) out << absl::BytesToHexString(key) << "\n";
  }
  std::remove(out_file.c_str());
  absl::Time java_start = absl::Now();
  auto java = RunCommand(
      {"java", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp",
       kafka_->LibsDir() + "/*",
       std::string(OUTBOXD_SOURCE_DIR) + "/tests/kafka/JavaPartitions.java",
       kafka_->bootstrap(), java_topic, keys_file, out_file},
      absl::Seconds(180));
  ASSERT_TRUE(java.ok()) << java.status();
  ASSERT_EQ(java->exit_code, 0) << java->output;
  std::vector<int> java_partition(kKeys, -1);
  {
    std::ifstream in(out_file);
    size_t index;
    int partition;
    while (in >> index >> partition) {
      ASSERT_LT(index, kKeys);
      java_partition[index] = partition;
    }
  }
  const double java_seconds = absl::ToDoubleSeconds(absl::Now() - java_start);

  // outboxd: one event per key, written through PostgreSQL.
  StartOutboxd();
  for (size_t from = 0; from < kKeys; from += 1000) {
    std::vector<std::string> values;
    for (size_t i = from; i < std::min(kKeys, from + 1000); ++i) {
      values.push_back(absl::StrCat("('keys', ", Literal(keys[i]),
                                    ", 'K', jsonb_build_object('i', ", i,
                                    "))"));
    }
    ASSERT_TRUE(Exec(absl::StrCat("INSERT INTO outbox (aggregatetype, "
                                  "aggregateid, type, payload) VALUES ",
                                  absl::StrJoin(values, ",")))
                    .ok());
  }
  auto records = Read(topic, kKeys, absl::Seconds(180));
  ASSERT_EQ(records.size(), kKeys);

  std::map<std::string, int> outboxd_partition;
  for (const auto& r : records) {
    EXPECT_TRUE(outboxd_partition.emplace(r.key, r.partition).second)
        << "key twice: " << r.key;
  }
  size_t agree = 0;
  std::set<int> used;
  for (size_t i = 0; i < kKeys; ++i) {
    auto it = outboxd_partition.find(keys[i]);
    ASSERT_NE(it, outboxd_partition.end()) << "no record for key " << i;
    ASSERT_GE(java_partition[i], 0) << "the Java producer sent no key " << i;
    used.insert(java_partition[i]);
    if (it->second == java_partition[i]) {
      ++agree;
    } else if (i - agree <= 10) {  // the first few disagreements
      ADD_FAILURE() << "key " << i << " '" << keys[i] << "': outboxd "
                    << it->second << ", Java " << java_partition[i];
    }
  }
  EXPECT_EQ(used.size(), static_cast<size_t>(kPartitions));
  EXPECT_EQ(agree, kKeys);
  std::printf(
      "[ measure ] Java agreement: %zu of %zu keys in the same "
      "partition (Java producer run %.1f s)\n",
      agree, kKeys, java_seconds);
}

// A 3-node cluster of its own (replication factor 3, min.insync.replicas 2).
class LeaderFailureTest : public RealKafkaTest {
 protected:
  static void SetUpTestSuite() {
    RealKafkaTest::SetUpTestSuite();
    auto kafka = KafkaCluster::Start({.nodes = 3, .partitions = 6});
    ASSERT_TRUE(kafka.ok()) << kafka.status();
    three_ = kafka->release();
  }
  static void TearDownTestSuite() {
    delete three_;
    three_ = nullptr;
    RealKafkaTest::TearDownTestSuite();
  }
  void SetUp() override {
    ASSERT_NE(three_, nullptr);
    kafka_ = three_;
    RealKafkaTest::SetUp();
  }
  static inline KafkaCluster* three_ = nullptr;
};

// 20,000 events through outboxd (at-least-once default, idempotent
// producer) while the node leading the most partitions of the topic is
// killed with SIGKILL and restarted: every event arrives exactly once, and
// while that node still leads, the slot is never confirmed past the first
// event committed after the kill to one of its partitions.
TEST_F(LeaderFailureTest, KillTheBusiestLeaderLosesAndDuplicatesNothing) {
  const int kPartitions = 6;
  const int kTransactions = 400;
  const int kPerTransaction = 50;
  const int kEvents = kTransactions * kPerTransaction;
  const std::string topic = prefix_ + "fail";
  ASSERT_TRUE(kafka_->CreateTopic(topic, kPartitions, 3).ok());
  StartOutboxd();

  // The writer: 400 transactions of 50 events, paced to span the outage.
  std::atomic<int> committed{0};
  std::atomic<bool> writer_failed{false};
  std::atomic<bool> stop_writer{false};  // only when the test bails out
  std::thread writer([&, conninfo = ConnInfo()] {
    PGconn* conn = PQconnectdb(conninfo.c_str());
    for (int tx = 0; tx < kTransactions && !writer_failed && !stop_writer;
         ++tx) {
      PGresult* res = PQexec(
          conn,
          absl::StrCat("BEGIN; INSERT INTO outbox (aggregatetype, aggregateid, "
                       "type, payload) SELECT 'fail', 'k' || (g % 97), 'E', "
                       "jsonb_build_object('g', g) FROM generate_series(",
                       tx * kPerTransaction, ", ",
                       (tx + 1) * kPerTransaction - 1, ") g; COMMIT;")
              .c_str());
      const bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
      PQclear(res);
      if (!ok) {
        writer_failed = true;
        break;
      }
      committed = tx + 1;
      absl::SleepFor(absl::Milliseconds(60));
    }
    PQfinish(conn);
  });
  // An early return (a failed ASSERT) stops the writer; the normal path
  // lets it write all of its transactions, however quickly the node came
  // back.
  absl::Cleanup join_writer = [&] {
    stop_writer = true;
    writer.join();
  };

  while (committed < kTransactions / 5) absl::SleepFor(absl::Milliseconds(50));
  auto leaders = kafka_->Leaders(topic);
  ASSERT_TRUE(leaders.ok()) << leaders.status();
  std::map<int, int> led;
  for (int leader : *leaders) ++led[leader];
  int victim = led.begin()->first;
  for (auto [node, count] : led) {
    if (count > led[victim]) victim = node;
  }
  std::set<int> victim_partitions;
  for (int p = 0; p < kPartitions; ++p) {
    if ((*leaders)[p] == victim) victim_partitions.insert(p);
  }
  ASSERT_TRUE(kafka_->KillNode(victim).ok());
  const absl::Time killed = absl::Now();
  // Every event committed from here on is unacknowledged until its
  // partition has a new leader.
  const uint64_t kill_lsn =
      Lsn::Parse(Query("SELECT pg_current_wal_lsn()"))->value();
  const int committed_at_kill = committed;

  // Sample the slot while the dead node still leads one of its partitions
  // (a sample counts only if the metadata read after it still says so).
  std::vector<Lsn> samples;
  absl::Duration failover;
  while (true) {
    Lsn sample = ConfirmedFlush();
    auto now_leaders = kafka_->Leaders(topic);
    bool still_led = false;
    if (now_leaders.ok()) {
      for (int p : victim_partitions) still_led |= (*now_leaders)[p] == victim;
    }
    if (now_leaders.ok() && !still_led) {
      failover = absl::Now() - killed;
      break;
    }
    if (still_led) samples.push_back(sample);
    ASSERT_LT(absl::Now() - killed, absl::Seconds(120))
        << "no new leader for node " << victim << "'s partitions";
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(kafka_->RestartNode(victim).ok());
  const absl::Duration outage = absl::Now() - killed;

  std::move(join_writer).Cancel();
  writer.join();
  ASSERT_FALSE(writer_failed)
      << "the writer failed after " << committed << " transactions";
  ASSERT_EQ(committed, kTransactions);
  auto records = Read(topic, kEvents, absl::Seconds(240), absl::Seconds(3));

  std::set<int> seen;
  size_t duplicates = 0;
  uint64_t first_unacked = UINT64_MAX;
  for (const auto& r : records) {
    ASSERT_TRUE(r.value.has_value());
    int g = nlohmann::json::parse(*r.value)["g"].get<int>();
    if (!seen.insert(g).second) ++duplicates;
    uint64_t lsn = HeaderU64(r, "outbox.lsn");
    if (victim_partitions.count(r.partition) > 0 && lsn > kill_lsn) {
      first_unacked = std::min(first_unacked, lsn);
    }
  }
  const size_t lost = kEvents - seen.size();
  uint64_t max_sample = 0;
  for (Lsn s : samples) max_sample = std::max(max_sample, s.value());
  std::printf(
      "[ measure ] leader failure: killed node %d (led %zu of %d "
      "partitions) after %d transactions; new leaders after %.1f s, node "
      "back after %.1f s; %d events, %zu records, %zu lost, %zu duplicates; "
      "%zu slot samples during the outage, max confirmed %s vs first "
      "unacknowledged commit %s\n",
      victim, victim_partitions.size(), kPartitions, committed_at_kill,
      absl::ToDoubleSeconds(failover), absl::ToDoubleSeconds(outage), kEvents,
      records.size(), lost, duplicates, samples.size(),
      Lsn(max_sample).ToString().c_str(),
      Lsn(first_unacked).ToString().c_str());
  EXPECT_EQ(lost, 0u);
  EXPECT_EQ(duplicates, 0u);
  EXPECT_EQ(records.size(), static_cast<size_t>(kEvents));
  ASSERT_NE(first_unacked, UINT64_MAX)
      << "no event was committed to the dead leader's partitions";
  ASSERT_FALSE(samples.empty());
  for (Lsn s : samples) {
    EXPECT_LE(s.value(), first_unacked)
        << "confirmed_flush_lsn " << s << " passed an unacknowledged commit";
  }
  EXPECT_TRUE(outboxd_.back()->Running()) << Log(0);
}

// kafka/read_back against Apache Kafka: offsets for times find the first
// record at or after the time, the ids from there on are found, and a
// compacted topic (what it lacks may have been compacted away) is named
// instead of answered.
TEST_F(JavaAgreementTest, ReadBackFindsIdsAndRefusesACompactedTopic) {
  const std::string plain = prefix_ + "readback";
  const std::string compacted = prefix_ + "readback-compacted";
  ASSERT_TRUE(kafka_->CreateTopic(plain, 3).ok());
  ASSERT_TRUE(
      kafka_->CreateTopic(compacted, 1, -1, {{"cleanup.policy", "compact"}})
          .ok());
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  ASSERT_TRUE(ProduceIdRecords(kafka_->bootstrap(),
                               {{plain, "old", now_ms - 3600 * 1000},
                                {plain, "a", now_ms},
                                {plain, "b", now_ms + 3},
                                {compacted, "c", now_ms}},
                               absl::Seconds(60))
                  .ok());

  ReadBackRequest request;
  request.brokers = kafka_->bootstrap();
  request.topics = {plain};
  request.since_unix_ms = now_ms - 1000;
  request.ids = {"old", "a", "b", "never"};
  auto found = FindIdsInKafka(request);
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, (absl::flat_hash_set<std::string>{"a", "b"}));

  request.topics = {plain, compacted};
  found = FindIdsInKafka(request);
  EXPECT_TRUE(absl::IsFailedPrecondition(found.status())) << found.status();
  EXPECT_NE(found.status().message().find("compacted"), std::string::npos);
}

}  // namespace
}  // namespace outboxd::testing
