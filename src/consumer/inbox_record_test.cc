// Reading an InboxRecord from a consumed message, and the dead-letter
// record built from one: pure.
#include "consumer/inbox_record.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "consumer/dead_letter_sink.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace outboxd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

ConsumedMessage Message(
    std::vector<std::pair<std::string, std::string>> headers) {
  ConsumedMessage m;
  m.topic = "outbox.event.order";
  m.partition = 2;
  m.offset = 41;
  m.key = "order-1";
  m.value = "{\"n\":1}";
  m.timestamp_ms = 1700000000000;
  m.headers = std::move(headers);
  return m;
}

TEST(InboxRecordTest, PayloadFormatTakesIdPositionAndDependenciesFromHeaders) {
  InboxRecord r =
      InboxRecordFromMessage(Message({{"id", "e-2"},
                                      {"outbox.depends-on", "e-0,,e-1"},
                                      {"outbox.source", "db/slot"},
                                      {"outbox.lsn", "12345"},
                                      {"outbox.index", "3"}}),
                             ValueFormat::kPayload);
  EXPECT_TRUE(r.decode_status.ok()) << r.decode_status;
  EXPECT_EQ(r.event_id, "e-2");
  EXPECT_THAT(r.depends_on, ElementsAre("e-0", "e-1"));
  EXPECT_EQ(r.source, "db/slot");
  EXPECT_EQ(r.lsn, 12345u);
  EXPECT_EQ(r.index, 3u);
  EXPECT_EQ(r.value, "{\"n\":1}");
  EXPECT_EQ(r.topic, "outbox.event.order");
  EXPECT_EQ(r.partition, 2);
  EXPECT_EQ(r.offset, 41);
}

TEST(InboxRecordTest, PlainRecordHasNoCloudEvent) {
  InboxRecord r =
      InboxRecordFromMessage(Message({{"id", "e-1"}}), ValueFormat::kPayload);
  EXPECT_TRUE(r.decode_status.ok()) << r.decode_status;
  EXPECT_FALSE(r.cloudevent.has_value());
  EXPECT_EQ(r.value, "{\"n\":1}");
}

// outboxd's --cloudevents=binary: the value is the payload, the attributes
// are headers beside outboxd's own.
TEST(InboxRecordTest, BinaryCloudEventGivesAttributesAndPayload) {
  InboxRecord r = InboxRecordFromMessage(
      Message({{"id", "e-2"},
               {"eventType", "OrderCreated"},
               {"ce_specversion", "1.0"},
               {"ce_id", "e-2"},
               {"ce_source", "/outboxd/73/shop/outbox_slot"},
               {"ce_type", "OrderCreated"},
               {"ce_time", "2023-11-14T22:13:20.123Z"},
               {"ce_subject", "order-1"},
               {"content-type", "application/json"},
               {"outbox.lsn", "12345"},
               {"outbox.index", "0"}}),
      ValueFormat::kPayload);
  ASSERT_TRUE(r.decode_status.ok()) << r.decode_status;
  ASSERT_TRUE(r.cloudevent.has_value());
  EXPECT_EQ(r.cloudevent->mode, CloudEventsMode::kBinary);
  EXPECT_EQ(r.cloudevent->source, "/outboxd/73/shop/outbox_slot");
  EXPECT_EQ(r.cloudevent->subject, "order-1");
  EXPECT_EQ(r.cloudevent->datacontenttype, "application/json");
  EXPECT_EQ(r.value, "{\"n\":1}");
  EXPECT_EQ(r.event_id, "e-2");
  EXPECT_EQ(r.lsn, 12345u);
}

// --cloudevents=structured, or another producer's structured event without
// outboxd's headers: the value becomes the data, the id the CloudEvent's.
TEST(InboxRecordTest, StructuredCloudEventGivesDataAsValue) {
  ConsumedMessage m = Message(
      {{"content-type", "application/cloudevents+json; charset=UTF-8"}});
  m.value = R"({"specversion":"1.0","id":"ce-7","source":"/elsewhere",)"
            R"("type":"Shipped","datacontenttype":"application/json",)"
            R"("data":{"n": 2}})";
  InboxRecord r = InboxRecordFromMessage(std::move(m), ValueFormat::kPayload);
  ASSERT_TRUE(r.decode_status.ok()) << r.decode_status;
  ASSERT_TRUE(r.cloudevent.has_value());
  EXPECT_EQ(r.cloudevent->mode, CloudEventsMode::kStructured);
  EXPECT_EQ(r.cloudevent->type, "Shipped");
  EXPECT_EQ(r.value, R"({"n": 2})");
  EXPECT_EQ(r.event_id, "ce-7");
}

