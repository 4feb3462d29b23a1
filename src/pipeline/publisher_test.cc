// The Publisher's rules, against an in-memory sink and a scripted source:
// backpressure, dead-lettering by policy, acknowledgement tracking,
// exactly-once admission and reconnection. No process, no broker.
#include "pipeline/publisher.h"

#include <atomic>
#include <deque>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "common/wake_pipe.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "pipeline/checkpoint.h"
#include "pipeline/read_coalescer.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"
#include "tests/fakes/fake_sink.h"
#include "tests/fakes/fake_source.h"

namespace outboxd {
namespace {

using ::outboxd::testing::FakeRecord;
using ::outboxd::testing::FakeSink;
using ::outboxd::testing::FakeSource;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr int kMaxTicks = 200000;  // a test that never stops fails

OutboxEvent Event(uint64_t lsn, uint32_t index, std::string id,
                  std::string type = "order") {
  OutboxEvent e;
  e.position = {Lsn(lsn), index};
  e.commit_time_unix_ms = 1000;
  e.id = std::move(id);
  e.aggregate_type = std::move(type);
  e.aggregate_id = "agg-" + e.id;
  e.type = "Created";
  e.payload = "{\"n\":1}";
  return e;
}

InvalidEvent Invalid(uint64_t lsn, uint32_t index, std::string reason) {
  InvalidEvent bad;
  bad.position = {Lsn(lsn), index};
  bad.reason = std::move(reason);
  bad.content = "{\"id\":null}";
  bad.aggregate_id = "agg-bad";
  return bad;
}

SourceRead Begin() { return SourceRead{SourceBegin{}, std::nullopt}; }
SourceRead Commit(uint64_t p) {
  return SourceRead{SourceCommit{SourcePosition(p)}, std::nullopt};
}
SourceRead Of(OutboxEvent e) { return SourceRead{std::move(e), std::nullopt}; }
SourceRead Of(InvalidEvent e) { return SourceRead{std::move(e), std::nullopt}; }

// Scripts one transaction committed at `lsn`: `events` events, with ids
// `prefix`0, `prefix`1, ...
void Script(FakeSource& source, uint64_t lsn, int events,
            const std::string& prefix) {
  source.Add(Begin());
  for (int i = 0; i < events; ++i) {
    source.Add(Of(Event(lsn, i, absl::StrCat(prefix, i))));
  }
  source.Add(Commit(lsn));
}

// Scripts what `source` hands over after its next reconnect that has no
// script yet: `reads`, in order (what it resends from its confirmed position).
void ResendAfterReconnect(FakeSource& source, std::vector<SourceRead> reads) {
  std::deque<FakeSource::Entry> again;
  for (SourceRead& r : reads) again.push_back({absl::OkStatus(), std::move(r)});
  source.after_reconnect.push_back(std::move(again));
}

class PublisherTest : public ::testing::Test {
 protected:
  PublisherTest() : metrics_(nullptr) {}

  // Runs the publisher until `done` holds at a tick (then stops it), or an
  // error ends it.
  absl::Status Run(std::function<bool(FakeSource&)> done) {
    source_.on_tick = [this, done](FakeSource& s) {
      if (on_tick_) on_tick_(s);
      if (++ticks_ > kMaxTicks || done(s)) {
        stop_ = true;
        stop_pipe_.Notify();
      }
    };
    return RunStreams({PublisherStream{&source_, ""}});
  }

  // Runs a Publisher of `streams` over a FakeSink (configure_sink_) until
  // a tick stops it, or an error ends it.
  absl::Status RunStreams(std::vector<PublisherStream> streams) {
    Publisher publisher(
        options_, std::move(streams), metrics_.get(),
        [this](const ProducerOptions& o,
               DeliveryCallback cb) -> absl::StatusOr<std::unique_ptr<Sink>> {
          producer_options_ = o;
          auto sink = std::make_unique<FakeSink>(std::move(cb));
          sink_ = sink.get();
          sink->use_event_fd = sink_event_fd_;
          sink->on_destroy = [this](const FakeSink& s) {
            final_.committed = s.committed();
            final_.acknowledged = s.acknowledged();
            final_.aborted = s.transactions_aborted();
            final_.transactions = s.transactions_committed();
            sink_ = nullptr;
          };
          if (configure_sink_) configure_sink_(*sink);
          return std::unique_ptr<Sink>(std::move(sink));
        });
    absl::Status s = publisher.Run(stop_);
    stats_ = publisher.stats();
    EXPECT_LE(ticks_, kMaxTicks) << "never stopped";
    return s;
  }

  // Hands `items` over as one transaction committed at `commit`, runs
  // until it is durable and returns what the sink committed by then.
  std::vector<FakeRecord> PublishTransaction(std::vector<SourceRead> items,
                                             uint64_t commit = 100) {
    source_.Add(Begin());
    for (SourceRead& r : items) source_.Add(std::move(r));
    source_.Add(Commit(commit));
    std::vector<FakeRecord> records;
    on_tick_ = [&](FakeSource&) { records = sink_->committed(); };
    absl::Status s = Run(DurableAt(commit));
    EXPECT_TRUE(s.ok()) << s;
    return records;
  }

  // Done once the script is handed over and `p` is durable.
  static std::function<bool(FakeSource&)> DurableAt(uint64_t p) {
    return [p](FakeSource& s) {
      return s.script.empty() && s.durable >= SourcePosition(p);
    };
  }

  PublisherOptions options_;
  RunMetrics metrics_;
  FakeSource source_;
  FakeSink* sink_ = nullptr;    // owned by the publisher, gone after Run
  bool sink_event_fd_ = false;  // FakeSink::use_event_fd
  std::function<void(FakeSink&)> configure_sink_;
  std::function<void(FakeSource&)> on_tick_;
  ProducerOptions producer_options_;
  PipelineStats stats_;
  // What the sink saw, kept when the publisher destroys it.
  struct {
    std::vector<FakeRecord> committed;
    std::vector<FakeRecord> acknowledged;
    int aborted = 0;
    int transactions = 0;
  } final_;
  std::atomic<bool> stop_{false};
  // Readable once stop_ is set by Run (options_.stop_fd, when a test sets it).
  WakePipe stop_pipe_ = *WakePipe::Create();
  int ticks_ = 0;
};

// --- routing and the record ---------------------------------------------

TEST_F(PublisherTest, PublishesAndConfirmsAtTheCommit) {
  std::vector<FakeRecord> records =
      PublishTransaction({Of(Event(100, 0, "a")), Of(Event(100, 1, "b"))});
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].topic, "outbox.event.order");
  EXPECT_EQ(records[0].key, "agg-a");
  EXPECT_EQ(records[0].value, "{\"n\":1}");
  EXPECT_EQ(records[0].Header("outbox.source"), source_.source_identity);
  EXPECT_EQ(records[1].Header("outbox.index"), "1");
  EXPECT_EQ(source_.finished_at, SourcePosition(100));
  EXPECT_TRUE(source_.finished_clean);
  EXPECT_EQ(stats_.events_produced, 2u);
  EXPECT_EQ(stats_.events_acknowledged, 2u);
}

// The options may be a temporary (cli/main.cc passes one): the Publisher
// keeps its own copy, so what happens to the caller's object after the
// constructor changes nothing.
TEST_F(PublisherTest, KeepsItsOwnCopyOfTheOptions) {
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  source_.Add(Commit(100));
  source_.on_tick = [this](FakeSource& s) {
    if (s.script.empty() && s.durable >= SourcePosition(100)) stop_ = true;
  };
  PublisherOptions options;
  options.producer.brokers = "broker:9092";
  ProducerOptions seen;
  Publisher publisher(
      options, {PublisherStream{&source_, ""}}, metrics_.get(),
      [&seen](const ProducerOptions& o,
              DeliveryCallback cb) -> absl::StatusOr<std::unique_ptr<Sink>> {
        seen = o;
        return std::unique_ptr<Sink>(new FakeSink(std::move(cb)));
      });
  options.producer.brokers = "gone";  // as a temporary's storage would be
  ASSERT_TRUE(publisher.Run(stop_).ok());
  EXPECT_EQ(seen.brokers, "broker:9092");
}

