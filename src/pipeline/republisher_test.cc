// The republisher's producing half (pipeline/republisher.h) against
// FakeSink: its records are the streamed ones' (the same RecordBuilder:
// CloudEvents, the topic check, the dead-letter topic), each marked
// outbox.republished, and it ends only when Kafka holds them all.
#include "pipeline/republisher.h"

#include <atomic>
#include <memory>
#include <string>
#include <utility>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "outbox/cloudevents.h"
#include "tests/fakes/fake_sink.h"

namespace outboxd {
namespace {

using ::outboxd::testing::FakeRecord;
using ::outboxd::testing::FakeSink;
using ::testing::HasSubstr;

constexpr char kSource[] = "7001/shop/outbox_slot";
const Lsn kLastAck(0x5000);

OutboxEvent Event(std::string id, std::string type = "order") {
  OutboxEvent e;
  e.position = {Lsn(0x9000 - 1), 0};
  e.commit_time_unix_ms = 1700000000000;
  e.id = std::move(id);
  e.aggregate_type = std::move(type);
  e.aggregate_id = "agg-" + e.id;
  e.type = "Created";
  e.payload = "{\"n\":1}";
  e.table = "public.outbox";
  return e;
}

class RepublisherTest : public ::testing::Test {
 protected:
  absl::Status Start() {
    RecordBuilder records(options_);
    records.SetSource(kSource);
    auto p = RepublishProducer::Create(
        records, producer_options_,
        [this](const ProducerOptions& o,
               DeliveryCallback cb) -> absl::StatusOr<std::unique_ptr<Sink>> {
          made_with_ = o;
          auto sink = std::make_unique<FakeSink>(std::move(cb));
          sink_ = sink.get();
          if (configure_) configure_(*sink);
          return std::unique_ptr<Sink>(std::move(sink));
        },
        fail_on_invalid_, stop_);
    if (!p.ok()) return p.status();
    producer_ = *std::move(p);
    return absl::OkStatus();
  }
  const FakeRecord* Find(const std::string& topic, size_t n = 0) {
    for (const FakeRecord& r : sink_->acknowledged()) {
      if (r.topic == topic && n-- == 0) return &r;
    }
    return nullptr;
  }

  RecordOptions options_;
  ProducerOptions producer_options_;
  ProducerOptions made_with_;
  bool fail_on_invalid_ = false;
  std::atomic<bool> stop_{false};
  std::function<void(FakeSink&)> configure_;
  FakeSink* sink_ = nullptr;
  std::unique_ptr<RepublishProducer> producer_;
};

TEST_F(RepublisherTest, RecordsAreTheStreamedOnesMarkedRepublished) {
  ASSERT_TRUE(Start().ok());
  ASSERT_TRUE(producer_->Add(Event("e1"), kLastAck).ok());
  auto result = producer_->Finish();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->republished, 1u);
  const FakeRecord* r = Find("outbox.event.order");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->key, "agg-e1");
  EXPECT_EQ(r->Header("id"), "e1");
  EXPECT_EQ(r->Header("outbox.republished"), std::to_string(0x5000));
  EXPECT_EQ(r->Header("outbox.source"), kSource);
  EXPECT_EQ(r->Header("outbox.lsn"), std::to_string(0x9000 - 1));
}

// A lost slot under --cloudevents: republished records are CloudEvents too.
TEST_F(RepublisherTest, CloudEventsHoldForRepublishedRecords) {
  options_.cloudevents.mode = CloudEventsMode::kBinary;
  ASSERT_TRUE(Start().ok());
  ASSERT_TRUE(producer_->Add(Event("e1"), kLastAck).ok());
  ASSERT_TRUE(producer_->Finish().ok());
  const FakeRecord* r = Find("outbox.event.order");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->Header("ce_specversion"), "1.0");
  EXPECT_EQ(r->Header("ce_id"), "e1");
  EXPECT_TRUE(r->Header("ce_source").has_value());
}

// A row whose aggregatetype makes an illegal topic is dead-lettered, and
// the republish goes on (it used to abort, and every restart republished
// everything again).
TEST_F(RepublisherTest, AnIllegalTopicIsDeadLetteredAndTheRestGoesOn) {
  ASSERT_TRUE(Start().ok());
  ASSERT_TRUE(producer_->Add(Event("bad", "no spaces allowed"), kLastAck).ok());
  ASSERT_TRUE(producer_->Add(Event("good"), kLastAck).ok());
  auto result = producer_->Finish();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->republished, 1u);
  EXPECT_EQ(result->dead_lettered, 1u);
  const FakeRecord* dlq = Find("outbox.dlq");
  ASSERT_NE(dlq, nullptr);
  EXPECT_THAT(*dlq->Header("outbox.error"), HasSubstr("cannot route to"));
  EXPECT_EQ(dlq->Header("outbox.republished"), std::to_string(0x5000));
  EXPECT_NE(Find("outbox.event.order"), nullptr);
}

