// The real-Kafka rig (ctest label kafka): a 1-node Apache Kafka started by
// scripts/kafka-cluster.sh through the KafkaCluster fixture, written to with
// librdkafka and read back with the same reader as the dev broker tests.
#include <librdkafka/rdkafka.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/harness/kafka_cluster.h"
#include "tests/harness/kafka_reader.h"

namespace outboxd::testing {
namespace {

// Produces one record (acks=all, idempotent, as outboxd does) and waits for
// its delivery report; returns the report's error.
rd_kafka_resp_err_t ProduceOne(const std::string& bootstrap,
                               const std::string& topic, const std::string& key,
                               const std::string& value, int64_t timestamp_ms) {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char errstr[512];
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(), errstr,
                    sizeof(errstr));
  rd_kafka_conf_set(conf, "enable.idempotence", "true", errstr, sizeof(errstr));
  static rd_kafka_resp_err_t delivered;
  delivered = RD_KAFKA_RESP_ERR__IN_PROGRESS;
  rd_kafka_conf_set_dr_msg_cb(conf, [](rd_kafka_t*, const rd_kafka_message_t* m,
                                       void*) { delivered = m->err; });
  rd_kafka_t* rk =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  if (rk == nullptr) return RD_KAFKA_RESP_ERR__FAIL;
  rd_kafka_headers_t* headers = rd_kafka_headers_new(1);
  rd_kafka_header_add(headers, "id", -1, "e-1", -1);
  rd_kafka_resp_err_t err = rd_kafka_producev(
      rk, RD_KAFKA_V_TOPIC(topic.c_str()),
      RD_KAFKA_V_KEY(key.data(), key.size()),
      RD_KAFKA_V_VALUE(const_cast<char*>(value.data()), value.size()),
      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
      RD_KAFKA_V_TIMESTAMP(timestamp_ms), RD_KAFKA_V_HEADERS(headers),
      RD_KAFKA_V_END);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) rd_kafka_headers_destroy(headers);
  rd_kafka_flush(rk, 60000);
  rd_kafka_destroy(rk);
  return err != RD_KAFKA_RESP_ERR_NO_ERROR ? err : delivered;
}

TEST(KafkaRigTest, OneNodeRoundTripsARecordAndNamesLeaders) {
  auto cluster = KafkaCluster::Shared({.nodes = 1});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  const std::string bootstrap = (*cluster)->bootstrap();

  ASSERT_TRUE((*cluster)->CreateTopic("rig.smoke", 3).ok());
  for (int p = 0; p < 3; ++p) {
    auto leader = (*cluster)->LeaderOf("rig.smoke", p);
    ASSERT_TRUE(leader.ok()) << leader.status();
    EXPECT_EQ(*leader, 0) << "partition " << p;
  }
  EXPECT_FALSE((*cluster)->LeaderOf("rig.smoke", 3).ok());
  EXPECT_FALSE((*cluster)->CreateTopic("rig.smoke", 3).ok())
      << "a second create of the same topic must fail";

  const int64_t ts = 1700000000123;
  ASSERT_EQ(ProduceOne(bootstrap, "rig.smoke", "order-7", "{\"total\":42}", ts),
            RD_KAFKA_RESP_ERR_NO_ERROR);
  auto records = ReadTopic(bootstrap, "rig.smoke", 1, absl::Seconds(60));
  ASSERT_TRUE(records.ok()) << records.status();
  ASSERT_EQ(records->size(), 1u);
  const ConsumedRecord& r = records->front();
  EXPECT_EQ(r.topic, "rig.smoke");
  EXPECT_EQ(r.key, "order-7");
  EXPECT_EQ(r.value, "{\"total\":42}");
  EXPECT_EQ(r.timestamp_ms, ts);
  EXPECT_TRUE(r.create_time);
  EXPECT_EQ(r.Header("id"), "e-1");
  // The partition is the real broker's, and it exists.
  EXPECT_GE(r.partition, 0);
  EXPECT_LT(r.partition, 3);
}

}  // namespace
}  // namespace outboxd::testing