TEST_F(PublisherTest, ValueFormatAppliesToEverySource) {
  options_.records.value_format = ValueFormat::kEnvelopeJson;
  std::vector<FakeRecord> records =
      PublishTransaction({Of(Event(100, 0, "a"))});
  ASSERT_EQ(records.size(), 1u);
  auto value = nlohmann::json::parse(*records[0].value);
  EXPECT_EQ(value["id"], "a");
}

// --cloudevents: every source's events, in the Publisher's one place.
TEST_F(PublisherTest, CloudEventsBinaryHeadersWithTheDefaultSource) {
  options_.records.cloudevents.mode = CloudEventsMode::kBinary;
  OutboxEvent e = Event(100, 0, "a");
  e.content_type = "application/json";
  std::vector<FakeRecord> records = PublishTransaction({Of(std::move(e))});
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].value, "{\"n\":1}");
  EXPECT_EQ(records[0].Header("ce_specversion"), "1.0");
  EXPECT_EQ(records[0].Header("ce_id"), "a");
  EXPECT_EQ(records[0].Header("ce_source"),
            DefaultCloudEventsSource(source_.source_identity));
  EXPECT_EQ(records[0].Header("ce_time"), "1970-01-01T00:00:01.000Z");
  EXPECT_EQ(records[0].Header("content-type"), "application/json");
  EXPECT_EQ(records[0].Header("id"), "a");  // outboxd's own stay
}

TEST_F(PublisherTest, CloudEventsStructuredValueWithTheGivenSource) {
  options_.records.cloudevents.mode = CloudEventsMode::kStructured;
  options_.records.cloudevents.source = "urn:shop";
  OutboxEvent e = Event(100, 0, "a");
  e.content_type = "application/json";
  std::vector<FakeRecord> records = PublishTransaction({Of(std::move(e))});
  ASSERT_EQ(records.size(), 1u);
  auto doc = nlohmann::json::parse(*records[0].value);
  EXPECT_EQ(doc["source"], "urn:shop");
  EXPECT_EQ(doc["data"]["n"], 1);
  EXPECT_EQ(records[0].Header("content-type"),
            "application/cloudevents+json; charset=UTF-8");
}

// Binary mode over an envelope format: the envelope is the data.
TEST_F(PublisherTest, CloudEventsBinaryOverAnEnvelopeTypesItsContent) {
  options_.records.cloudevents.mode = CloudEventsMode::kBinary;
  options_.records.value_format = ValueFormat::kEnvelopeJson;
  std::vector<FakeRecord> records =
      PublishTransaction({Of(Event(100, 0, "a"))});
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(nlohmann::json::parse(*records[0].value)["id"], "a");
  EXPECT_EQ(records[0].Header("content-type"), "application/json");
}

// An event that cannot be a CloudEvent is not lost: dead-lettered whole.
TEST_F(PublisherTest, EventThatCannotBeACloudEventIsDeadLettered) {
  options_.records.cloudevents.mode = CloudEventsMode::kStructured;
  OutboxEvent e = Event(100, 0, "a");
  e.type = "";
  std::vector<FakeRecord> records = PublishTransaction({Of(std::move(e))});
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].topic, "outbox.dlq");
  EXPECT_THAT(*records[0].Header("outbox.error"),
              HasSubstr("not a CloudEvent: the event type is empty"));
  EXPECT_EQ(nlohmann::json::parse(*records[0].value)["payload"], "{\"n\":1}");
  EXPECT_EQ(stats_.events_dead_lettered, 1u);
}

// --- backpressure -----------------------------------------------------------

TEST_F(PublisherTest, FullQueueStopsReadingUntilThereIsRoom) {
  configure_sink_ = [](FakeSink& s) {
    s.capacity = 2;
    s.hold_acks = true;
  };
  Script(source_, 100, 5, "e");
  int reads_while_full = -1;
  bool released = false;
  on_tick_ = [&](FakeSource& s) {
    if (ticks_ == 100) {
      // Begin, e0, e1 queued, e2 pending: nothing more was read.
      reads_while_full = s.reads;
      EXPECT_EQ(sink_->queued(), 2u);
      EXPECT_EQ(s.durable, SourcePosition(0));
      sink_->Release(1);  // room for one
      released = true;
    } else if (released && ticks_ == 200) {
      EXPECT_EQ(s.reads, reads_while_full + 1) << "read past the pending event";
      sink_->hold_acks = false;
    }
  };
  ASSERT_TRUE(Run(DurableAt(100)).ok());
  EXPECT_EQ(reads_while_full, 4);
  EXPECT_EQ(stats_.events_acknowledged, 5u);
  EXPECT_EQ(source_.durable, SourcePosition(100));
}

// --- acknowledgement --------------------------------------------------------

TEST_F(PublisherTest, DurableNeverPassesAnUnacknowledgedEvent) {
  configure_sink_ = [](FakeSink& s) { s.hold_acks = true; };
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  source_.Add(Of(Event(100, 1, "b")));
  source_.Add(Commit(100));
  source_.Add(Begin());
  source_.Add(Of(Event(200, 0, "c")));
  source_.Add(Commit(200));
  on_tick_ = [&](FakeSource& s) {
    const size_t acked = sink_->acknowledged().size();
    if (s.durable >= SourcePosition(100)) {
      EXPECT_GE(acked, 2u);
    }
    if (s.durable >= SourcePosition(200)) {
      EXPECT_GE(acked, 3u);
    }
    if (ticks_ % 50 == 0) sink_->Release(1);  // one at a time
  };
  ASSERT_TRUE(Run(DurableAt(200)).ok());
  EXPECT_EQ(
      source_.durable_seen,
      (std::vector<SourcePosition>{SourcePosition(100), SourcePosition(200)}));
}

TEST_F(PublisherTest, FailedDeliveryStopsWithoutConfirmingPastIt) {
  configure_sink_ = [](FakeSink& s) {
    s.fail_delivery = [](const FakeRecord& r) {
      return r.key == "agg-b" ? absl::DeadlineExceededError("message timed out")
                              : absl::OkStatus();
    };
  };
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  source_.Add(Commit(100));
  source_.Add(Begin());
  source_.Add(Of(Event(200, 0, "b")));
  source_.Add(Of(Event(200, 1, "c")));
  source_.Add(Commit(200));
  absl::Status s = Run(DurableAt(200));
  EXPECT_THAT(s.message(), HasSubstr("message timed out"));
  EXPECT_EQ(source_.durable, SourcePosition(100));
  EXPECT_EQ(source_.finished_at, SourcePosition(100));
  EXPECT_FALSE(source_.finished_clean);
}

// At-least-once: a producer that failed for good (e.g. the idempotent
// producer's OUT_OF_ORDER_SEQUENCE_NUMBER after a broker died) is replaced,
// and the source resends what it had in flight from its confirmed position.
TEST_F(PublisherTest, AFatalProducerIsReplacedAndItsEventsResent) {
  options_.session.reconnect.initial_backoff = absl::Milliseconds(1);
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  source_.Add(Commit(100));
  ResendAfterReconnect(source_, {Begin(), Of(Event(100, 0, "a")), Commit(100)});
  int sinks = 0;
  configure_sink_ = [&sinks](FakeSink& s) { s.hold_acks = ++sinks == 1; };
  on_tick_ = [&](FakeSource& s) {
    if (ticks_ == 20) {
      sink_->SetFatal(absl::InternalError("idempotence broken"));
    }
    if (sinks == 1) EXPECT_EQ(s.durable, SourcePosition(0));
  };
  absl::Status s = Run(DurableAt(100));
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(sinks, 2);
  EXPECT_EQ(source_.connects, 2);
  ASSERT_EQ(final_.committed.size(), 1u);
  EXPECT_EQ(final_.committed[0].key, "agg-a");
}

TEST_F(PublisherTest, AProducerFailingAgainAndAgainStops) {
  options_.session.reconnect.initial_backoff = absl::Milliseconds(1);
  for (int i = 0; i < 5; ++i) {
    ResendAfterReconnect(source_,
                         {Begin(), Of(Event(100, 0, "a")), Commit(100)});
  }
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  source_.Add(Commit(100));
  int sinks = 0;
  configure_sink_ = [&sinks](FakeSink& s) {
    ++sinks;
    s.hold_acks = true;
  };
  on_tick_ = [&](FakeSource&) {
    if (sink_ != nullptr && sink_->queued() > 0 && sink_->fatal_error().ok()) {
      sink_->SetFatal(absl::InternalError("idempotence broken"));
    }
  };
  absl::Status s = Run([](FakeSource&) { return false; });
  EXPECT_THAT(s.message(), HasSubstr("idempotence broken"));
  EXPECT_EQ(sinks, 4);  // the first and three replacements
  EXPECT_EQ(source_.durable, SourcePosition(0));
}

