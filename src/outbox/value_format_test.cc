#include "outbox/value_format.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "outbox/router.h"
#include "outbox_event.pb.h"

namespace outboxd {
namespace {

using ::testing::HasSubstr;

OutboxEvent SampleEvent() {
  OutboxEvent e;
  e.position.commit_lsn = Lsn(0x16B3748ull);
  e.position.index = 3;
  e.commit_time_unix_ms = 1700000000123;
  e.id = "5d0c0b9e-3c1a-4a53-9f3e-1f1f6a0d2b11";
  e.aggregate_type = "order";
  e.aggregate_id = "42";
  e.type = "OrderCreated";
  e.payload = R"({"orderId": 42, "total": 99.5})";
  e.headers = {{"traceparent", "00-ab-cd-01"}, {"tenant", "acme"}};
  return e;
}

void ExpectSameEvent(const OutboxEvent& a, const OutboxEvent& b) {
  EXPECT_EQ(a.id, b.id);
  EXPECT_EQ(a.aggregate_type, b.aggregate_type);
  EXPECT_EQ(a.aggregate_id, b.aggregate_id);
  EXPECT_EQ(a.type, b.type);
  EXPECT_EQ(a.payload, b.payload);
  EXPECT_EQ(a.headers, b.headers);
  EXPECT_EQ(a.position, b.position);
  EXPECT_EQ(a.table_seq, b.table_seq);
  EXPECT_EQ(a.commit_time_unix_ms, b.commit_time_unix_ms);
}

// An event of --source=poll|notify: the row's seq, no commit LSN.
OutboxEvent PolledEvent() {
  OutboxEvent e = SampleEvent();
  e.position = EventPosition{};
  e.table_seq = 9007199254740993;  // beyond 2^53
  return e;
}

// Encodes like the pipeline (value + routed headers) and decodes.
absl::StatusOr<OutboxEvent> RoundTrip(const OutboxEvent& e, ValueFormat f) {
  KafkaRecord record = Route(e, RouterOptions{});
  std::optional<std::string> value = EncodeValue(e, f);
  ConsumedRecordView view;
  view.topic = record.topic;
  view.key = record.key;
  if (value.has_value()) view.value = *value;
  view.headers = &record.headers;
  view.timestamp_ms = record.timestamp_ms;
  return DecodeRecord(f, view);
}

class ValueFormatRoundTrip : public ::testing::TestWithParam<ValueFormat> {};

TEST_P(ValueFormatRoundTrip, JsonPayload) {
  OutboxEvent e = SampleEvent();
  auto back = RoundTrip(e, GetParam());
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameEvent(e, *back);
}

TEST_P(ValueFormatRoundTrip, NonAsciiEverywhere) {
  OutboxEvent e = SampleEvent();
  e.aggregate_type = "commande";
  e.aggregate_id = "Zoë-東京-🚀";
  e.type = "Créée";
  e.payload = R"({"name": "Ünïcödé 東京 🚀", "quote": "\"\\\n"})";
  e.headers = {{"note", "naïve ✓"}, {"empty", ""}};
  auto back = RoundTrip(e, GetParam());
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameEvent(e, *back);
}

TEST_P(ValueFormatRoundTrip, BinaryPayload) {
  OutboxEvent e = SampleEvent();
  std::string bytes;
  for (int i = 0; i < 256; ++i) bytes.push_back(static_cast<char>(i));
  bytes += std::string("\xff\xfe\x00\x80", 4);
  e.payload = bytes;
  auto back = RoundTrip(e, GetParam());
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameEvent(e, *back);
}

TEST_P(ValueFormatRoundTrip, EmptyAndNullPayload) {
  OutboxEvent e = SampleEvent();
  e.payload = "";
  auto back = RoundTrip(e, GetParam());
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameEvent(e, *back);
  e.payload.reset();
  back = RoundTrip(e, GetParam());
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameEvent(e, *back);
}

TEST_P(ValueFormatRoundTrip, LargeLsn) {
  OutboxEvent e = SampleEvent();
  e.position.commit_lsn = Lsn(0xFFFFFFFF00000001ull);  // beyond 2^53
  e.position.index = 4000000000u;
  auto back = RoundTrip(e, GetParam());
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameEvent(e, *back);
}

// A polled event comes back as one: its seq, and no LSN made up for it.
TEST_P(ValueFormatRoundTrip, PolledEventKeepsItsSeq) {
  OutboxEvent e = PolledEvent();
  auto back = RoundTrip(e, GetParam());
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameEvent(e, *back);
  EXPECT_EQ(back->table_seq, 9007199254740993);
  EXPECT_FALSE(back->position.commit_lsn.valid());
}

