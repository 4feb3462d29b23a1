// DeadLetterSink over the in-memory FakeSink: the record is acknowledged
// before Send says OK, and every way it is not is an error.
#include "consumer/dead_letter_sink.h"

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_sink.h"

namespace outboxd {
namespace {

using ::outboxd::testing::FakeSink;
using ::testing::HasSubstr;

class DeadLetterSinkTest : public ::testing::Test {
 protected:
  DeadLetterSinkTest() {
    DeadLetterOptions o;
    o.brokers = "b:9092";
    o.topic = "dlq";
    o.group_id = "shipping";
    o.kafka_properties = {{"session.timeout.ms", "3000"}};
    o.timeout = absl::Milliseconds(200);
    sink_ = std::make_unique<DeadLetterSink>(
        o,
        [this](const ProducerOptions& po, DeliveryCallback on_delivery)
            -> absl::StatusOr<std::unique_ptr<Sink>> {
          ++created_;
          producer_options_ = po;
          auto fake = std::make_unique<FakeSink>(std::move(on_delivery));
          fake_ = fake.get();
          return fake;
        });
    record_.topic = "orders";
    record_.partition = 1;
    record_.offset = 7;
    record_.key = "k";
    record_.value = "v";
    record_.event_id = "e-1";
  }

  InboxRecord record_;
  std::unique_ptr<DeadLetterSink> sink_;
  FakeSink* fake_ = nullptr;
  int created_ = 0;
  ProducerOptions producer_options_;
};

TEST_F(DeadLetterSinkTest, ProducerIsMadeAtTheFirstSendOnly) {
  EXPECT_EQ(created_, 0);
  ASSERT_TRUE(sink_->Send(record_, "boom", 5).ok());
  ASSERT_TRUE(sink_->Send(record_, "boom again", 5).ok());
  EXPECT_EQ(created_, 1);
  EXPECT_EQ(producer_options_.brokers, "b:9092");
  // Consumer-only properties stay with the consumer.
  EXPECT_THAT(
      producer_options_.properties,
      ::testing::ElementsAre(::testing::Pair("client.id", "outbox-inbox-dlq")));
  ASSERT_EQ(fake_->acknowledged().size(), 2u);
  const auto& r = fake_->acknowledged()[0];
  EXPECT_EQ(r.topic, "dlq");
  EXPECT_EQ(r.key, "k");
  EXPECT_EQ(r.value, "v");
  EXPECT_EQ(r.Header("inbox.error"), "boom");
  EXPECT_EQ(r.Header("inbox.offset"), "7");
}

TEST_F(DeadLetterSinkTest, FailedDeliveryIsReturned) {
  ASSERT_TRUE(sink_->Send(record_, "first", 1).ok());  // makes the fake
  fake_->fail_delivery = [](const auto&) {
    return absl::PermissionDeniedError("not authorized for dlq");
  };
  absl::Status s = sink_->Send(record_, "boom", 5);
  EXPECT_TRUE(absl::IsPermissionDenied(s)) << s;
}

TEST_F(DeadLetterSinkTest, NoAcknowledgementWithinTheTimeoutIsUnavailable) {
  ASSERT_TRUE(sink_->Send(record_, "first", 1).ok());
  fake_->hold_acks = true;
  absl::Status s = sink_->Send(record_, "boom", 5);
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("dead-lettering to dlq timed out"));
}

TEST_F(DeadLetterSinkTest, QueueFullWaitsThenGivesUp) {
  ASSERT_TRUE(sink_->Send(record_, "first", 1).ok());
  fake_->capacity = 0;
  absl::Status s = sink_->Send(record_, "boom", 5);
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_GT(fake_->produce_calls(), 2u);  // retried while polling
}

TEST_F(DeadLetterSinkTest, UnproducibleRecordIsReturnedAtOnce) {
  ASSERT_TRUE(sink_->Send(record_, "first", 1).ok());
  fake_->refuse = [](const KafkaRecord&) {
    return absl::InvalidArgumentError("message too large");
  };
  size_t calls = fake_->produce_calls();
  absl::Status s = sink_->Send(record_, "boom", 5);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_EQ(fake_->produce_calls(), calls + 1);
}

}  // namespace
}  // namespace outboxd