// --- dead-lettering ---------------------------------------------------------

TEST_F(PublisherTest, InvalidEventIsDeadLetteredWithItsPosition) {
  std::vector<FakeRecord> records = PublishTransaction(
      {Of(Invalid(100, 0, "aggregateid is NULL")), Of(Event(100, 1, "b"))});
  ASSERT_EQ(records.size(), 2u);
  const FakeRecord& dlq = records[0];
  EXPECT_EQ(dlq.topic, "outbox.dlq");
  EXPECT_EQ(dlq.key, "agg-bad");
  EXPECT_EQ(dlq.value, "{\"id\":null}");
  EXPECT_EQ(dlq.Header("outbox.error"), "aggregateid is NULL");
  EXPECT_EQ(dlq.Header("outbox.lsn"), "100");
  EXPECT_EQ(dlq.Header("outbox.index"), "0");
  EXPECT_EQ(dlq.Header("outbox.seq"), std::nullopt);
  EXPECT_EQ(stats_.events_dead_lettered, 1u);
  EXPECT_EQ(metrics_.get().ForSource().dead_lettered->Value(), 1);
  EXPECT_EQ(metrics_.get().ForSource().invalid_events->Value(), 1);
}

TEST_F(PublisherTest, PolledInvalidRowCarriesItsSeqOnly) {
  InvalidEvent bad = Invalid(0, 0, "payload is not JSON");
  bad.table_seq = 42;
  std::vector<FakeRecord> records = PublishTransaction({Of(std::move(bad))}, 1);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].Header("outbox.seq"), "42");
  EXPECT_EQ(records[0].Header("outbox.lsn"), std::nullopt);
  EXPECT_EQ(records[0].Header("outbox.index"), std::nullopt);
}

TEST_F(PublisherTest, OnInvalidFailStopsWithoutConfirming) {
  options_.on_invalid = InvalidEventPolicy::kFail;
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  source_.Add(Commit(100));
  source_.Add(Begin());
  source_.Add(Of(Invalid(200, 0, "aggregateid is NULL")));
  source_.Add(Commit(200));
  absl::Status s = Run(DurableAt(200));
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("--on-invalid=fail"));
  // Where the event is: its commit LSN and index.
  EXPECT_THAT(s.message(), HasSubstr("invalid event at 0/C8#0: aggregateid"));
  EXPECT_LT(source_.finished_at, SourcePosition(200));
}

TEST_F(PublisherTest, OnInvalidFailNamesAPolledRowBySeq) {
  options_.on_invalid = InvalidEventPolicy::kFail;
  InvalidEvent polled = Invalid(0, 0, "aggregateid is NULL");
  polled.table_seq = 42;
  source_.Add(Begin());
  source_.Add(Of(std::move(polled)));
  source_.Add(Commit(1));
  absl::Status s = Run(DurableAt(1));
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("invalid event row seq 42: aggregateid"));
  EXPECT_EQ(source_.finished_at, SourcePosition(0));
}

TEST_F(PublisherTest, MissingDeadLetterTopicStopsWithoutConfirming) {
  configure_sink_ = [](FakeSink& s) {
    s.topics["outbox.dlq"] = TopicState::kMissing;
  };
  source_.Add(Begin());
  source_.Add(Of(Invalid(100, 0, "aggregateid is NULL")));
  source_.Add(Commit(100));
  absl::Status s = Run(DurableAt(100));  // ~1 s: a topic is missing only
                                         // after two lookups 1 s apart
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("dead-letter topic"));
  EXPECT_EQ(source_.finished_at, SourcePosition(0));
}

TEST_F(PublisherTest, UnproducibleEventIsDeadLetteredWithEscapedContent) {
  configure_sink_ = [](FakeSink& s) {
    s.refuse = [](const KafkaRecord& r) {
      return r.topic == "outbox.event.order"
                 ? absl::InvalidArgumentError("message too large")
                 : absl::OkStatus();
    };
  };
  std::vector<FakeRecord> records =
      PublishTransaction({Of(Event(100, 0, "quote\"id"))});
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].topic, "outbox.dlq");
  EXPECT_THAT(*records[0].Header("outbox.error"),
              HasSubstr("cannot produce: message too large"));
  auto content = nlohmann::json::parse(*records[0].value);  // valid JSON
  EXPECT_EQ(content["id"], "quote\"id");
  EXPECT_EQ(content["payload_bytes"], 7);
}

// The broker refuses a whole batch for one record (larger than the topic's
// max.message.bytes): each refused record is produced again alone; the
// neighbours go through, the one refused alone is dead-lettered with the
// broker's reason, and nothing past it is confirmed before its dead-letter
// record is acknowledged.
TEST_F(PublisherTest, RecordRefusedByTheBrokerIsDeadLetteredAlone) {
  int neighbours_refused = 0;
  std::vector<FakeRecord> acked;
  configure_sink_ = [&](FakeSink& s) {
    s.fail_delivery = [&](const FakeRecord& r) {
      const absl::Status refusal =
          MarkPermanentRefusal(absl::InvalidArgumentError(
              "delivery to outbox.event.order: MSG_SIZE_TOO_LARGE: Broker: "
              "Message size too large"));
      if (r.topic == "outbox.dlq") return absl::OkStatus();
      if (r.key == "agg-big") return refusal;
      // Its neighbours in the first batch fail with it.
      if (neighbours_refused < 2) {
        ++neighbours_refused;
        return refusal;
      }
      return absl::OkStatus();
    };
    s.hold_acks = true;  // until the first three are queued: one batch
  };
  OutboxEvent big = Event(100, 1, "big");
  big.payload = std::string(5000, 'x');
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  source_.Add(Of(std::move(big)));
  source_.Add(Of(Event(100, 2, "b")));
  source_.Add(Commit(100));
  source_.Add(Begin());
  source_.Add(Of(Event(200, 0, "c")));
  source_.Add(Commit(200));
  on_tick_ = [&](FakeSource& s) {
    if (sink_->hold_acks && sink_->queued() == 3) sink_->hold_acks = false;
    acked = sink_->acknowledged();
    if (s.durable >= SourcePosition(100)) {
      bool dead_lettered = false;
      for (const FakeRecord& r : acked) {
        if (r.topic == "outbox.dlq") dead_lettered = true;
      }
      EXPECT_TRUE(dead_lettered) << "confirmed before the dead-letter ack";
    }
  };
  absl::Status s = Run(DurableAt(200));
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(neighbours_refused, 2);
  std::multiset<std::string> delivered;
  const FakeRecord* dlq = nullptr;
  for (const FakeRecord& r : acked) {
    if (r.topic == "outbox.dlq") {
      dlq = &r;
    } else {
      delivered.insert(r.key);
    }
  }
  EXPECT_EQ(delivered, (std::multiset<std::string>{"agg-a", "agg-b", "agg-c"}));
  ASSERT_NE(dlq, nullptr);
  EXPECT_EQ(dlq->key, "agg-big");
  EXPECT_THAT(*dlq->Header("outbox.error"), HasSubstr("MSG_SIZE_TOO_LARGE"));
  EXPECT_EQ(dlq->Header("outbox.index"), "1");
  EXPECT_EQ(source_.durable, SourcePosition(200));
}

TEST_F(PublisherTest, UnproducibleEventUnderFailStops) {
  options_.on_invalid = InvalidEventPolicy::kFail;
  configure_sink_ = [](FakeSink& s) {
    s.refuse = [](const KafkaRecord&) {
      return absl::InvalidArgumentError("message too large");
    };
  };
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  source_.Add(Commit(100));
  absl::Status s = Run(DurableAt(100));
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_EQ(source_.finished_at, SourcePosition(0));
}