// --cloudevents=binary over --value-format=envelope-json: the data is the
// envelope, decoded as before; the handler gets the payload inside it.
TEST(InboxRecordTest, BinaryCloudEventOverAnEnvelope) {
  OutboxEvent event;
  event.position = {Lsn(12345), 0};
  event.id = "e-4";
  event.aggregate_type = "order";
  event.aggregate_id = "order-1";
  event.type = "Created";
  event.payload = "{\"n\":4}";
  ConsumedMessage m = Message({{"ce_specversion", "1.0"},
                               {"ce_id", "e-4"},
                               {"ce_source", "/s"},
                               {"ce_type", "Created"},
                               {"content-type", "application/json"}});
  m.value = EncodeValue(event, ValueFormat::kEnvelopeJson);
  InboxRecord r =
      InboxRecordFromMessage(std::move(m), ValueFormat::kEnvelopeJson);
  ASSERT_TRUE(r.decode_status.ok()) << r.decode_status;
  ASSERT_TRUE(r.cloudevent.has_value());
  EXPECT_EQ(r.value, "{\"n\":4}");
  EXPECT_EQ(r.event_id, "e-4");
  EXPECT_EQ(r.lsn, 12345u);
}

TEST(InboxRecordTest, CloudEventTombstoneHasNoValue) {
  ConsumedMessage m = Message({{"ce_specversion", "1.0"},
                               {"ce_id", "e-9"},
                               {"ce_source", "/s"},
                               {"ce_type", "OrderDeleted"}});
  m.value.reset();
  InboxRecord r = InboxRecordFromMessage(std::move(m), ValueFormat::kPayload);
  ASSERT_TRUE(r.decode_status.ok()) << r.decode_status;
  ASSERT_TRUE(r.cloudevent.has_value());
  EXPECT_FALSE(r.value.has_value());
  EXPECT_EQ(r.event_id, "e-9");
}

TEST(InboxRecordTest, InvalidCloudEventFailsDecoding) {
  InboxRecord r = InboxRecordFromMessage(
      Message({{"id", "e-3"}, {"ce_specversion", "1.0"}, {"ce_id", "e-3"}}),
      ValueFormat::kPayload);
  EXPECT_THAT(r.decode_status.message(),
              HasSubstr("not a valid CloudEvent: attribute 'source'"));
  ConsumedMessage m =
      Message({{"content-type", "application/cloudevents+json"}});
  m.value = "not json";
  r = InboxRecordFromMessage(std::move(m), ValueFormat::kPayload);
  EXPECT_THAT(r.decode_status.message(), HasSubstr("not a JSON object"));
  // Header values are UTF-8 strings (the binding's rule).
  r = InboxRecordFromMessage(Message({{"ce_specversion", "1.0"},
                                      {"ce_id", "e-5"},
                                      {"ce_source", "/s"},
                                      {"ce_type", "T"},
                                      {"ce_subject", "bad\xff"}}),
                             ValueFormat::kPayload);
  EXPECT_THAT(r.decode_status.message(),
              HasSubstr("header 'ce_subject' is not UTF-8"));
}

// --source=poll|notify: the position is the row's seq, never an LSN of 0.
TEST(InboxRecordTest, PolledRecordsPositionIsItsSeqInEveryFormat) {
  OutboxEvent polled;
  polled.table_seq = 42;
  polled.id = "e-3";
  polled.aggregate_type = "order";
  polled.aggregate_id = "order-1";
  polled.type = "Created";
  polled.payload = "{\"n\":1}";
  for (ValueFormat format : {ValueFormat::kPayload, ValueFormat::kEnvelopeJson,
                             ValueFormat::kProtobuf}) {
    SCOPED_TRACE(ValueFormatName(format));
    ConsumedMessage m = Message({{"id", "e-3"},
                                 {"eventType", "Created"},
                                 {"outbox.seq", "42"},
                                 {"outbox.source", "db/public.outbox"}});
    m.value = EncodeValue(polled, format);
    InboxRecord r = InboxRecordFromMessage(std::move(m), format);
    EXPECT_TRUE(r.decode_status.ok()) << r.decode_status;
    EXPECT_EQ(r.event_id, "e-3");
    EXPECT_EQ(r.seq, 42);
    EXPECT_FALSE(r.lsn.has_value());
    EXPECT_FALSE(r.index.has_value());
    EXPECT_EQ(r.source, "db/public.outbox");
    EXPECT_EQ(r.value, "{\"n\":1}");
    if (format == ValueFormat::kPayload) continue;
    // An envelope carries the position itself, headers or not.
    m = Message({{"id", "e-3"}});
    m.value = EncodeValue(polled, format);
    r = InboxRecordFromMessage(std::move(m), format);
    EXPECT_TRUE(r.decode_status.ok()) << r.decode_status;
    EXPECT_EQ(r.seq, 42);
    EXPECT_FALSE(r.lsn.has_value());
  }
}

