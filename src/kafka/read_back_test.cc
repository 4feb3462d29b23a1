#include "kafka/read_back.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/id_records.h"
#include "tests/fakes/mock_cluster.h"

namespace outboxd {
namespace {

using ::testing::UnorderedElementsAre;

class ReadBackTest : public ::testing::Test {
 protected:
  ReadBackTest() : cluster_(1) {
    cluster_.CreateTopic("orders", 4);
    cluster_.CreateTopic("outbox.dlq", 1);
    now_ms_ = absl::ToUnixMillis(absl::Now());
  }

  void Produce(const std::vector<IdRecord>& records) {
    ASSERT_TRUE(
        ProduceIdRecords(cluster_.bootstraps(), records, absl::Seconds(20))
            .ok());
  }

  ReadBackRequest Request(std::vector<std::string> topics,
                          absl::flat_hash_set<std::string> ids) {
    ReadBackRequest r;
    r.brokers = cluster_.bootstraps();
    r.topics = std::move(topics);
    r.ids = std::move(ids);
    r.since_unix_ms = now_ms_ - 1000;
    r.timeout = absl::Seconds(20);
    return r;
  }

  MockCluster cluster_;
  int64_t now_ms_ = 0;
};

// Records from the time on, of every asked topic (the dead-letter topic
// too), are found; one older than the time and one never written are not.
TEST_F(ReadBackTest, FindsTheIdsWrittenSinceTheTime) {
  Produce({{"orders", "old", now_ms_ - 3600 * 1000},
           {"orders", "a", now_ms_},
           {"orders", "b", now_ms_ + 5},
           {"outbox.dlq", "bad", now_ms_ + 7},
           {"orders", "c", now_ms_ + 9}});
  auto found = FindIdsInKafka(
      Request({"orders", "outbox.dlq"}, {"old", "a", "b", "bad", "never"}));
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_THAT(*found, UnorderedElementsAre("a", "b", "bad"));
}

TEST_F(ReadBackTest, StopsOnceEveryIdIsFound) {
  Produce({{"orders", "a", now_ms_}, {"orders", "b", now_ms_}});
  auto found = FindIdsInKafka(Request({"orders"}, {"a", "b"}));
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_THAT(*found, UnorderedElementsAre("a", "b"));
}

TEST_F(ReadBackTest, ATopicThatDoesNotExistHoldsNothing) {
  Produce({{"orders", "a", now_ms_}});
  auto found = FindIdsInKafka(Request({"nowhere"}, {"a"}));
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_TRUE(found->empty());
}

// A principal that may write the topics but not read them: an answer that
// will not change, not a wait until the timeout.
TEST_F(ReadBackTest, ATopicItMayNotReadIsPermissionDenied) {
  Produce({{"orders", "a", now_ms_}});
  cluster_.FailRequests(/*Fetch*/ 1, 100,
                        RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED);
  auto found = FindIdsInKafka(Request({"orders"}, {"a"}));
  EXPECT_TRUE(absl::IsPermissionDenied(found.status())) << found.status();
}

TEST_F(ReadBackTest, AClusterThatDoesNotAnswerIsUnavailable) {
  ReadBackRequest r = Request({"orders"}, {"a"});
  cluster_.SetAllBrokersDown(1);
  r.timeout = absl::Seconds(2);
  auto found = FindIdsInKafka(r);
  EXPECT_TRUE(absl::IsUnavailable(found.status())) << found.status();
}

}  // namespace
}  // namespace outboxd