TEST_F(PublisherTest, MisroutedEventIsDeadLetteredWhole) {
  configure_sink_ = [](FakeSink& s) {
    s.topics["outbox.event.bad"] = TopicState::kIllegal;
  };
  std::vector<FakeRecord> records = PublishTransaction(
      {Of(Event(100, 0, "a", "bad")), Of(Event(100, 1, "b"))});
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].topic, "outbox.dlq");
  EXPECT_THAT(*records[0].Header("outbox.error"),
              HasSubstr("cannot route to outbox.event.bad"));
  auto content = nlohmann::json::parse(*records[0].value);
  EXPECT_EQ(content["id"], "a");
  EXPECT_EQ(records[0].Header("id"), "a");
  EXPECT_EQ(records[1].topic, "outbox.event.order");
  EXPECT_EQ(metrics_.get().ForSource().invalid_events->Value(), 1);
}

// --- waking on events ------------------------------------------------------

// A source with a descriptor, a sink that signals its delivery reports and a
// stop descriptor: the Publisher reads what the source holds without
// waiting and sleeps in poll() in between, woken by events, not timers.
class WakingPublisherTest : public PublisherTest {
 protected:
  WakingPublisherTest() {
    source_.UseWaitFd();
    options_.stop_fd = stop_pipe_.read_fd();
    configure_sink_ = [this](FakeSink& s) {
      s.use_event_fd = true;
      if (configure_waking_sink_) configure_waking_sink_(s);
      sink_created_.store(&s);
    };
  }
  std::function<void(FakeSink&)> configure_waking_sink_;
  std::atomic<FakeSink*> sink_created_{nullptr};
};

TEST_F(WakingPublisherTest, ADeliveryReportWakesTheLoopWithoutATimer) {
  configure_waking_sink_ = [](FakeSink& s) { s.hold_acks = true; };
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  source_.Add(Commit(100));
  // The report comes from another thread, whenever it comes: before the
  // loop sleeps or while it does.
  std::thread broker([this] {
    FakeSink* sink = nullptr;
    while ((sink = sink_created_.load()) == nullptr) std::this_thread::yield();
    sink->ReleaseAllFromAnyThread();
  });
  absl::Status s = Run(DurableAt(100));
  broker.join();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(stats_.events_acknowledged, 1u);
  // Nothing is due (no status deadline, the progress log 10 s away): had
  // the loop not slept on the sink's descriptor, a timer would have ended a
  // sleep.
  EXPECT_EQ(stats_.wait_timeouts, 0u);
}

TEST_F(WakingPublisherTest, StopWakesTheLoop) {
  // The stop comes from another thread once the source is connected (a
  // stop before that ends the run without connecting), whenever it comes:
  // before the loop sleeps or while it does.
  std::thread signal;
  on_tick_ = [&](FakeSource&) {
    if (signal.joinable()) return;
    signal = std::thread([this] {
      stop_ = true;
      stop_pipe_.Notify();
    });
  };
  absl::Status s = Run([](FakeSource&) { return false; });
  ASSERT_TRUE(signal.joinable());
  signal.join();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(stats_.wait_timeouts, 0u);
  EXPECT_TRUE(source_.finished_clean);
}

TEST_F(WakingPublisherTest, DrainsTheSourceThenServesThePerWakeupWorkOnce) {
  Script(source_, 100, 100, "e");
  ASSERT_TRUE(Run(DurableAt(100)).ok());
  EXPECT_EQ(stats_.events_acknowledged, 100u);
  // 102 items: read in one wakeup, so Durable (and the sink's Poll) ran a
  // few times, not once per item.
  EXPECT_LE(source_.ticks, 4);
  EXPECT_EQ(stats_.wait_timeouts, 0u);
}

TEST_F(WakingPublisherTest, BackpressureStopsReadingTheSource) {
  configure_waking_sink_ = [](FakeSink& s) {
    s.capacity = 2;
    s.hold_acks = true;
  };
  Script(source_, 100, 5, "e");
  // Due at once, every time: the loop wakes for the source's keep-alive
  // work while the sink is full.
  source_.next_due = absl::InfinitePast();
  int reads_while_full = -1;
  on_tick_ = [&](FakeSource& s) {
    if (ticks_ == 50) {
      // Begin, e0, e1 queued, e2 pending: nothing more was read.
      reads_while_full = s.reads;
      EXPECT_EQ(sink_->queued(), 2u);
      EXPECT_EQ(s.durable, SourcePosition(0));
      sink_->hold_acks = false;
      sink_->Release();
    }
  };
  ASSERT_TRUE(Run(DurableAt(100)).ok());
  EXPECT_EQ(reads_while_full, 4);
  EXPECT_EQ(stats_.events_acknowledged, 5u);
}

TEST_F(WakingPublisherTest, TheSourcesDeadlineWakesTheLoop) {
  // Nothing to read, nothing in flight: only the source's NextDue (CDC: the
  // standby status update) ends each sleep, and Durable runs each time.
  on_tick_ = [](FakeSource& s) {
    s.next_due = absl::Now() + absl::Milliseconds(1);
  };
  ASSERT_TRUE(Run([](FakeSource& s) { return s.ticks >= 5; }).ok());
  EXPECT_GE(stats_.wait_timeouts, 4u);
  EXPECT_EQ(source_.reads, 0);
}

// --- lag by stage and the stall alarm ---------------------------------------

// A broker that acknowledges nothing: after --stall-timeout the stall
// gauge is 1 and /readyz's reason says why; once acknowledgements come,
// it clears. The loop wakes for the alarm (no other deadline is near).
TEST_F(WakingPublisherTest, NothingAcknowledgedStallsAndAcknowledgementsClear) {
  options_.session.stall_timeout = absl::Milliseconds(100);
  configure_waking_sink_ = [](FakeSink& s) { s.hold_acks = true; };
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  source_.Add(Commit(100));
  metrics::OutboxdMetrics& process = metrics_.get();
  metrics::SourceMetrics& m = process.ForSource();
  const metrics::StallReason reason = metrics::StallReason::kUnacknowledged;
  process.kafka_brokers_up->Set(1);
  std::string reason_while_stalled;
  bool cleared = false;
  on_tick_ = [&](FakeSource& s) {
    // Like CDC's status updates: the loop wakes again soon and the test
    // sees what the last wakeup set.
    s.next_due = absl::Now() + absl::Milliseconds(20);
    if (reason_while_stalled.empty() && m.Stalled(reason).Value() == 1) {
      reason_while_stalled = process.NotReadyReason();
      EXPECT_EQ(s.durable, SourcePosition(0));
      sink_->hold_acks = false;
      sink_->Release();
    }
    if (!reason_while_stalled.empty() && m.Stalled(reason).Value() == 0) {
      cleared = true;
    }
  };
  ASSERT_TRUE(Run([&](FakeSource& s) {
                return cleared && s.durable >= SourcePosition(100);
              }).ok());
  EXPECT_THAT(reason_while_stalled, HasSubstr("stalled (unacknowledged)"));
  EXPECT_EQ(m.Stalled(reason).Value(), 0);
}

// An event that waits for room in a full queue stalls with that reason.
TEST_F(WakingPublisherTest, AFullQueueStallsWithItsReason) {
  options_.session.stall_timeout = absl::Milliseconds(100);
  configure_waking_sink_ = [](FakeSink& s) {
    s.capacity = 1;
    s.hold_acks = true;
  };
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  source_.Add(Of(Event(100, 1, "b")));
  source_.Add(Commit(100));
  metrics::SourceMetrics& m = metrics_.get().ForSource();
  bool stalled = false;
  on_tick_ = [&](FakeSource& s) {
    s.next_due = absl::Now() + absl::Milliseconds(20);
    if (!stalled && m.Stalled(metrics::StallReason::kQueueFull).Value() == 1) {
      stalled = true;
      EXPECT_EQ(m.StageLag(metrics::Stage::kProduced).Value(),
                m.StageLag(metrics::Stage::kAcknowledged).Value());
      sink_->hold_acks = false;
      sink_->Release();
    }
  };
  ASSERT_TRUE(Run([&](FakeSource& s) {
                return stalled && s.durable >= SourcePosition(100);
              }).ok());
  EXPECT_EQ(m.Stalled(metrics::StallReason::kQueueFull).Value(), 0);
}

