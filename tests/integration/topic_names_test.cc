// Names a real broker refuses (issue 9): an aggregatetype that makes an
// illegal topic name, and a topic that does not exist while the broker does
// not create topics. Each is an invalid event handled by --on-invalid (the
// dead-letter topic, and the stream goes on), never a delivery failure that
// stops outboxd and pins WAL. A dead-letter topic that does not exist stops
// outboxd with a clear error and loses nothing.
//
// Every case runs on the dev broker (topic_names_test) and on a real 1-node
// Apache Kafka with auto.create.topics.enable=false (topic_names_test_kafka,
// label kafka). The dev broker (librdkafka 2.0.2's mock) creates every topic
// a client asks about, even with allow.auto.create.topics=false, so a
// missing topic exists only on the real broker: those cases skip on the dev
// broker.
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/lsn.h"
#include "gtest/gtest.h"
#include "tests/harness/kafka_cluster.h"
#include "tests/harness/outboxd_test_base.h"

namespace outboxd::testing {
namespace {

std::string Insert(const std::string& type, const std::string& agg,
                   const std::string& payload) {
  return absl::StrCat(
      "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES "
      "('",
      type, "', '", agg, "', 'E', '", payload, "')");
}

// Illegal names: a space, a slash, non-ASCII, one character too long.
std::vector<std::string> IllegalAggregateTypes(size_t prefix_size) {
  return {"order line", "order/line", "\xc3\xa9v\xc3\xa9nement",
          std::string(250 - prefix_size, 'x')};
}

enum class BrokerKind { kDev, kApacheKafka };

class TopicNamesTest : public OutboxdTestBase,
                       public ::testing::WithParamInterface<BrokerKind> {
 protected:
  TopicNamesTest()
      : OutboxdTestBase(
            {.db_stem = "tndb",
             .prefix_stem = "tn",
             .slot_stem = "tnslot",
             .sql_files = {"/sql/outbox.sql", "/sql/outbox_notify.sql"},
             .default_args = {"--status-interval=200ms", "--metrics-address="},
             .ready = {"streaming from slot", "publishing from"}}) {}

  void SetUp() override {
    if (GetParam() == BrokerKind::kApacheKafka) {
      auto kafka = KafkaCluster::Shared(
          {.nodes = 1, .partitions = 2, .auto_create_topics = false});
      ASSERT_TRUE(kafka.ok()) << kafka.status();
      kafka_ = *kafka;
    }
    OutboxdTestBase::SetUp();
  }
  std::string Bootstrap() const override {
    return kafka_ != nullptr ? kafka_->bootstrap()
                             : OutboxdTestBase::Bootstrap();
  }
  absl::Status CreateTopic(const std::string& topic) {
    return kafka_ != nullptr ? kafka_->CreateTopic(topic, 2)
                             : broker_->CreateTopic(topic, 2);
  }
  // The dev broker cannot have a missing topic (see the file comment).
  bool CanMissTopics() const { return kafka_ != nullptr; }

  std::string Dlq() const { return prefix_ + "dlq"; }
  std::vector<std::string> Args(std::vector<std::string> extra) const {
    extra.push_back("--dlq-topic=" + Dlq());
    return extra;
  }

  // g1, the bad events, g2: the good ones arrive in order, each bad one is
  // in the dead-letter topic with `reason` and its whole content, outboxd
  // goes on and (cdc) confirms past all of them.
  void ExpectBadEventsDeadLettered(const std::vector<std::string>& bad_types,
                                   const std::string& reason, size_t n,
                                   bool cdc) {
    const std::string good = prefix_ + "good";
    ASSERT_TRUE(Exec(Insert("good", "g1", "{\"n\": 1}")).ok());
    for (size_t i = 0; i < bad_types.size(); ++i) {
      ASSERT_TRUE(Exec(Insert(bad_types[i], absl::StrCat("bad-", i),
                              absl::StrCat("{\"bad\": ", i, "}")))
                      .ok());
    }
    ASSERT_TRUE(Exec(Insert("good", "g2", "{\"n\": 2}")).ok());
    const Lsn after = CurrentWalLsn();
    auto records = Read(good, 2);
    ASSERT_EQ(records.size(), 2u) << Log(n);
    EXPECT_EQ(records[0].key == "g1" || records[1].key == "g1", true);
    auto dlq = Read(Dlq(), bad_types.size());
    ASSERT_EQ(dlq.size(), bad_types.size()) << Log(n);
    for (const ConsumedRecord& r : dlq) {
      auto why = r.Header("outbox.error");
      ASSERT_TRUE(why.has_value());
      EXPECT_NE(why->find(reason), std::string::npos) << *why;
      ASSERT_TRUE(r.value.has_value());
      // The whole event, payload included: it can be replayed.
      EXPECT_NE(r.value->find("\"payload\":\"{\\\"bad\\\": "),
                std::string::npos)
          << *r.value;
      EXPECT_EQ(r.key.rfind("bad-", 0), 0u) << r.key;
    }
    EXPECT_TRUE(Outboxd(n).Running()) << Log(n);
    if (cdc) {
      EXPECT_TRUE(WaitConfirmed(after, absl::Seconds(30)))
          << ConfirmedFlush().ToString() << " < " << after.ToString();
    } else {
      EXPECT_EQ(Query("SELECT count(*) FROM outbox WHERE published_at IS NULL"),
                "0");
    }
  }

  KafkaCluster* kafka_ = nullptr;
};

INSTANTIATE_TEST_SUITE_P(Brokers, TopicNamesTest,
                         ::testing::Values(BrokerKind::kDev,
                                           BrokerKind::kApacheKafka),
                         [](const auto& info) {
                           return info.param == BrokerKind::kDev
                                      ? "DevBroker"
                                      : "ApacheKafka";
                         });

TEST_P(TopicNamesTest, IllegalAggregateTypesAreDeadLetteredAndTheStreamGoesOn) {
  ASSERT_TRUE(CreateTopic(prefix_ + "good").ok());
  ASSERT_TRUE(CreateTopic(Dlq()).ok());
  size_t n = LaunchOutboxd(Args({}));
  ExpectBadEventsDeadLettered(IllegalAggregateTypes(prefix_.size()),
                              "illegal Kafka topic name", n, /*cdc=*/true);
}

TEST_P(TopicNamesTest, PollSourceDeadLettersIllegalAggregateTypes) {
  ASSERT_TRUE(CreateTopic(prefix_ + "good").ok());
  ASSERT_TRUE(CreateTopic(Dlq()).ok());
  size_t n = LaunchOutboxd(Args({"--source=poll", "--poll-interval=100ms"}));
  ExpectBadEventsDeadLettered(IllegalAggregateTypes(prefix_.size()),
                              "illegal Kafka topic name", n, /*cdc=*/false);
}

TEST_P(TopicNamesTest, MissingTopicIsDeadLetteredAndTheStreamGoesOn) {
  if (!CanMissTopics()) GTEST_SKIP() << "the dev broker creates every topic";
  ASSERT_TRUE(CreateTopic(prefix_ + "good").ok());
  ASSERT_TRUE(CreateTopic(Dlq()).ok());
  size_t n = LaunchOutboxd(Args({}));
  ExpectBadEventsDeadLettered({"absent"}, "does not exist", n, /*cdc=*/true);
}

TEST_P(TopicNamesTest, OnInvalidFailStopsAtAnIllegalName) {
  ASSERT_TRUE(CreateTopic(prefix_ + "good").ok());
  size_t n = LaunchOutboxd(Args({"--on-invalid=fail"}));
  ASSERT_TRUE(Exec(Insert("good", "g1", "{}")).ok());
  ASSERT_EQ(Read(prefix_ + "good", 1).size(), 1u) << Log(n);
  ASSERT_TRUE(Exec(Insert("a b", "k", "{}")).ok());
  // The bad transaction ends at or before this position.
  const Lsn after_bad = CurrentWalLsn();
  auto code = Outboxd(n).Wait(absl::Seconds(30));
  ASSERT_TRUE(code.has_value()) << Log(n);
  EXPECT_EQ(*code, 1) << Log(n);
  EXPECT_NE(Log(n).find("illegal Kafka topic name"), std::string::npos)
      << Log(n);
  EXPECT_LT(ConfirmedFlush(), after_bad);
}

TEST_P(TopicNamesTest, MissingDeadLetterTopicStopsAndLosesNothing) {
  if (!CanMissTopics()) GTEST_SKIP() << "the dev broker creates every topic";
  ASSERT_TRUE(CreateTopic(prefix_ + "good").ok());
  size_t n = LaunchOutboxd(Args({}));
  ASSERT_TRUE(Exec(Insert("good", "g1", "{}")).ok());
  ASSERT_EQ(Read(prefix_ + "good", 1).size(), 1u) << Log(n);
  ASSERT_TRUE(Exec(Insert("a b", "k", "{\"bad\": 0}")).ok());
  const Lsn after_bad = CurrentWalLsn();
  auto code = Outboxd(n).Wait(absl::Seconds(30));
  ASSERT_TRUE(code.has_value()) << Log(n);
  EXPECT_EQ(*code, 1) << Log(n);
  EXPECT_NE(Log(n).find("dead-letter topic"), std::string::npos) << Log(n);
  EXPECT_LT(ConfirmedFlush(), after_bad);
  // Once the topic exists, a restart dead-letters the very event.
  ASSERT_TRUE(CreateTopic(Dlq()).ok());
  size_t m = LaunchOutboxd(Args({}));
  auto dlq = Read(Dlq(), 1);
  ASSERT_EQ(dlq.size(), 1u) << Log(m);
  EXPECT_EQ(dlq[0].key, "k");
}

}  // namespace
}  // namespace outboxd::testing