INSTANTIATE_TEST_SUITE_P(AllFormats, ValueFormatRoundTrip,
                         ::testing::Values(ValueFormat::kPayload,
                                           ValueFormat::kEnvelopeJson,
                                           ValueFormat::kProtobuf),
                         [](const auto& info) {
                           std::string n(ValueFormatName(info.param));
                           n.erase(std::remove(n.begin(), n.end(), '-'),
                                   n.end());
                           return n;
                         });

TEST(ValueFormatTest, NamesParse) {
  for (auto f : {ValueFormat::kPayload, ValueFormat::kEnvelopeJson,
                 ValueFormat::kProtobuf}) {
    auto parsed = ParseValueFormat(ValueFormatName(f));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, f);
  }
  EXPECT_FALSE(ParseValueFormat("avro").ok());
}

TEST(ValueFormatTest, PayloadFormatIsThePayloadAndNullIsATombstone) {
  OutboxEvent e = SampleEvent();
  EXPECT_EQ(EncodeValue(e, ValueFormat::kPayload), e.payload);
  e.payload.reset();
  EXPECT_FALSE(EncodeValue(e, ValueFormat::kPayload).has_value());
  // The envelopes always carry the event.
  EXPECT_TRUE(EncodeValue(e, ValueFormat::kEnvelopeJson).has_value());
  EXPECT_TRUE(EncodeValue(e, ValueFormat::kProtobuf).has_value());
}

// Records of an older outboxd could carry a forged reserved header next to
// the real one: ambiguous, so an error rather than a guess.
TEST(ValueFormatTest, PayloadFormatRejectsARepeatedReservedHeader) {
  std::vector<std::pair<std::string, std::string>> headers = {
      {"id", "real"},
      {"eventType", "T"},
      {"outbox.lsn", "5"},
      {"outbox.index", "0"},
      {"outbox.lsn", "7"}};
  ConsumedRecordView view;
  view.topic = "outbox.event.order";
  view.key = "k";
  view.headers = &headers;
  absl::StatusOr<OutboxEvent> e = DecodeRecord(ValueFormat::kPayload, view);
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(e.status().message(), HasSubstr("outbox.lsn"));
  headers.pop_back();
  headers.emplace_back("id", "forged");
  EXPECT_FALSE(DecodeRecord(ValueFormat::kPayload, view).ok());
  headers.pop_back();
  ASSERT_TRUE(DecodeRecord(ValueFormat::kPayload, view).ok());
}

TEST(ValueFormatTest, EnvelopeJsonShape) {
  OutboxEvent e = SampleEvent();
  auto j = nlohmann::json::parse(*EncodeValue(e, ValueFormat::kEnvelopeJson));
  EXPECT_EQ(j["id"], e.id);
  EXPECT_EQ(j["aggregatetype"], "order");
  EXPECT_EQ(j["aggregateid"], "42");
  EXPECT_EQ(j["type"], "OrderCreated");
  EXPECT_EQ(j["payload"], *e.payload);
  EXPECT_FALSE(j.contains("payload_encoding"));
  EXPECT_EQ(j["headers"]["traceparent"], "00-ab-cd-01");
  EXPECT_EQ(j["position"]["lsn"], "23803720");
  EXPECT_EQ(j["position"]["index"], 3);
  EXPECT_EQ(j["commit_time"], "2023-11-14T22:13:20.123Z");

  e.payload = std::string("\xff\x00", 2);
  j = nlohmann::json::parse(*EncodeValue(e, ValueFormat::kEnvelopeJson));
  EXPECT_EQ(j["payload"], "/wA=");
  EXPECT_EQ(j["payload_encoding"], "base64");
}

// The position's bytes: a streamed event's LSN (a decimal string) and
// index; a polled event's seq alone, as a decimal string too.
TEST(ValueFormatTest, EnvelopeJsonPositionOfEachSource) {
  const std::string cdc =
      *EncodeValue(SampleEvent(), ValueFormat::kEnvelopeJson);
  EXPECT_THAT(cdc, HasSubstr(R"(,"position":{"lsn":"23803720","index":3},)"));
  OutboxEvent polled = PolledEvent();
  polled.table_seq = 42;
  const std::string poll = *EncodeValue(polled, ValueFormat::kEnvelopeJson);
  EXPECT_THAT(poll, HasSubstr(R"(,"position":{"seq":"42"},)"));
  EXPECT_THAT(poll, ::testing::Not(HasSubstr("lsn")));
}

