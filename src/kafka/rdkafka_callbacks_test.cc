#include "kafka/rdkafka_callbacks.h"

#include <librdkafka/rdkafka.h>

#include <memory>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace outboxd {
namespace {

using ::testing::HasSubstr;

TEST(RdKafkaLogLevelTest, SyslogLevelsMapOntoSpdlog) {
  EXPECT_EQ(RdKafkaLogLevel(0), spdlog::level::critical);  // emerg
  EXPECT_EQ(RdKafkaLogLevel(2), spdlog::level::critical);  // crit
  EXPECT_EQ(RdKafkaLogLevel(3), spdlog::level::err);
  EXPECT_EQ(RdKafkaLogLevel(4), spdlog::level::warn);
  EXPECT_EQ(RdKafkaLogLevel(5), spdlog::level::info);  // notice
  EXPECT_EQ(RdKafkaLogLevel(6), spdlog::level::info);
  EXPECT_EQ(RdKafkaLogLevel(7), spdlog::level::debug);
}

// A client that never reaches a broker: enough to raise errors on.
struct ClientDeleter {
  void operator()(rd_kafka_t* rk) const { rd_kafka_destroy(rk); }
};
std::unique_ptr<rd_kafka_t, ClientDeleter> NewClient() {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char errstr[512];
  rd_kafka_conf_set(conf, "bootstrap.servers", "127.0.0.1:1", errstr,
                    sizeof(errstr));
  rd_kafka_conf_set_log_cb(conf, nullptr);  // quiet
  rd_kafka_t* rk =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  EXPECT_NE(rk, nullptr) << errstr;
  return std::unique_ptr<rd_kafka_t, ClientDeleter>(rk);
}

TEST(RecordRdKafkaErrorTest, InformationalErrorIsNotFatal) {
  auto rk = NewClient();
  absl::Status fatal;
  RecordRdKafkaError(rk.get(), RD_KAFKA_RESP_ERR__TRANSPORT, "broker down",
                     &fatal);
  EXPECT_TRUE(fatal.ok()) << fatal;
  EXPECT_TRUE(RdKafkaFatalError(rk.get()).ok());
}

TEST(RecordRdKafkaErrorTest, FatalErrorKeepsTheFirstCause) {
  auto rk = NewClient();
  ASSERT_EQ(
      rd_kafka_test_fatal_error(
          rk.get(), RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER, "first"),
      RD_KAFKA_RESP_ERR_NO_ERROR);
  absl::Status fatal;
  RecordRdKafkaError(rk.get(), RD_KAFKA_RESP_ERR__FATAL, "ignored", &fatal);
  EXPECT_TRUE(absl::IsAborted(fatal)) << fatal;
  EXPECT_THAT(fatal.message(), HasSubstr("OUT_OF_ORDER_SEQUENCE_NUMBER"));
  EXPECT_THAT(fatal.message(), HasSubstr("first"));

  absl::Status kept = fatal;
  RecordRdKafkaError(rk.get(), RD_KAFKA_RESP_ERR__FATAL, "later", &fatal);
  EXPECT_EQ(fatal, kept);
  EXPECT_EQ(RdKafkaFatalError(rk.get()), kept);
}

}  // namespace
}  // namespace outboxd
