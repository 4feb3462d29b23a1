// MockCluster: an in-process Kafka cluster (librdkafka's mock cluster) for
// the unit tests of the librdkafka clients (kafka/producer, kafka/read_back).
#ifndef OUTBOXD_TESTS_FAKES_MOCK_CLUSTER_H_
#define OUTBOXD_TESTS_FAKES_MOCK_CLUSTER_H_

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <cstdint>
#include <string>

#include "gtest/gtest.h"

namespace outboxd {

// An in-process Kafka cluster (librdkafka's mock) on ephemeral ports.
class MockCluster {
 public:
  explicit MockCluster(int brokers) {
    char errstr[512];
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, nullptr);  // quiet
    handle_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (handle_ == nullptr) {
      ADD_FAILURE() << errstr;
      rd_kafka_conf_destroy(conf);
      return;
    }
    cluster_ = rd_kafka_mock_cluster_new(handle_, brokers);
    if (cluster_ == nullptr) ADD_FAILURE() << "mock cluster not created";
  }
  ~MockCluster() {
    if (cluster_ != nullptr) rd_kafka_mock_cluster_destroy(cluster_);
    if (handle_ != nullptr) rd_kafka_destroy(handle_);
  }
  MockCluster(const MockCluster&) = delete;
  MockCluster& operator=(const MockCluster&) = delete;

  std::string bootstraps() const {
    return rd_kafka_mock_cluster_bootstraps(cluster_);
  }
  void CreateTopic(const std::string& topic, int partitions) {
    ASSERT_EQ(
        rd_kafka_mock_topic_create(cluster_, topic.c_str(), partitions, 1),
        RD_KAFKA_RESP_ERR_NO_ERROR);
  }
  // The next `count` requests of `api_key` fail with `err`.
  void FailRequests(int16_t api_key, int count, rd_kafka_resp_err_t err) {
    for (int i = 0; i < count; ++i) {
      rd_kafka_mock_push_request_errors(cluster_, api_key, 1, err);
    }
  }
  void SetAllBrokersDown(int brokers) {
    for (int id = 1; id <= brokers; ++id) {
      rd_kafka_mock_broker_set_down(cluster_, id);
    }
  }

 private:
  rd_kafka_t* handle_ = nullptr;
  rd_kafka_mock_cluster_t* cluster_ = nullptr;
};

}  // namespace outboxd

#endif  // OUTBOXD_TESTS_FAKES_MOCK_CLUSTER_H_