TEST(InboxRecordTest, StreamedRecordHasNoSeq) {
  InboxRecord r = InboxRecordFromMessage(
      Message({{"id", "e-2"}, {"outbox.lsn", "12345"}, {"outbox.index", "0"}}),
      ValueFormat::kPayload);
  EXPECT_TRUE(r.decode_status.ok()) << r.decode_status;
  EXPECT_EQ(r.lsn, 12345u);
  EXPECT_FALSE(r.seq.has_value());
}

TEST(InboxRecordTest, SeqBesideAnLsnIsAnErrorNotAGuess) {
  InboxRecord r = InboxRecordFromMessage(
      Message({{"id", "e-2"}, {"outbox.lsn", "12345"}, {"outbox.seq", "7"}}),
      ValueFormat::kPayload);
  EXPECT_TRUE(absl::IsInvalidArgument(r.decode_status)) << r.decode_status;
  EXPECT_THAT(r.decode_status.message(), HasSubstr("outbox.seq"));
}

TEST(InboxRecordTest, WithoutAnIdTheOffsetIsTheId) {
  InboxRecord r =
      InboxRecordFromMessage(Message({{"id", ""}}), ValueFormat::kPayload);
  EXPECT_EQ(r.event_id, "outbox.event.order/2/41");
  EXPECT_FALSE(r.lsn.has_value());
  EXPECT_FALSE(r.seq.has_value());
  EXPECT_TRUE(r.depends_on.empty());
}

TEST(InboxRecordTest, RepeatedReservedHeaderIsAnErrorNotAGuess) {
  InboxRecord r = InboxRecordFromMessage(
      Message({{"id", "a"}, {"x", "1"}, {"x", "2"}, {"id", "b"}}),
      ValueFormat::kPayload);
  EXPECT_TRUE(absl::IsInvalidArgument(r.decode_status)) << r.decode_status;
  EXPECT_THAT(r.decode_status.message(), HasSubstr("'id'"));
  // A repeated header of the user's own is fine.
  r = InboxRecordFromMessage(Message({{"x", "1"}, {"x", "2"}}),
                             ValueFormat::kPayload);
  EXPECT_TRUE(r.decode_status.ok());
  EXPECT_EQ(r.HeadersJson(), "{\"x\":\"1\"}");  // the first, as Header()
}

TEST(InboxRecordTest, ValueNotInTheEnvelopeFormatIsADecodeError) {
  InboxRecord r = InboxRecordFromMessage(Message({{"id", "a"}}),
                                         ValueFormat::kEnvelopeJson);
  EXPECT_TRUE(absl::IsInvalidArgument(r.decode_status)) << r.decode_status;
  EXPECT_THAT(r.decode_status.message(), HasSubstr("value is not"));
}

TEST(DeadLetterRecordTest, KeepsTheRecordAndAddsWhereAndWhy) {
  InboxRecord r =
      InboxRecordFromMessage(Message({{"id", "e-1"}}), ValueFormat::kPayload);
  DeadLetterOptions o;
  o.topic = "dlq";
  o.group_id = "shipping";
  KafkaRecord k = DeadLetterRecord(r, o, "handler failed", 5);
  EXPECT_EQ(k.topic, "dlq");
  EXPECT_EQ(k.key, "order-1");
  EXPECT_EQ(k.value, "{\"n\":1}");
  EXPECT_EQ(k.timestamp_ms, 1700000000000);
  EXPECT_THAT(
      k.headers,
      ElementsAre(Pair("id", "e-1"), Pair("inbox.error", "handler failed"),
                  Pair("inbox.attempts", "5"),
                  Pair("inbox.topic", "outbox.event.order"),
                  Pair("inbox.partition", "2"), Pair("inbox.offset", "41"),
                  Pair("inbox.group", "shipping")));
}

TEST(DeadLetterRecordTest, TombstoneStaysATombstone) {
  ConsumedMessage m = Message({});
  m.value.reset();
  InboxRecord r = InboxRecordFromMessage(std::move(m), ValueFormat::kPayload);
  KafkaRecord k = DeadLetterRecord(r, DeadLetterOptions{}, "e", 0);
  EXPECT_FALSE(k.value.has_value());
}

TEST(DeadLetterProducerPropertiesTest, KeepsConnectionAndSecurityOnly) {
  auto p = DeadLetterProducerProperties({{"security.protocol", "SSL"},
                                         {"ssl.ca.location", "/ca"},
                                         {"sasl.mechanism", "PLAIN"},
                                         {"session.timeout.ms", "3000"},
                                         {"bootstrap.servers", "b:9092"},
                                         {"fetch.wait.max.ms", "10"}});
  EXPECT_THAT(p, ElementsAre(Pair("security.protocol", "SSL"),
                             Pair("ssl.ca.location", "/ca"),
                             Pair("sasl.mechanism", "PLAIN"),
                             Pair("bootstrap.servers", "b:9092"),
                             Pair("client.id", "outbox-inbox-dlq")));
}

}  // namespace
}  // namespace outboxd