TEST_F(RepublisherTest, AnInvalidRowIsDeadLetteredOrStopsByPolicy) {
  InvalidEvent bad;
  bad.position = {Lsn(0x9000 - 1), 3};
  bad.reason = "aggregateid is NULL";
  bad.content = "{}";
  ASSERT_TRUE(Start().ok());
  ASSERT_TRUE(producer_->Add(bad, kLastAck).ok());
  ASSERT_TRUE(producer_->Finish().ok());
  const FakeRecord* dlq = Find("outbox.dlq");
  ASSERT_NE(dlq, nullptr);
  EXPECT_EQ(dlq->Header("outbox.error"), "aggregateid is NULL");
  EXPECT_EQ(dlq->Header("outbox.index"), "3");
  EXPECT_EQ(dlq->Header("outbox.republished"), std::to_string(0x5000));

  fail_on_invalid_ = true;
  ASSERT_TRUE(Start().ok());
  EXPECT_EQ(producer_->Add(bad, kLastAck).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(RepublisherTest, ARecordTheProducerRefusesIsDeadLettered) {
  configure_ = [](FakeSink& s) {
    s.refuse = [](const KafkaRecord& r) {
      return r.topic == "outbox.event.order"
                 ? absl::InvalidArgumentError("MSG_SIZE_TOO_LARGE")
                 : absl::OkStatus();
    };
  };
  ASSERT_TRUE(Start().ok());
  ASSERT_TRUE(producer_->Add(Event("big"), kLastAck).ok());
  auto result = producer_->Finish();
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->dead_lettered, 1u);
  const FakeRecord* dlq = Find("outbox.dlq");
  ASSERT_NE(dlq, nullptr);
  EXPECT_THAT(*dlq->Header("outbox.error"), HasSubstr("MSG_SIZE_TOO_LARGE"));
}

TEST_F(RepublisherTest, AFailedDeliveryFailsTheRepublish) {
  configure_ = [](FakeSink& s) {
    s.fail_delivery = [](const FakeRecord&) {
      return absl::UnavailableError("broker down");
    };
  };
  ASSERT_TRUE(Start().ok());
  absl::Status added = producer_->Add(Event("e1"), kLastAck);
  absl::Status s = added.ok() ? producer_->Finish().status() : added;
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_THAT(s.message(), HasSubstr("broker down"));
}

TEST_F(RepublisherTest, FinishWaitsForEveryAcknowledgementAndStops) {
  configure_ = [](FakeSink& s) { s.hold_acks = true; };
  ASSERT_TRUE(Start().ok());
  ASSERT_TRUE(producer_->Add(Event("e1"), kLastAck).ok());
  stop_ = true;  // nothing acknowledged yet: the stop ends the wait
  EXPECT_EQ(producer_->Finish().status().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(sink_->acknowledged().empty());
}

// The reconciler under --delivery=exactly-once: its late records are one
// Kafka transaction, and their ids count as acknowledged only once it
// committed (an id counted before could hide a row the abort lost).
TEST_F(RepublisherTest, ATransactionalIdMakesOneCommittedTransaction) {
  producer_options_.transactional_id = "outboxd-7001-shop-reconcile";
  AcknowledgedIds ids;
  ASSERT_TRUE(Start().ok());
  EXPECT_EQ(made_with_.transactional_id, "outboxd-7001-shop-reconcile");
  producer_->set_acknowledged(&ids);
  ASSERT_TRUE(producer_->AddReconciled(Event("e1"), kLastAck).ok());
  ASSERT_TRUE(producer_->AddReconciled(Event("e2"), kLastAck).ok());
  EXPECT_TRUE(sink_->in_transaction());
  sink_->Poll(absl::ZeroDuration());  // both reported, not yet committed
  EXPECT_THAT(ids.ContainsEach({AcknowledgedIds::Hash("e1")}),
              ::testing::ElementsAre(false));
  EXPECT_EQ(producer_->delivered(), 0u);  // reported, not committed
  ASSERT_TRUE(producer_->Finish().ok());
  EXPECT_EQ(producer_->delivered(), 2u);
  EXPECT_EQ(sink_->transactions_committed(), 1);
  EXPECT_FALSE(sink_->in_transaction());
  ASSERT_EQ(sink_->committed().size(), 2u);
  EXPECT_TRUE(sink_->committed()[0].Header("outbox.reconciled").has_value());
  EXPECT_THAT(ids.ContainsEach(
                  {AcknowledgedIds::Hash("e1"), AcknowledgedIds::Hash("e2")}),
              ::testing::ElementsAre(true, true));
}

TEST_F(RepublisherTest, AFailedDeliveryAbortsTheTransaction) {
  producer_options_.transactional_id = "outboxd-7001-shop-reconcile";
  configure_ = [](FakeSink& s) {
    s.fail_delivery = [](const FakeRecord& r) {
      return r.key == "agg-e2" ? absl::UnavailableError("broker down")
                               : absl::OkStatus();
    };
  };
  AcknowledgedIds ids;
  ASSERT_TRUE(Start().ok());
  producer_->set_acknowledged(&ids);
  ASSERT_TRUE(producer_->AddReconciled(Event("e1"), kLastAck).ok());
  producer_->AddReconciled(Event("e2"), kLastAck).IgnoreError();
  absl::Status s = producer_->Finish().status();
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(producer_->delivered(), 0u);
  EXPECT_EQ(sink_->transactions_aborted(), 1);
  EXPECT_TRUE(sink_->committed().empty());
  EXPECT_THAT(ids.ContainsEach({AcknowledgedIds::Hash("e1")}),
              ::testing::ElementsAre(false));
}

}  // namespace
}  // namespace outboxd
