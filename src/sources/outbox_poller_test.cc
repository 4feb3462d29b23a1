#include "sources/outbox_poller.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace outboxd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

PolledRowText SampleRow() {
  PolledRowText t;
  t.seq = "42";
  t.id = "5f0c2d4e-9a34-4c6b-8f51-0a1b2c3d4e5f";
  t.aggregate_type = "order";
  t.aggregate_id = "order-7";
  t.type = "OrderCreated";
  t.payload = R"({"total": 10})";
  t.headers = R"({"traceparent": "00-ab-cd-01", "tenant": "acme"})";
  t.created_ms = "1700000000123";
  return t;
}

TEST(RowToEventTest, ValidRowBecomesEventWithSeq) {
  PolledRow row = RowToEvent(SampleRow(), /*payload_is_bytea=*/false);
  ASSERT_TRUE(row.event.has_value()) << row.invalid_reason;
  EXPECT_EQ(row.seq, 42);
  const OutboxEvent& e = *row.event;
  EXPECT_EQ(e.table_seq, 42);
  EXPECT_EQ(e.id, "5f0c2d4e-9a34-4c6b-8f51-0a1b2c3d4e5f");
  EXPECT_EQ(e.aggregate_type, "order");
  EXPECT_EQ(e.aggregate_id, "order-7");
  EXPECT_EQ(e.type, "OrderCreated");
  EXPECT_EQ(e.payload, R"({"total": 10})");
  EXPECT_EQ(e.commit_time_unix_ms, 1700000000123);
  EXPECT_THAT(e.headers, ElementsAre(Pair("traceparent", "00-ab-cd-01"),
                                     Pair("tenant", "acme")));
}

TEST(RowToEventTest, NullPayloadIsTombstoneAndNullHeadersAreNone) {
  PolledRowText t = SampleRow();
  t.payload.reset();
  t.headers.reset();
  t.created_ms.reset();
  PolledRow row = RowToEvent(t, false);
  ASSERT_TRUE(row.event.has_value());
  EXPECT_FALSE(row.event->payload.has_value());
  EXPECT_TRUE(row.event->headers.empty());
  EXPECT_EQ(row.event->commit_time_unix_ms, 0);  // librdkafka: now
}

TEST(RowToEventTest, ByteaPayloadIsDecodedToRawBytes) {
  PolledRowText t = SampleRow();
  t.payload = "\\x00ff41";
  PolledRow row = RowToEvent(t, /*payload_is_bytea=*/true);
  ASSERT_TRUE(row.event.has_value());
  EXPECT_EQ(*row.event->payload, std::string("\x00\xff\x41", 3));
}

TEST(RowToEventTest, NullRequiredColumnIsInvalid) {
  PolledRowText t = SampleRow();
  t.type.reset();
  PolledRow row = RowToEvent(t, false);
  EXPECT_FALSE(row.event.has_value());
  EXPECT_EQ(row.seq, 42);
  EXPECT_THAT(row.invalid_reason, HasSubstr("type is NULL"));
  EXPECT_THAT(row.content, HasSubstr(R"("type":null)"));
  EXPECT_EQ(row.aggregate_id, "order-7");
}

TEST(RowToEventTest, HeadersThatAreNotAnObjectOfStringsAreInvalid) {
  for (const char* headers : {"[1,2]", R"({"a": 1})", "{not json"}) {
    PolledRowText t = SampleRow();
    t.headers = headers;
    PolledRow row = RowToEvent(t, false);
    EXPECT_FALSE(row.event.has_value()) << headers;
    EXPECT_FALSE(row.invalid_reason.empty()) << headers;
  }
}

TEST(RowToEventTest, ReservedHeaderNamesAreDropped) {
  PolledRowText t = SampleRow();
  t.headers = R"({"outbox.seq": "1", "id": "forged", "tenant": "acme",)"
              R"( "eventType": "Forged", "outbox.lsn": "5"})";
  PolledRow row = RowToEvent(t, /*payload_is_bytea=*/false);
  ASSERT_TRUE(row.event.has_value()) << row.invalid_reason;
  EXPECT_THAT(row.event->headers, ElementsAre(Pair("tenant", "acme")));
  EXPECT_THAT(row.event->dropped_headers,
              ElementsAre("outbox.seq", "id", "eventType", "outbox.lsn"));
}

TEST(RowToEventTest, BadByteaTextIsInvalid) {
  PolledRowText t = SampleRow();
  t.payload = "\\x0";
  EXPECT_FALSE(RowToEvent(t, true).event.has_value());
}

}  // namespace
}  // namespace outboxd