TEST_F(PublisherTest, StagePositionsFollowTheEvents) {
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  source_.Add(Commit(120));
  source_.Add(Begin());
  source_.Add(Of(Event(200, 0, "b")));
  source_.Add(Commit(220));
  source_.Add(SourceRead{std::monostate{}, SourcePosition(300)});  // keepalive
  metrics::SourceMetrics& m = metrics_.get().ForSource();
  ASSERT_TRUE(Run([&](FakeSource& s) {
                // The source said "nothing more" before the last update.
                return s.script.empty() && s.durable >= SourcePosition(300) &&
                       m.StageLsn(metrics::Stage::kConfirmed).Value() == 300 &&
                       m.StageLag(metrics::Stage::kReceived).Value() == 0;
              }).ok());
  EXPECT_EQ(m.StageLsn(metrics::Stage::kWal).Value(), 300);
  EXPECT_EQ(m.StageLsn(metrics::Stage::kReceived).Value(), 200);
  EXPECT_EQ(m.StageLsn(metrics::Stage::kProduced).Value(), 200);
  EXPECT_EQ(m.StageLsn(metrics::Stage::kAcknowledged).Value(), 200);
  for (metrics::Stage s :
       {metrics::Stage::kReceived, metrics::Stage::kProduced,
        metrics::Stage::kAcknowledged, metrics::Stage::kConfirmed}) {
    EXPECT_EQ(m.StageLag(s).Value(), 0);
  }
}

// Live traffic: the source hands over one transaction, has nothing for a
// moment (an empty read), and then the next one. Without coalescing the
// loop sleeps on the source's descriptor and reads the second at once; with
// it, the loop waits out the window before reading the source again.
class LiveTrafficTest : public WakingPublisherTest {
 protected:
  // How long the run took.
  absl::Duration RunTwoTransactions() {
    source_.Add(Begin());
    source_.Add(Of(Event(100, 0, "a")));
    source_.Add(Commit(100));
    source_.Add(SourceRead{});  // nothing now
    source_.Add(Begin());
    source_.Add(Of(Event(200, 0, "b")));
    source_.Add(Commit(200));
    const absl::Time start = absl::Now();
    absl::Status s = Run(DurableAt(200));
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_EQ(stats_.events_acknowledged, 2u);
    return absl::Now() - start;
  }
};

TEST_F(LiveTrafficTest, WithoutCoalescingTheNextTransactionIsReadAtOnce) {
  RunTwoTransactions();
  // Every sleep was ended by a descriptor, none by a timer.
  EXPECT_EQ(stats_.wait_timeouts, 0u);
}

TEST_F(LiveTrafficTest, BelowTheMinimumRateCoalescingDoesNotWait) {
  options_.session.coalesce = absl::Milliseconds(100);
  RunTwoTransactions();
  EXPECT_EQ(stats_.wait_timeouts, 0u);
}

TEST_F(LiveTrafficTest, CoalescingWaitsBeforeReadingTheSourceAgain) {
  options_.session.coalesce = absl::Milliseconds(100);
  options_.session.coalesce_min_rate = 0;  // as if the rate were high already
  const absl::Duration took = RunTwoTransactions();
  // The source was readable all along, yet after each transaction the loop
  // slept the window out (ended by its timeout, not the descriptor): the
  // shortest window (pipeline/read_coalescer.h).
  EXPECT_EQ(stats_.wait_timeouts, 2u);
  EXPECT_GE(took, 2 * ReadCoalescer::kMinWindow);
}

// --- exactly-once -----------------------------------------------------------

class ExactlyOncePublisherTest : public PublisherTest {
 protected:
  ExactlyOncePublisherTest() {
    options_.delivery = DeliveryGuarantee::kExactlyOnce;
    options_.transactions.batch.interval = absl::ZeroDuration();
  }
  std::string Group() const { return "outboxd-7000000000000000001-db-slot"; }
  void SetCheckpoint(FakeSink& s, EventPosition p) {
    s.checkpoints[Group()].push_back(
        {"outbox.event.order", 0, 1,
         EncodeCheckpoint(Checkpoint{source_.source_identity, p})});
  }
  std::optional<EventPosition> CommittedCheckpoint(FakeSink& s) {
    auto it = s.checkpoints.find(Group());
    if (it == s.checkpoints.end() || it->second.empty()) return std::nullopt;
    auto c = DecodeCheckpoint(it->second.back().metadata);
    if (!c.ok()) return std::nullopt;
    return c->position;
  }
};

TEST_F(ExactlyOncePublisherTest, SkipsAtOrBelowTheCheckpointCommitsTheRest) {
  configure_sink_ = [this](FakeSink& s) { SetCheckpoint(s, {Lsn(100), 1}); };
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  source_.Add(Of(Event(100, 1, "b")));
  source_.Add(Of(Event(100, 2, "c")));
  source_.Add(Commit(100));
  source_.Add(Begin());
  source_.Add(Of(Event(200, 0, "d")));
  source_.Add(Commit(200));
  std::vector<FakeRecord> committed;
  std::optional<EventPosition> checkpoint;
  on_tick_ = [&](FakeSource& s) {
    committed = sink_->committed();
    checkpoint = CommittedCheckpoint(*sink_);
    // Durable only once committed in Kafka.
    if (s.durable >= SourcePosition(200)) {
      EXPECT_EQ(committed.size(), 2u);
    }
  };
  ASSERT_TRUE(Run(DurableAt(200)).ok());
  EXPECT_EQ(producer_options_.transactional_id, Group());
  ASSERT_EQ(committed.size(), 2u);
  EXPECT_EQ(committed[0].key, "agg-c");
  EXPECT_EQ(committed[1].key, "agg-d");
  EXPECT_EQ(stats_.events_skipped, 2u);
  ASSERT_TRUE(checkpoint.has_value());
  EXPECT_EQ(*checkpoint, (EventPosition{Lsn(200), 0}));
}

TEST_F(ExactlyOncePublisherTest, CommitsOnlyAtTransactionBoundaries) {
  configure_sink_ = [](FakeSink& s) { s.hold_acks = false; };
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  source_.Add(Of(Event(100, 1, "b")));
  source_.Add(Commit(100));
  int commits_inside = 0;
  on_tick_ = [&](FakeSource& s) {
    if (s.in_transaction() && sink_->transactions_committed() > 0) {
      ++commits_inside;
    }
  };
  ASSERT_TRUE(Run(DurableAt(100)).ok());
  EXPECT_EQ(commits_inside, 0);
  EXPECT_EQ(stats_.transactions_committed, 1u);
}

// A delivery that fails for a cause that may pass (a leader away, a
// timeout): the transaction is aborted, nothing is confirmed past it, and
// the source starts over from its confirmed position in this process: each
// event ends up committed exactly once.
TEST_F(ExactlyOncePublisherTest, AnAbortedTransactionIsResentInProcess) {
  options_.session.reconnect.initial_backoff = absl::Milliseconds(1);
  options_.session.reconnect.max_backoff = absl::Milliseconds(1);
  int failures = 0;
  configure_sink_ = [&failures](FakeSink& s) {
    s.fail_delivery = [&failures](const FakeRecord& r) {
      if (r.key != "agg-b" || failures > 0) return absl::OkStatus();
      ++failures;
      return absl::DeadlineExceededError("message timed out");
    };
  };
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  source_.Add(Of(Event(100, 1, "b")));
  source_.Add(Commit(100));
  ResendAfterReconnect(source_, {Begin(), Of(Event(100, 0, "a")),
                                 Of(Event(100, 1, "b")), Commit(100)});
  on_tick_ = [&](FakeSource& s) {
    if (sink_->committed().empty()) EXPECT_EQ(s.durable, SourcePosition(0));
  };
  ASSERT_TRUE(Run(DurableAt(100)).ok());
  EXPECT_EQ(failures, 1);
  EXPECT_EQ(final_.aborted, 1);
  EXPECT_EQ(source_.connects, 2);
  EXPECT_EQ(metrics_.get().ForSource().reconnects->Value(), 1);
  ASSERT_EQ(final_.committed.size(), 2u);  // each exactly once
  EXPECT_EQ(final_.committed[0].key, "agg-a");
  EXPECT_EQ(final_.committed[1].key, "agg-b");
  EXPECT_EQ(source_.finished_at, SourcePosition(100));
}

