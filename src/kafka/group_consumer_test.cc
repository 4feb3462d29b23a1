// GroupConsumer against librdkafka's in-process mock cluster: where a
// partition starts, what is committed, pause/resume, listener errors.
#include "kafka/group_consumer.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace outboxd {
namespace {

// A producer that hosts a one-broker mock cluster (test.mock.num.brokers)
// and writes the test's records into it.
class MockKafka {
 public:
  MockKafka() {
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    char errstr[512];
    EXPECT_EQ(rd_kafka_conf_set(conf, "test.mock.num.brokers", "1", errstr,
                                sizeof(errstr)),
              RD_KAFKA_CONF_OK)
        << errstr;
    rd_kafka_conf_set_log_cb(conf, nullptr);  // quiet
    rk_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    EXPECT_NE(rk_, nullptr) << errstr;
  }
  ~MockKafka() {
    if (rk_ != nullptr) rd_kafka_destroy(rk_);
  }
  MockKafka(const MockKafka&) = delete;
  MockKafka& operator=(const MockKafka&) = delete;

  std::string bootstraps() const {
    return rd_kafka_mock_cluster_bootstraps(rd_kafka_handle_mock_cluster(rk_));
  }
  void CreateTopic(const std::string& topic, int partitions) {
    ASSERT_EQ(rd_kafka_mock_topic_create(rd_kafka_handle_mock_cluster(rk_),
                                         topic.c_str(), partitions, 1),
              RD_KAFKA_RESP_ERR_NO_ERROR);
  }
  // Writes "<partition>-<n>" values with a header, and waits for the acks.
  void Produce(const std::string& topic, int32_t partition, int count) {
    for (int i = 0; i < count; ++i) {
      std::string value = absl::StrCat(partition, "-", n_[partition]++);
      ASSERT_EQ(rd_kafka_producev(
                    rk_, RD_KAFKA_V_TOPIC(topic.c_str()),
                    RD_KAFKA_V_PARTITION(partition), RD_KAFKA_V_KEY("k", 1),
                    RD_KAFKA_V_VALUE(value.data(), value.size()),
                    RD_KAFKA_V_HEADER("h", "v", 1),
                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END),
                RD_KAFKA_RESP_ERR_NO_ERROR);
    }
    ASSERT_EQ(rd_kafka_flush(rk_, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
  }
  // The offset `group` committed on (topic, partition); -1 when none.
  int64_t Committed(const std::string& group, const std::string& topic,
                    int32_t partition) {
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    char errstr[512];
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstraps().c_str(), errstr,
                      sizeof(errstr));
    rd_kafka_conf_set(conf, "group.id", group.c_str(), errstr, sizeof(errstr));
    rd_kafka_conf_set_log_cb(conf, nullptr);
    rd_kafka_t* c =
        rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
    EXPECT_NE(c, nullptr) << errstr;
    if (c == nullptr) return -2;
    rd_kafka_topic_partition_list_t* l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic.c_str(), partition);
    rd_kafka_resp_err_t err = rd_kafka_committed(c, l, 10000);
    EXPECT_EQ(err, RD_KAFKA_RESP_ERR_NO_ERROR) << rd_kafka_err2name(err);
    int64_t offset = l->elems[0].offset;
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_destroy(c);
    return offset;
  }

 private:
  rd_kafka_t* rk_ = nullptr;
  std::map<int32_t, int> n_;
};

// Answers OnAssigned from `start`, records what it hears.
class FakeListener : public RebalanceListener {
 public:
  absl::StatusOr<std::optional<int64_t>> OnAssigned(
      const TopicPartition& tp) override {
    assigned.push_back(tp);
    if (!error.ok()) return error;
    auto it = start.find(tp.partition);
    if (it == start.end()) return std::nullopt;
    return it->second;
  }
  void OnRevoked(const TopicPartition& tp) override { revoked.push_back(tp); }

  std::map<int32_t, int64_t> start;
  absl::Status error;
  std::vector<TopicPartition> assigned;
  std::vector<TopicPartition> revoked;
};

class GroupConsumerTest : public ::testing::Test {
 protected:
  void SetUp() override { kafka_.CreateTopic(topic_, 2); }

  std::unique_ptr<GroupConsumer> Consumer(FakeListener* listener) {
    GroupConsumerOptions o;
    o.brokers = kafka_.bootstraps();
    o.group_id = "g";
    o.topics = {topic_};
    o.session_timeout = absl::Seconds(6);
    auto c = GroupConsumer::Create(o, listener);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }

