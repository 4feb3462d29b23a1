#include "kafka/producer.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kafka/group_consumer.h"
#include "outbox/router.h"
#include "tests/fakes/mock_cluster.h"

namespace outboxd {
namespace {

using Headers = std::vector<std::pair<std::string, std::string>>;
using ::testing::HasSubstr;

// A consumed record, read as the inbox's GroupConsumer reads it, and how
// its timestamp was set.
struct Consumed : ConsumedMessage {
  rd_kafka_timestamp_type_t timestamp_type = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
};

// Reads `expected` records from every partition of `topic` from the
// beginning with an independent librdkafka consumer (assign, no group use).
std::vector<Consumed> ReadTopic(const std::string& bootstraps,
                                const std::string& topic, int partitions,
                                size_t expected) {
  std::vector<Consumed> records;
  char errstr[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set_log_cb(conf, nullptr);
  for (const auto& [name, value] :
       std::vector<std::pair<std::string, std::string>>{
           {"bootstrap.servers", bootstraps},
           {"group.id", "producer-test-reader"},
           {"enable.auto.commit", "false"}}) {
    EXPECT_EQ(rd_kafka_conf_set(conf, name.c_str(), value.c_str(), errstr,
                                sizeof(errstr)),
              RD_KAFKA_CONF_OK)
        << errstr;
  }
  rd_kafka_t* rk =
      rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
  if (rk == nullptr) {
    ADD_FAILURE() << errstr;
    rd_kafka_conf_destroy(conf);
    return records;
  }
  rd_kafka_poll_set_consumer(rk);
  rd_kafka_topic_partition_list_t* assignment =
      rd_kafka_topic_partition_list_new(partitions);
  for (int p = 0; p < partitions; ++p) {
    rd_kafka_topic_partition_list_add(assignment, topic.c_str(), p)->offset =
        RD_KAFKA_OFFSET_BEGINNING;
  }
  EXPECT_EQ(rd_kafka_assign(rk, assignment), RD_KAFKA_RESP_ERR_NO_ERROR);
  rd_kafka_topic_partition_list_destroy(assignment);

  absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (records.size() < expected && absl::Now() < deadline) {
    rd_kafka_message_t* message = rd_kafka_consumer_poll(rk, 100);
    if (message == nullptr) continue;
    if (message->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      Consumed record;
      static_cast<ConsumedMessage&>(record) = ToConsumedMessage(message);
      rd_kafka_message_timestamp(message, &record.timestamp_type);
      records.push_back(std::move(record));
    }
    rd_kafka_message_destroy(message);
  }
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  return records;
}

// Kafka's Java murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as the
// reference for where the Java client puts a key.
int32_t JavaMurmur2(const std::string& data) {
  const uint32_t seed = 0x9747b28c;
  const uint32_t m = 0x5bd1e995;
  const int r = 24;
  const size_t length = data.size();
  const auto* bytes = reinterpret_cast<const uint8_t*>(data.data());
  uint32_t h = seed ^ static_cast<uint32_t>(length);
  const size_t length4 = length / 4;
  for (size_t i = 0; i < length4; ++i) {
    const size_t i4 = i * 4;
    uint32_t k = bytes[i4] | (bytes[i4 + 1] << 8) | (bytes[i4 + 2] << 16) |
                 (static_cast<uint32_t>(bytes[i4 + 3]) << 24);
    k *= m;
    k ^= k >> r;
    k *= m;
    h *= m;
    h ^= k;
  }
  const size_t tail = length & ~size_t{3};
  switch (length % 4) {
    case 3:
      h ^= static_cast<uint32_t>(bytes[tail + 2]) << 16;
      [[fallthrough]];
    case 2:
      h ^= static_cast<uint32_t>(bytes[tail + 1]) << 8;
      [[fallthrough]];
    case 1:
      h ^= bytes[tail];
      h *= m;
  }
  h ^= h >> 13;
  h *= m;
  h ^= h >> 15;
  return static_cast<int32_t>(h);
}

int32_t JavaPartition(const std::string& key, int partitions) {
  return (JavaMurmur2(key) & 0x7fffffff) % partitions;
}

TEST(JavaMurmur2Test, MatchesKafkaTestVectors) {
  // From Kafka's UtilsTest.testMurmur2.
  EXPECT_EQ(JavaMurmur2("21"), -973932308);
  EXPECT_EQ(JavaMurmur2("foobar"), -790332482);
  EXPECT_EQ(JavaMurmur2("a-little-bit-long-string"), -985981536);
  EXPECT_EQ(JavaMurmur2("a-little-bit-longer-string"), -1486304829);
  EXPECT_EQ(JavaMurmur2("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58897971);
  EXPECT_EQ(JavaMurmur2("abc"), 479470107);
}

// Records delivery reports: sequence -> statuses, in arrival order.
struct Deliveries {
  std::map<uint64_t, std::vector<absl::Status>> by_sequence;
  DeliveryCallback Callback() {
    return [this](uint64_t sequence, absl::Status status) {
      by_sequence[sequence].push_back(std::move(status));
    };
  }
};

KafkaRecord MakeRecord(std::string topic, absl::string_view key,
                       std::optional<absl::string_view> value,
                       int64_t timestamp_ms, Headers headers) {
  KafkaRecord record;
  record.topic = std::move(topic);
  record.key = key;
  record.value = value;
  record.timestamp_ms = timestamp_ms;
  record.headers = std::move(headers);
  return record;
}

class ProducerTest : public ::testing::Test {
 protected:
  static constexpr int kBrokers = 3;
  MockCluster cluster_{kBrokers};
  Deliveries deliveries_;

  std::unique_ptr<KafkaProducer> MakeProducer(Headers properties = {}) {
    ProducerOptions options;
    options.brokers = cluster_.bootstraps();
    options.properties = std::move(properties);
    auto producer = KafkaProducer::Create(options, deliveries_.Callback());
    EXPECT_TRUE(producer.ok()) << producer.status();
    return producer.ok() ? std::move(producer).value() : nullptr;
  }
};

TEST_F(ProducerTest, DeliversRecordsExactly) {
  cluster_.CreateTopic("outbox.event.order", 1);
  auto producer = MakeProducer();
  ASSERT_NE(producer, nullptr);

  const std::string payload = R"({"total": 10})";
  const std::string binary("\x00\xff\x01", 3);
  ASSERT_TRUE(producer
                  ->Produce(MakeRecord("outbox.event.order", "order-42",
                                       payload, 1700000000123,
                                       {{"id", "e-1"},
                                        {"eventType", "OrderCreated"},
                                        {"tenant", "acme"},
                                        {"outbox.lsn", "23456789"},
                                        {"outbox.index", "0"}}),
                            7)
                  .ok());
  ASSERT_TRUE(producer
                  ->Produce(MakeRecord("outbox.event.order", "order-42", binary,
                                       1700000000456,
                                       {{"id", "e-2"}, {"outbox.index", "1"}}),
                            uint64_t{1} << 40)
                  .ok());
  ASSERT_TRUE(producer->Flush(absl::Seconds(20)).ok());
  EXPECT_EQ(producer->OutQueueLength(), 0);

  ASSERT_EQ(deliveries_.by_sequence.size(), 2u);
  EXPECT_EQ(deliveries_.by_sequence[7],
            std::vector<absl::Status>{absl::OkStatus()});
  EXPECT_EQ(deliveries_.by_sequence[uint64_t{1} << 40],
            std::vector<absl::Status>{absl::OkStatus()});

  auto records = ReadTopic(cluster_.bootstraps(), "outbox.event.order", 1, 2);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].key, "order-42");
  EXPECT_EQ(records[0].value, payload);
  EXPECT_EQ(records[0].timestamp_ms, 1700000000123);
  EXPECT_EQ(records[0].timestamp_type, RD_KAFKA_TIMESTAMP_CREATE_TIME);
  EXPECT_EQ(records[0].headers, (Headers{{"id", "e-1"},
                                         {"eventType", "OrderCreated"},
                                         {"tenant", "acme"},
                                         {"outbox.lsn", "23456789"},
                                         {"outbox.index", "0"}}));
  EXPECT_EQ(records[1].value, binary);
  EXPECT_EQ(records[1].timestamp_ms, 1700000000456);
  EXPECT_EQ(records[1].headers,
            (Headers{{"id", "e-2"}, {"outbox.index", "1"}}));
}

TEST_F(ProducerTest, NullValueIsTombstoneAndEmptyValueIsNot) {
  cluster_.CreateTopic("t", 1);
  auto producer = MakeProducer();
  ASSERT_NE(producer, nullptr);
  ASSERT_TRUE(
      producer->Produce(MakeRecord("t", "k", std::nullopt, 1000, {}), 1).ok());
  ASSERT_TRUE(
      producer
          ->Produce(
              MakeRecord("t", "k", absl::string_view(), 1001, {{"h", ""}}), 2)
          .ok());
  ASSERT_TRUE(producer->Flush(absl::Seconds(20)).ok());

  auto records = ReadTopic(cluster_.bootstraps(), "t", 1, 2);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].value, std::nullopt);
  EXPECT_EQ(records[0].key, "k");
  EXPECT_EQ(records[1].value, std::optional<std::string>(""));
  EXPECT_EQ(records[1].headers, (Headers{{"h", ""}}));
}

TEST_F(ProducerTest, EveryDeliveryCallbackFiresExactlyOnce) {
  cluster_.CreateTopic("many", 4);
  auto producer = MakeProducer();
  ASSERT_NE(producer, nullptr);
  constexpr uint64_t kMessages = 2000;
  for (uint64_t seq = 0; seq < kMessages; ++seq) {
    std::string key = absl::StrCat("aggregate-", seq % 37);
    std::string value = absl::StrCat("event-", seq);
    absl::Status status;
    // MakeRecord borrows key/value; Produce copies them (F_COPY).
    while ((status = producer->Produce(
                MakeRecord("many", key, value, 1000 + seq, {}), seq))
               .code() == absl::StatusCode::kResourceExhausted) {
      producer->Poll(absl::Milliseconds(10));
    }
    ASSERT_TRUE(status.ok()) << status;
    if (seq % 100 == 0) producer->Poll(absl::ZeroDuration());
  }
  ASSERT_TRUE(producer->Flush(absl::Seconds(30)).ok());
  ASSERT_EQ(deliveries_.by_sequence.size(), kMessages);
  for (const auto& [seq, statuses] : deliveries_.by_sequence) {
    ASSERT_LT(seq, kMessages);
    ASSERT_EQ(statuses.size(), 1u) << seq;
    EXPECT_TRUE(statuses[0].ok()) << seq << ": " << statuses[0];
  }
  // Nothing more arrives later.
  producer->Poll(absl::Milliseconds(200));
  EXPECT_EQ(deliveries_.by_sequence.size(), kMessages);
}

TEST_F(ProducerTest, KeysLandWhereJavaMurmur2PutsThem) {
  constexpr int kPartitions = 7;
  cluster_.CreateTopic("keyed", kPartitions);
  auto producer = MakeProducer();
  ASSERT_NE(producer, nullptr);
  std::vector<std::string> keys;
  for (int i = 0; i < 60; ++i) keys.push_back(absl::StrCat("order-", i * 7919));
  keys.push_back("");  // an empty key is hashed like Java, not random
  for (size_t i = 0; i < keys.size(); ++i) {
    ASSERT_TRUE(
        producer->Produce(MakeRecord("keyed", keys[i], keys[i], 1, {}), i)
            .ok());
  }
  ASSERT_TRUE(producer->Flush(absl::Seconds(20)).ok());

  auto records =
      ReadTopic(cluster_.bootstraps(), "keyed", kPartitions, keys.size());
  ASSERT_EQ(records.size(), keys.size());
  std::set<int32_t> used;
  for (const Consumed& record : records) {
    const std::string key = record.key.value_or("");
    EXPECT_EQ(record.partition, JavaPartition(key, kPartitions))
        << "key '" << key << "'";
    used.insert(record.partition);
  }
  EXPECT_GT(used.size(), 1u);
}

TEST_F(ProducerTest, DefaultsCanBeOverriddenAndBadPropertiesAreRejected) {
  ProducerOptions options;
  options.brokers = cluster_.bootstraps();
  options.properties = {{"no.such.property", "1"}};
  auto producer = KafkaProducer::Create(options, deliveries_.Callback());
  ASSERT_EQ(producer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(producer.status().message(), HasSubstr("no.such.property"));

  options.properties = {{"linger.ms", "not-a-number"}};
  producer = KafkaProducer::Create(options, deliveries_.Callback());
  ASSERT_EQ(producer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(producer.status().message(), HasSubstr("linger.ms"));

  // Valid alone, but conflicts with idempotence: rejected by rd_kafka_new.
  options.properties = {{"acks", "1"}};
  producer = KafkaProducer::Create(options, deliveries_.Callback());
  ASSERT_EQ(producer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(producer.status().message(), HasSubstr("acks"));

  // Overriding a default is fine.
  options.properties = {
      {"enable.idempotence", "false"}, {"acks", "1"}, {"linger.ms", "5"}};
  producer = KafkaProducer::Create(options, deliveries_.Callback());
  EXPECT_TRUE(producer.ok()) << producer.status();
}

TEST_F(ProducerTest, FullQueueIsResourceExhausted) {
  cluster_.CreateTopic("small", 1);
  auto producer = MakeProducer({{"queue.buffering.max.messages", "1"}});
  ASSERT_NE(producer, nullptr);
  ASSERT_TRUE(producer->Produce(MakeRecord("small", "k", "v1", 1, {}), 1).ok());
  absl::Status full =
      producer->Produce(MakeRecord("small", "k", "v2", 1, {}), 2);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_THAT(full.message(), HasSubstr("QUEUE_FULL"));

  // Backpressure clears once reports are served.
  ASSERT_TRUE(producer->Flush(absl::Seconds(20)).ok());
  EXPECT_TRUE(producer->Produce(MakeRecord("small", "k", "v2", 1, {}), 2).ok());
  ASSERT_TRUE(producer->Flush(absl::Seconds(20)).ok());
  EXPECT_EQ(deliveries_.by_sequence[1].size(), 1u);
  EXPECT_EQ(deliveries_.by_sequence[2].size(), 1u);
}

TEST_F(ProducerTest, OversizedMessageIsReturnedAndNotQueued) {
  cluster_.CreateTopic("big", 1);
  auto producer = MakeProducer({{"message.max.bytes", "10000"}});
  ASSERT_NE(producer, nullptr);
  std::string value(20000, 'x');
  absl::Status status =
      producer->Produce(MakeRecord("big", "k", value, 1, {}), 9);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr("MSG_SIZE_TOO_LARGE"));
  EXPECT_EQ(producer->OutQueueLength(), 0);
  ASSERT_TRUE(producer->Flush(absl::Seconds(5)).ok());
  EXPECT_TRUE(deliveries_.by_sequence.empty());
}

TEST_F(ProducerTest, FailedDeliveryIsReported) {
  cluster_.CreateTopic("down", 1);
  cluster_.SetAllBrokersDown(kBrokers);
  auto producer = MakeProducer({{"message.timeout.ms", "1000"}});
  ASSERT_NE(producer, nullptr);
  ASSERT_TRUE(producer->Produce(MakeRecord("down", "k", "v", 1, {}), 42).ok());

  // Not deliverable within a short flush: the count is reported.
  absl::Status flush = producer->Flush(absl::Milliseconds(100));
  EXPECT_EQ(flush.code(), absl::StatusCode::kDeadlineExceeded) << flush;
  EXPECT_THAT(flush.message(), HasSubstr("1 message"));

  ASSERT_TRUE(producer->Flush(absl::Seconds(20)).ok());
  ASSERT_EQ(deliveries_.by_sequence[42].size(), 1u);
  const absl::Status& status = deliveries_.by_sequence[42][0];
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(status.message(), HasSubstr("MSG_TIMED_OUT"));
  EXPECT_TRUE(producer->fatal_error().ok());
}

TEST_F(ProducerTest, DestroyWithPendingMessagesCallsNothing) {
  cluster_.CreateTopic("pending", 1);
  cluster_.SetAllBrokersDown(kBrokers);
  auto producer = MakeProducer();
  ASSERT_NE(producer, nullptr);
  ASSERT_TRUE(
      producer->Produce(MakeRecord("pending", "k", "v", 1, {}), 1).ok());
  producer.reset();
  EXPECT_TRUE(deliveries_.by_sequence.empty());
}

}  // namespace
}  // namespace outboxd