TEST_F(ExactlyOncePublisherTest, ARecordRefusedForGoodStopsWithoutConfirming) {
  configure_sink_ = [](FakeSink& s) {
    s.hold_acks = true;
    s.fail_delivery = [](const FakeRecord& r) {
      return r.key == "agg-b" ? MarkPermanentRefusal(absl::InvalidArgumentError(
                                    "MSG_SIZE_TOO_LARGE"))
                              : absl::OkStatus();
    };
  };
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  source_.Add(Of(Event(100, 1, "b")));
  source_.Add(Commit(100));
  size_t committed = 0;
  on_tick_ = [&](FakeSource&) {
    if (ticks_ == 30) sink_->Release();
    committed = sink_->committed().size();
  };
  absl::Status s = Run(DurableAt(100));
  EXPECT_TRUE(absl::IsAborted(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("Kafka transaction aborted"));
  EXPECT_EQ(source_.finished_at, SourcePosition(0));
  EXPECT_EQ(committed, 0u);
  EXPECT_EQ(final_.committed.size(), 0u);
  EXPECT_EQ(final_.aborted, 1);
  EXPECT_EQ(stats_.transactions_committed, 0u);
}

TEST_F(ExactlyOncePublisherTest, FencedProducerStopsWithoutConfirming) {
  configure_sink_ = [](FakeSink& s) { s.hold_acks = true; };
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  source_.Add(Commit(100));
  on_tick_ = [&](FakeSource&) {
    if (ticks_ == 30) {
      sink_->SetFatal(absl::AbortedError("producer fenced by a newer one"));
    }
  };
  absl::Status s = Run(DurableAt(100));
  EXPECT_TRUE(absl::IsAborted(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("fenced"));
  EXPECT_EQ(source_.finished_at, SourcePosition(0));
  EXPECT_EQ(final_.committed.size(), 0u);
  EXPECT_EQ(final_.aborted, 0);  // a fenced producer cannot abort
}

TEST_F(ExactlyOncePublisherTest, RefusesTheDevBroker) {
  configure_sink_ = [](FakeSink& s) { s.cluster_id = "mockCluster1234"; };
  source_.Add(Begin());
  absl::Status s = Run([](FakeSource&) { return true; });
  EXPECT_THAT(s.message(), HasSubstr("needs Apache Kafka"));
}

// --- reconnection -----------------------------------------------------------

TEST_F(PublisherTest, ReconnectAbandonsTheOpenTransactionAndTakesItAgain) {
  configure_sink_ = [](FakeSink& s) { s.hold_acks = true; };
  options_.session.reconnect.initial_backoff = absl::Milliseconds(1);
  options_.session.reconnect.max_backoff = absl::Milliseconds(1);
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  // A keepalive of the lost connection: its position lies past the
  // transaction that is resent, and must be forgotten with it.
  source_.Add(SourceRead{std::monostate{}, SourcePosition(500)});
  source_.Fail(absl::UnavailableError("connection lost"));
  ResendAfterReconnect(source_, {Begin(), Of(Event(100, 0, "a")),
                                 Of(Event(100, 1, "b")), Commit(100)});
  on_tick_ = [&](FakeSource& s) {
    // The first copy of "a" alone confirms nothing.
    if (s.connects == 2 && sink_->acknowledged().size() < 3) {
      EXPECT_EQ(s.durable, SourcePosition(0));
    }
    if (ticks_ % 40 == 0) sink_->Release(1);
  };
  ASSERT_TRUE(Run(DurableAt(100)).ok());
  EXPECT_EQ(source_.durable_seen,
            std::vector<SourcePosition>{SourcePosition(100)});
  EXPECT_EQ(source_.connects, 2);
  EXPECT_EQ(source_.disconnects, 1);
  EXPECT_EQ(metrics_.get().ForSource().reconnects->Value(), 1);
  EXPECT_EQ(stats_.events_acknowledged, 3u);  // "a" twice: at-least-once
  EXPECT_EQ(final_.committed.size(), 3u);
}

TEST_F(ExactlyOncePublisherTest, ReconnectCommitsFirstThenSkipsTheResent) {
  options_.session.reconnect.initial_backoff = absl::Milliseconds(1);
  options_.session.reconnect.max_backoff = absl::Milliseconds(1);
  options_.transactions.batch.interval = absl::Hours(1);  // no commit on age
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  source_.Add(Of(Event(100, 1, "b")));
  source_.Fail(absl::UnavailableError("connection lost"));
  ResendAfterReconnect(source_,
                       {Begin(), Of(Event(100, 0, "a")), Of(Event(100, 1, "b")),
                        Of(Event(100, 2, "c")), Commit(100)});
  ASSERT_TRUE(Run([](FakeSource& s) {
                return s.script.empty() && s.connects == 2;
              }).ok());
  // a and b before the reconnect (committed then), c after; the resent a
  // and b are at or below that commit's checkpoint.
  EXPECT_EQ(stats_.events_produced, 3u);
  EXPECT_EQ(stats_.events_skipped, 2u);
  ASSERT_EQ(final_.committed.size(), 3u);  // each exactly once
  EXPECT_EQ(final_.committed[0].key, "agg-a");
  EXPECT_EQ(final_.committed[1].key, "agg-b");
  EXPECT_EQ(final_.committed[2].key, "agg-c");
  EXPECT_GE(stats_.transactions_committed, 2u);  // before reconnect, at stop
  EXPECT_EQ(source_.finished_at, SourcePosition(100));
}

// A Kafka commit that aborts (a delivery failed for a cause that may pass)
// rewinds the source: one reconnect, whichever commit noticed it.
class RewindingCommitTest : public ExactlyOncePublisherTest {
 protected:
  // "b"'s delivery fails once; the reports of a and b are held until a
  // tick where the source is `in_transaction` or not, so that the commit
  // after that tick is the first to see the failure.
  void RunAbortedByACommit(bool in_transaction) {
    options_.session.reconnect.initial_backoff = absl::Milliseconds(1);
    options_.session.reconnect.max_backoff = absl::Milliseconds(1);
    configure_sink_ = [this](FakeSink& s) {
      s.hold_acks = true;
      s.fail_delivery = [this](const FakeRecord& r) {
        if (r.key != "agg-b" || failures_ > 0) return absl::OkStatus();
        ++failures_;
        return absl::DeadlineExceededError("message timed out");
      };
    };
    on_tick_ = [in_transaction, this](FakeSource& s) {
      if (sink_ != nullptr && sink_->queued() == 2 &&
          s.in_transaction() == in_transaction) {
        sink_->Release();
      }
    };
    ResendAfterReconnect(source_, {Begin(), Of(Event(100, 0, "a")),
                                   Of(Event(100, 1, "b")), Commit(100)});
    ASSERT_TRUE(Run(DurableAt(100)).ok());
    EXPECT_EQ(failures_, 1);
    EXPECT_EQ(final_.aborted, 1);
    EXPECT_EQ(source_.connects, 2);
    EXPECT_EQ(source_.disconnects, 1);
    EXPECT_EQ(metrics_.get().ForSource().reconnects->Value(), 1);
    ASSERT_EQ(final_.committed.size(), 2u);  // each exactly once
    EXPECT_EQ(final_.committed[0].key, "agg-a");
    EXPECT_EQ(final_.committed[1].key, "agg-b");
  }
  int failures_ = 0;
};

// The commit before a reconnect (the connection was lost mid-transaction).
TEST_F(RewindingCommitTest, ALostConnectionsCommitAbortsAndRewindsOnce) {
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  source_.Add(Of(Event(100, 1, "b")));
  source_.Fail(absl::UnavailableError("connection lost"));
  RunAbortedByACommit(/*in_transaction=*/true);
}

// The commit that was due at the source transaction's end.
TEST_F(RewindingCommitTest, ADueCommitAbortsAndRewindsOnce) {
  source_.Add(Begin());
  source_.Add(Of(Event(100, 0, "a")));
  source_.Add(Of(Event(100, 1, "b")));
  source_.Add(Commit(100));
  RunAbortedByACommit(/*in_transaction=*/false);
}

// The source reconnects to a server whose WAL went back (a restore, a
// promoted standby that was behind) and starts over at a new position: its
// new events reuse positions at or below the checkpoint committed before,
// and none of them is skipped as "already in Kafka".
TEST_F(ExactlyOncePublisherTest,
       ARestartedSourceIsNeverSkippedByTheOldCheckpoint) {
  options_.session.reconnect.initial_backoff = absl::Milliseconds(1);
  options_.session.reconnect.max_backoff = absl::Milliseconds(1);
  configure_sink_ = [this](FakeSink& s) { SetCheckpoint(s, {Lsn(500), 0}); };
  source_.Add(Begin());
  source_.Add(Of(Event(600, 0, "a")));
  source_.Add(Commit(600));
  source_.Fail(absl::UnavailableError("connection lost"));
  ResendAfterReconnect(
      source_, {Begin(), Of(Event(300, 0, "new1")), Of(Event(300, 1, "new2")),
                Commit(300), Begin(), Of(Event(550, 0, "new3")), Commit(550)});
  source_.restart_on_reconnect.push_back(SourcePosition(200));
  ASSERT_TRUE(Run([](FakeSource& s) {
                return s.script.empty() && s.connects == 2 &&
                       s.durable >= SourcePosition(550);
              }).ok());
  EXPECT_EQ(stats_.events_skipped, 0u);
  ASSERT_EQ(final_.committed.size(), 4u);
  EXPECT_EQ(final_.committed[1].key, "agg-new1");
  EXPECT_EQ(final_.committed[2].key, "agg-new2");
  EXPECT_EQ(final_.committed[3].key, "agg-new3");
}

// --- several sources, one sink ------------------------------------------

// Two sources (--databases) on one Publisher: each has a descriptor, so
// both are read without waiting and the loop sleeps on both.
class TwoSourcePublisherTest : public PublisherTest {
 protected:
  TwoSourcePublisherTest() {
    a_.source_identity = "7000000000000000001/db_a/slot_a";
    b_.source_identity = "7000000000000000001/db_b/slot_b";
    a_.UseWaitFd();
    b_.UseWaitFd();
    sink_event_fd_ = true;
    options_.stop_fd = stop_pipe_.read_fd();
  }

  // Runs until `done` holds at a tick of either source, or an error.
  absl::Status RunBoth(std::function<bool()> done) {
    auto tick = [this, done](FakeSource&) {
      if (on_tick_both_) on_tick_both_();
      if (++ticks_ > kMaxTicks || done()) {
        stop_ = true;
        stop_pipe_.Notify();
      }
    };
    a_.on_tick = tick;
    b_.on_tick = tick;
    return RunStreams(
        {PublisherStream{&a_, "db_a"}, PublisherStream{&b_, "db_b"}});
  }

  FakeSource a_;
  FakeSource b_;
  // The sources' metrics, as the Publisher names them.
  metrics::SourceMetrics& metrics_a_ = metrics_.get().ForSource("db_a");
  metrics::SourceMetrics& metrics_b_ = metrics_.get().ForSource("db_b");
  std::function<void()> on_tick_both_;
};

TEST_F(TwoSourcePublisherTest, EachSourceConfirmsOnlyItsOwnAcknowledgements) {
  configure_sink_ = [](FakeSink& s) { s.hold_acks = true; };
  Script(a_, 100, 2, "a");
  Script(b_, 900, 3, "b");
  // Acknowledgements come one per wakeup (a release wakes the loop through
  // the sink's descriptor): no source is ever durable before all its own
  // records are acknowledged, whatever the other's state.
  bool b_durable_before_its_acks = false;
  on_tick_both_ = [&] {
    if (sink_ == nullptr) return;
    size_t b_acked = 0;
    for (const FakeRecord& r : sink_->acknowledged()) {
      if (r.Header("outbox.source") == b_.source_identity) ++b_acked;
    }
    if (b_.durable >= SourcePosition(900) && b_acked < 3) {
      b_durable_before_its_acks = true;
    }
    sink_->Release(1);
  };
  ASSERT_TRUE(RunBoth([&] {
                return a_.durable >= SourcePosition(100) &&
                       b_.durable >= SourcePosition(900);
              }).ok());
  EXPECT_FALSE(b_durable_before_its_acks);
  EXPECT_EQ(a_.durable_seen, std::vector<SourcePosition>{SourcePosition(100)});
  EXPECT_EQ(b_.durable_seen, std::vector<SourcePosition>{SourcePosition(900)});
  EXPECT_EQ(a_.finished_at, SourcePosition(100));
  EXPECT_EQ(b_.finished_at, SourcePosition(900));
  ASSERT_EQ(final_.acknowledged.size(), 5u);
  int from_a = 0;
  for (const FakeRecord& r : final_.acknowledged) {
    // outbox.source tells the streams apart.
    if (r.Header("outbox.source") == a_.source_identity) {
      ++from_a;
      EXPECT_TRUE(absl::StartsWith(r.key, "agg-a")) << r.key;
    } else {
      EXPECT_EQ(r.Header("outbox.source"), b_.source_identity);
      EXPECT_TRUE(absl::StartsWith(r.key, "agg-b")) << r.key;
    }
  }
  EXPECT_EQ(from_a, 2);
  // Per-source metrics: each its own series.
  EXPECT_EQ(metrics_a_.streaming->Value(), 0);  // after the stop
}

TEST_F(TwoSourcePublisherTest, ALostSourceReconnectsAloneWhileTheOtherFlows) {
  options_.session.reconnect.initial_backoff = absl::Milliseconds(1);
  options_.session.reconnect.max_backoff = absl::Milliseconds(2);
  Script(a_, 100, 1, "a");
  a_.Fail(absl::UnavailableError("terminating connection"));
  // a's slot is busy for a while (a standby's wait): three refusals.
  for (int i = 0; i < 3; ++i) {
    a_.connect_errors.push_back(absl::UnavailableError(
        "replication slot \"slot_a\" is active for PID 42"));
  }
  ResendAfterReconnect(a_, {Begin(), Of(Event(300, 0, "a2")), Commit(300)});
  Script(b_, 900, 2, "b");
  bool b_durable_while_a_down = false;
  bool b_late = false;
  on_tick_both_ = [&] {
    if (b_.durable >= SourcePosition(900) && a_.failed_connects > 0 &&
        a_.connects == 1) {
      b_durable_while_a_down = true;
    }
    // b keeps handing over while a is down: a second transaction once b
    // handed over its first (in its first wakeup), which is iterations
    // before a can connect twice (three refusals, a read, a reconnect),
    // however slow the loop.
    if (!b_late && a_.connects < 2 && b_.script.empty()) {
      Script(b_, 950, 1, "b-late");
      b_late = true;
    }
  };
  ASSERT_TRUE(RunBoth([&] {
                return a_.durable >= SourcePosition(300) &&
                       b_.durable >= SourcePosition(950);
              }).ok());
  EXPECT_TRUE(b_durable_while_a_down);
  EXPECT_EQ(a_.connects, 2);
  EXPECT_EQ(a_.failed_connects, 3);
  EXPECT_EQ(a_.disconnects, 1);
  EXPECT_EQ(b_.connects, 1);  // never disturbed
  EXPECT_EQ(b_.disconnects, 0);
  EXPECT_EQ(metrics_a_.reconnects->Value(), 1);
  EXPECT_EQ(metrics_b_.reconnects->Value(), 0);
  EXPECT_EQ(stats_.events_acknowledged, 5u);
}

// The per-event metrics of a source's events go to its own series,
// labelled source="<its name>".
TEST_F(TwoSourcePublisherTest, PerEventMetricsGoToTheirSource) {
  Script(a_, 100, 2, "a");
  b_.Add(Begin());
  b_.Add(Of(Invalid(900, 0, "aggregateid is NULL")));
  OutboxEvent forged = Event(900, 1, "b0");
  forged.dropped_headers = {"id", "outbox.lsn"};
  b_.Add(Of(std::move(forged)));
  b_.Add(Commit(900));
  std::ostringstream log;
  auto previous = spdlog::default_logger();
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(log);
  sink->set_pattern("%l %v");
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("t", sink));
  absl::Status run = RunBoth([&] {
    return a_.durable >= SourcePosition(100) &&
           b_.durable >= SourcePosition(900);
  });
  spdlog::set_default_logger(previous);
  ASSERT_TRUE(run.ok()) << run;
  const std::string topic = "outbox.event.order";
  EXPECT_EQ(metrics_a_.PublishedTo(topic).Value(), 2);
  EXPECT_EQ(metrics_b_.PublishedTo(topic).Value(), 1);
  const std::string text = metrics_.get().registry->Exposition();
  EXPECT_THAT(text, HasSubstr("outboxd_commit_to_ack_seconds_count{source="
                              "\"db_a\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("outboxd_commit_to_ack_seconds_count{source="
                              "\"db_b\"} 1\n"));
  EXPECT_THAT(text, Not(HasSubstr("outboxd_commit_to_ack_seconds_count ")));
  EXPECT_EQ(metrics_a_.invalid_events->Value(), 0);
  EXPECT_EQ(metrics_b_.invalid_events->Value(), 1);
  EXPECT_EQ(metrics_a_.dead_lettered->Value(), 0);
  EXPECT_EQ(metrics_b_.dead_lettered->Value(), 1);
  EXPECT_EQ(metrics_a_.reserved_headers_dropped->Value(), 0);
  EXPECT_EQ(metrics_b_.reserved_headers_dropped->Value(), 2);
  // The log lines of a source's events name it.
  EXPECT_THAT(log.str(), HasSubstr("warning [db_b] invalid event at 0/384#0: "
                                   "aggregateid is NULL"));
  EXPECT_THAT(log.str(),
              HasSubstr("warning [db_b] event b0 at 0/384#1: reserved "
                        "header(s) id, outbox.lsn in its headers column"));
}

// outboxd_events_in_flight falls back to 0 once the events are
// acknowledged, without waiting for the source to hand over anything more
// (an idle database's walsender may send nothing for a while).
TEST_F(TwoSourcePublisherTest, EventsInFlightFallsToZeroOnceAcknowledged) {
  Script(a_, 100, 2, "a");
  double in_flight_once_durable = -1;
  int ticks_since_durable = 0;
  ASSERT_TRUE(RunBoth([&] {
                // A tick is a Durable call, at the start of a stream's
                // wakeup: the next tick (b's, or a's next wakeup) comes
                // after a's metrics of the wakeup that made it durable.
                if (a_.durable < SourcePosition(100) ||
                    ++ticks_since_durable < 2) {
                  return false;
                }
                in_flight_once_durable = metrics_a_.events_in_flight->Value();
                return true;
              }).ok());
  EXPECT_EQ(in_flight_once_durable, 0);
}

// A source that had nothing is read again only when its descriptor says
// so: wakeups for another source or for delivery reports do not cost it a
// read (with many databases, a recvfrom each that says EAGAIN).
TEST_F(TwoSourcePublisherTest, AnIdleSourceIsNotReadOnOtherWakeups) {
  configure_sink_ = [](FakeSink& s) { s.hold_acks = true; };
  Script(a_, 100, 20, "a");
  on_tick_both_ = [&] {
    if (sink_ != nullptr) sink_->Release(1);  // a wakeup every two reports
  };
  ASSERT_TRUE(RunBoth([&] { return a_.durable >= SourcePosition(100); }).ok());
  EXPECT_GE(stats_.waits, 8u);  // woken by the acknowledgements
  // b was read once after connecting, found nothing, and then slept.
  EXPECT_LE(b_.empty_reads, 2) << "waits " << stats_.waits;
  EXPECT_EQ(b_.reads, 0);
}

// A failure of one source's own (here a delivery Kafka refused) stops
// that source only: the other goes on, the failed one is never confirmed
// past the refused event, /readyz names it, and it is retried from its
// confirmed position once its reports are in, publishing what it had not.
TEST_F(TwoSourcePublisherTest, AFailedDeliveryStopsOnlyItsSource) {
  options_.session.reconnect.initial_backoff = absl::Milliseconds(1);
  // b is retried after this: long enough for a to publish meanwhile.
  options_.session.reconnect.max_backoff = absl::Milliseconds(200);
  configure_sink_ = [this](FakeSink& s) {
    s.fail_delivery = [this](const FakeRecord& r) {
      if (r.key != "agg-b1") return absl::OkStatus();
      Script(a_, 200, 1, "a-late");  // a goes on meanwhile
      return absl::InternalError("broken");
    };
  };
  Script(a_, 100, 1, "a");
  Script(b_, 900, 2, "b");
  // What b hands over once retried.
  ResendAfterReconnect(b_, {Begin(), Of(Event(900, 0, "b0-again")),
                            Of(Event(900, 1, "b1-again")), Commit(900)});
  bool a_flowed_while_b_failed = false;
  bool b_failed_seen = false;
  on_tick_both_ = [&] {
    if (metrics_b_.source_failed->Value() > 0) {
      b_failed_seen = true;
      EXPECT_LT(b_.durable, SourcePosition(900));  // never past agg-b1
    }
    if (a_.durable >= SourcePosition(200) && b_.connects == 1) {
      a_flowed_while_b_failed = true;  // before b was retried
    }
  };
  absl::Status s = RunBoth([&] {
    return a_.durable >= SourcePosition(200) &&
           b_.durable >= SourcePosition(900);
  });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(b_failed_seen);
  EXPECT_TRUE(a_flowed_while_b_failed);
  EXPECT_EQ(a_.connects, 1);  // never disturbed
  EXPECT_EQ(a_.disconnects, 0);
  EXPECT_EQ(b_.connects, 2);
  EXPECT_EQ(b_.disconnects, 1);
  EXPECT_EQ(metrics_b_.source_failed->Value(), 0);  // recovered
  std::set<std::string> keys;
  for (const FakeRecord& r : final_.acknowledged) keys.insert(r.key);
  EXPECT_THAT(keys, ::testing::IsSupersetOf({"agg-a0", "agg-a-late0",
                                             "agg-b0-again", "agg-b1-again"}));
  EXPECT_FALSE(keys.contains("agg-b1"));
}

// A source that cannot connect for a reason a reconnect would not cure (a
// missing database, a refused login) does not keep the others from
// streaming; it is retried, and streams once the cause is gone.
TEST_F(TwoSourcePublisherTest, ASourceThatCannotConnectDoesNotStopTheOthers) {
  options_.session.reconnect.initial_backoff = absl::Milliseconds(1);
  options_.session.reconnect.max_backoff = absl::Milliseconds(5);
  b_.connect_errors = {
      absl::FailedPreconditionError("database \"db_b\" does not exist"),
      absl::FailedPreconditionError("database \"db_b\" does not exist")};
  Script(a_, 100, 1, "a");
  Script(b_, 900, 1, "b");
  bool b_failed_seen = false;
  on_tick_both_ = [&] {
    if (metrics_b_.source_failed->Value() > 0) b_failed_seen = true;
  };
  ASSERT_TRUE(RunBoth([&] {
                return a_.durable >= SourcePosition(100) &&
                       b_.durable >= SourcePosition(900);
              }).ok());
  EXPECT_TRUE(b_failed_seen);
  EXPECT_EQ(b_.failed_connects, 2);
  EXPECT_EQ(b_.connects, 1);
  EXPECT_EQ(a_.connects, 1);
  EXPECT_EQ(stats_.events_acknowledged, 2u);
}

// When every source has failed, the run ends with the cause (exit 1).
TEST_F(TwoSourcePublisherTest, WhenEverySourceFailedTheRunEnds) {
  a_.connect_errors = {absl::PermissionDeniedError("password refused a")};
  b_.connect_errors = {absl::PermissionDeniedError("password refused b")};
  absl::Status s = RunBoth([] { return false; });
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_EQ(a_.connects + b_.connects, 0);
}

// With one source a failure of its own still stops the run (exit 1).
TEST_F(PublisherTest, AFailureOfTheOnlySourceStopsTheRun) {
  source_.connect_errors = {absl::PermissionDeniedError("password refused")};
  absl::Status s = Run(DurableAt(100));
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_EQ(metrics_.get().ForSource().source_failed->Value(), 0);
}

TEST_F(TwoSourcePublisherTest, ExactlyOnceTakesOneSource) {
  options_.delivery = DeliveryGuarantee::kExactlyOnce;
  absl::Status s = RunBoth([] { return true; });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(a_.connects + b_.connects, 0);
}

}  // namespace
}  // namespace outboxd