  // Polls until `count` records came (or `within` passed).
  std::vector<ConsumedMessage> PollFor(GroupConsumer& c, size_t count,
                                       absl::Duration within) {
    std::vector<ConsumedMessage> out;
    absl::Time deadline = absl::Now() + within;
    while (out.size() < count && absl::Now() < deadline) {
      auto m = c.Poll(absl::Milliseconds(100));
      EXPECT_TRUE(m.ok()) << m.status();
      if (!m.ok()) break;
      if (m->has_value()) out.push_back(std::move(**m));
    }
    return out;
  }

  MockKafka kafka_;
  const std::string topic_ = "t";
};

TEST_F(GroupConsumerTest, EachPartitionStartsWhereTheListenerSays) {
  kafka_.Produce(topic_, 0, 5);
  kafka_.Produce(topic_, 1, 5);
  FakeListener listener;
  listener.start[0] = 3;  // partition 1: nullopt, the committed offset
  auto c = Consumer(&listener);
  ASSERT_NE(c, nullptr);
  std::vector<ConsumedMessage> got = PollFor(*c, 7, absl::Seconds(30));
  ASSERT_EQ(got.size(), 7u);
  std::map<int32_t, std::vector<int64_t>> offsets;
  for (const ConsumedMessage& m : got) {
    offsets[m.partition].push_back(m.offset);
    EXPECT_EQ(m.topic, topic_);
    EXPECT_EQ(m.key, "k");
    EXPECT_EQ(m.value, absl::StrCat(m.partition, "-", m.offset));
    ASSERT_EQ(m.headers.size(), 1u);
    EXPECT_EQ(m.headers[0], std::make_pair(std::string("h"), std::string("v")));
  }
  EXPECT_EQ(offsets[0], (std::vector<int64_t>{3, 4}));
  // Nothing committed yet: a new group starts at the beginning.
  EXPECT_EQ(offsets[1], (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(listener.assigned.size(), 2u);
  EXPECT_TRUE(PollFor(*c, 1, absl::Milliseconds(300)).empty());
}

TEST_F(GroupConsumerTest, OnlyProcessedOffsetsAreCommittedAndCloseRevokes) {
  kafka_.Produce(topic_, 0, 3);
  FakeListener listener;
  auto c = Consumer(&listener);
  ASSERT_NE(c, nullptr);
  ASSERT_EQ(PollFor(*c, 3, absl::Seconds(30)).size(), 3u);
  c->MarkProcessed({topic_, 0}, 2);  // the third is not processed
  c->Close();
  EXPECT_TRUE(c->closed());
  EXPECT_EQ(listener.revoked.size(), 2u);
  EXPECT_EQ(kafka_.Committed("g", topic_, 0), 2);
  EXPECT_LT(kafka_.Committed("g", topic_, 1), 0);  // nothing processed there
  auto after = c->Poll(absl::Milliseconds(10));
  EXPECT_TRUE(absl::IsFailedPrecondition(after.status())) << after.status();
}

TEST_F(GroupConsumerTest, PausedPartitionDeliversNothingUntilResumed) {
  FakeListener listener;
  auto c = Consumer(&listener);
  ASSERT_NE(c, nullptr);
  // Joined once the assignment was heard of.
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (listener.assigned.size() < 2 && absl::Now() < deadline) {
    ASSERT_TRUE(c->Poll(absl::Milliseconds(100)).ok());
  }
  ASSERT_EQ(listener.assigned.size(), 2u);
  c->Pause({topic_, 0});
  kafka_.Produce(topic_, 0, 2);
  kafka_.Produce(topic_, 1, 1);
  std::vector<ConsumedMessage> got = PollFor(*c, 3, absl::Seconds(2));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].partition, 1);
  c->Resume({topic_, 0});
  got = PollFor(*c, 2, absl::Seconds(30));
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].partition, 0);
  EXPECT_EQ(got[0].offset, 0);
  EXPECT_EQ(got[1].offset, 1);
}

TEST_F(GroupConsumerTest, ListenerErrorStopsThePoll) {
  FakeListener listener;
  listener.error = absl::UnavailableError("database down");
  auto c = Consumer(&listener);
  ASSERT_NE(c, nullptr);
  absl::Status stopped;
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (stopped.ok() && absl::Now() < deadline) {
    auto m = c->Poll(absl::Milliseconds(100));
    if (!m.ok()) stopped = m.status();
  }
  EXPECT_TRUE(absl::IsUnavailable(stopped)) << stopped;
  EXPECT_EQ(stopped.message(), "database down");
}

TEST(GroupConsumerCreateTest, BadPropertyIsInvalidArgument) {
  FakeListener listener;
  GroupConsumerOptions o;
  o.brokers = "127.0.0.1:1";
  o.group_id = "g";
  o.topics = {"t"};
  o.properties = {{"no.such.property", "1"}};
  auto c = GroupConsumer::Create(o, &listener);
  EXPECT_TRUE(absl::IsInvalidArgument(c.status())) << c.status();
}

}  // namespace
}  // namespace outboxd