TEST(ValueFormatTest, ProtobufPositionOfAPolledEventIsItsSeq) {
  OutboxEvent polled = PolledEvent();
  polled.table_seq = 42;
  std::string value = *EncodeValue(polled, ValueFormat::kProtobuf);
  outboxd::v1::OutboxEvent m;
  ASSERT_TRUE(m.ParseFromString(value));
  EXPECT_TRUE(m.position().has_seq());
  EXPECT_EQ(m.position().seq(), 42);
  EXPECT_EQ(m.position().lsn(), 0u);
  EXPECT_EQ(m.position().index(), 0u);
  ConsumedRecordView v;
  v.value = value;
  auto back = DecodeRecord(ValueFormat::kProtobuf, v);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->table_seq, 42);
  EXPECT_EQ(back->position, EventPosition{});
  // A streamed event has no seq.
  value = *EncodeValue(SampleEvent(), ValueFormat::kProtobuf);
  ASSERT_TRUE(m.ParseFromString(value));
  EXPECT_FALSE(m.position().has_seq());
  EXPECT_EQ(m.position().lsn(), 0x16B3748u);
  v.value = value;
  back = DecodeRecord(ValueFormat::kProtobuf, v);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_FALSE(back->table_seq.has_value());
}

// Both shapes of a position at once: which one is meant is ambiguous.
TEST(ValueFormatTest, SeqBesideAnLsnIsAnError) {
  const std::string envelope =
      R"({"id":"a","aggregatetype":"t","aggregateid":"k","type":"x",)"
      R"("payload":null,"headers":{},"position":{"seq":"7","lsn":"1",)"
      R"("index":0},"commit_time":"2023-11-14T22:13:20Z"})";
  ConsumedRecordView v;
  v.value = envelope;
  EXPECT_TRUE(absl::IsInvalidArgument(
      DecodeRecord(ValueFormat::kEnvelopeJson, v).status()));
  std::vector<std::pair<std::string, std::string>> headers = {
      {"id", "a"}, {"eventType", "t"}, {"outbox.seq", "7"}};
  v.value.reset();
  v.headers = &headers;
  auto polled = DecodeRecord(ValueFormat::kPayload, v);
  ASSERT_TRUE(polled.ok()) << polled.status();
  EXPECT_EQ(polled->table_seq, 7);
  headers.emplace_back("outbox.lsn", "1");
  EXPECT_TRUE(
      absl::IsInvalidArgument(DecodeRecord(ValueFormat::kPayload, v).status()));
}

TEST(ValueFormatTest, CorruptValuesAreErrors) {
  std::vector<std::pair<std::string, std::string>> headers;
  ConsumedRecordView v;
  v.headers = &headers;
  std::string garbage = "\x0a\xff\xff\xff";
  v.value = garbage;
  EXPECT_FALSE(DecodeRecord(ValueFormat::kProtobuf, v).ok());
  for (std::string bad :
       {std::string("not json"), std::string("[1]"), std::string(R"({"id":1})"),
        std::string(R"({"id":"a","aggregatetype":"t","aggregateid":"k",)"
                    R"("type":"x","payload":null,"position":{"lsn":"x",)"
                    R"("index":0},"commit_time":"2023-11-14T22:13:20Z"})"),
        std::string(R"({"id":"a","aggregatetype":"t","aggregateid":"k",)"
                    R"("type":"x","payload":null,"position":{"seq":7},)"
                    R"("commit_time":"2023-11-14T22:13:20Z"})"),
        std::string(R"({"id":"a","aggregatetype":"t","aggregateid":"k",)"
                    R"("type":"x","payload":null,"position":{"seq":"x"},)"
                    R"("commit_time":"2023-11-14T22:13:20Z"})"),
        std::string(R"({"id":"a","aggregatetype":"t","aggregateid":"k",)"
                    R"("type":"x","payload":"!!","payload_encoding":"base64",)"
                    R"("position":{"lsn":"1","index":0},)"
                    R"("commit_time":"2023-11-14T22:13:20Z"})")}) {
    v.value = bad;
    auto d = DecodeRecord(ValueFormat::kEnvelopeJson, v);
    EXPECT_TRUE(absl::IsInvalidArgument(d.status())) << bad;
  }
  v.value.reset();
  EXPECT_FALSE(DecodeRecord(ValueFormat::kEnvelopeJson, v).ok());
  // Payload format: id and eventType headers are required.
  EXPECT_FALSE(DecodeRecord(ValueFormat::kPayload, v).ok());
  headers = {{"id", "a"}, {"eventType", "t"}, {"outbox.lsn", "zz"}};
  EXPECT_FALSE(DecodeRecord(ValueFormat::kPayload, v).ok());
  headers = {{"id", "a"}, {"eventType", "t"}, {"outbox.seq", "zz"}};
  EXPECT_FALSE(DecodeRecord(ValueFormat::kPayload, v).ok());
}

}  // namespace
}  // namespace outboxd
