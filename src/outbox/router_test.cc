#include "outbox/router.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace outboxd {
namespace {

using Headers = std::vector<std::pair<std::string, std::string>>;
using ::testing::ElementsAre;
using ::testing::Pair;

OutboxEvent SampleEvent() {
  OutboxEvent event;
  event.position = {.commit_lsn = Lsn(23456789), .index = 3};
  event.commit_time_unix_ms = 1700000000123;
  event.id = "5f0c2d4e-9a34-4c6b-8f51-0a1b2c3d4e5f";
  event.aggregate_type = "order";
  event.aggregate_id = "order-42";
  event.type = "OrderCreated";
  event.payload = R"({"total": 10})";
  event.headers = {{"traceparent", "00-abc-def-01"}, {"tenant", "acme"}};
  return event;
}

TEST(RouterTest, RoutesByAggregateTypeWithDefaultPrefix) {
  OutboxEvent event = SampleEvent();
  KafkaRecord record = Route(event, RouterOptions{});
  EXPECT_EQ(record.topic, "outbox.event.order");
  EXPECT_EQ(record.key, "order-42");
  ASSERT_TRUE(record.value.has_value());
  EXPECT_EQ(*record.value, R"({"total": 10})");
  EXPECT_EQ(record.timestamp_ms, 1700000000123);
}

TEST(RouterTest, CustomPrefix) {
  OutboxEvent event = SampleEvent();
  RouterOptions options;
  options.topic_prefix = "app.";
  EXPECT_EQ(Route(event, options).topic, "app.order");
  options.topic_prefix = "";
  EXPECT_EQ(Route(event, options).topic, "order");
}

TEST(RouterTest, FixedTopicOverridesRouting) {
  OutboxEvent event = SampleEvent();
  RouterOptions options;
  options.topic_prefix = "ignored.";
  options.fixed_topic = "all-events";
  EXPECT_EQ(Route(event, options).topic, "all-events");
}

TEST(RouterTest, GlobalOrderingFixesThePartition) {
  OutboxEvent event = SampleEvent();
  EXPECT_EQ(Route(event, RouterOptions{}).partition, -1);
  RouterOptions options;
  options.fixed_topic = "all-events";
  options.fixed_partition = 0;
  KafkaRecord record = Route(event, options);
  EXPECT_EQ(record.topic, "all-events");
  EXPECT_EQ(record.partition, 0);
  EXPECT_EQ(record.key, "order-42");  // the key still names the aggregate
}

TEST(RouterTest, DependsOnAndSourceHeaders) {
  OutboxEvent event = SampleEvent();
  event.headers.clear();
  event.depends_on = {"a1", "b2"};
  RouterOptions options;
  options.source = "7301/app/outbox_slot";
  KafkaRecord record = Route(event, options);
  ASSERT_GE(record.headers.size(), 2u);
  EXPECT_THAT(record.headers[record.headers.size() - 2],
              Pair("outbox.depends-on", "a1,b2"));
  EXPECT_THAT(record.headers.back(),
              Pair("outbox.source", "7301/app/outbox_slot"));
  // Neither header when there is nothing to say.
  event.depends_on.clear();
  EXPECT_EQ(Route(event, RouterOptions{}).headers.size(), 4u);
}

TEST(RouterTest, HeadersInContractOrder) {
  OutboxEvent event = SampleEvent();
  KafkaRecord record = Route(event, RouterOptions{});
  EXPECT_THAT(
      record.headers,
      ElementsAre(Pair("id", "5f0c2d4e-9a34-4c6b-8f51-0a1b2c3d4e5f"),
                  Pair("eventType", "OrderCreated"),
                  Pair("traceparent", "00-abc-def-01"), Pair("tenant", "acme"),
                  Pair("outbox.lsn", "23456789"), Pair("outbox.index", "3")));
}

TEST(RouterTest, ReservedNamesAmongTheEventsHeadersNeverReachTheRecord) {
  OutboxEvent event = SampleEvent();
  event.headers = {{"id", "forged"},          {"tenant", "acme"},
                   {"eventType", "Forged"},   {"outbox.lsn", "1"},
                   {"outbox.index", "9"},     {"outbox.source", "s"},
                   {"outbox.depends-on", "x"}};
  RouterOptions options;
  options.source = "src";
  KafkaRecord record = Route(event, options);
  EXPECT_THAT(
      record.headers,
      ElementsAre(Pair("id", "5f0c2d4e-9a34-4c6b-8f51-0a1b2c3d4e5f"),
                  Pair("eventType", "OrderCreated"), Pair("tenant", "acme"),
                  Pair("outbox.lsn", "23456789"), Pair("outbox.index", "3"),
                  Pair("outbox.source", "src")));
  EXPECT_TRUE(IsReservedHeader("outbox.seq"));
  EXPECT_FALSE(IsReservedHeader("Id"));
  EXPECT_FALSE(IsReservedHeader("outbox"));
}

TEST(RouterTest, AnEventFromATableNamesItLast) {
  OutboxEvent event = SampleEvent();
  event.headers.clear();
  event.table = "billing.outbox";
  RouterOptions options;
  options.source = "7301/app/outbox_slot";
  KafkaRecord record = Route(event, options);
  ASSERT_GE(record.headers.size(), 2u);
  EXPECT_THAT(record.headers[record.headers.size() - 2],
              Pair("outbox.source", "7301/app/outbox_slot"));
  EXPECT_THAT(record.headers.back(), Pair("outbox.table", "billing.outbox"));
  // A row's headers column cannot forge it.
  event.headers = {{"outbox.table", "public.other"}};
  record = Route(event, options);
  EXPECT_EQ(
      std::count_if(record.headers.begin(), record.headers.end(),
                    [](const auto& h) { return h.first == "outbox.table"; }),
      1);
  EXPECT_THAT(record.headers.back(), Pair("outbox.table", "billing.outbox"));
  // No table (a logical decoding message): no header.
  event.table.clear();
  for (const auto& h : Route(event, options).headers) {
    EXPECT_NE(h.first, "outbox.table");
  }
}

TEST(RouterTest, NoOwnHeaders) {
  OutboxEvent event = SampleEvent();
  event.headers.clear();
  event.position = {.commit_lsn = Lsn(0xFFFFFFFFFFFFFFFFull), .index = 0};
  KafkaRecord record = Route(event, RouterOptions{});
  EXPECT_EQ(record.headers, (Headers{{"id", event.id},
                                     {"eventType", "OrderCreated"},
                                     {"outbox.lsn", "18446744073709551615"},
                                     {"outbox.index", "0"}}));
}

TEST(RouterTest, PolledEventCarriesSeqInsteadOfLsnAndIndex) {
  OutboxEvent event = SampleEvent();
  event.position = {};
  event.table_seq = 9007199254740993;  // above 2^53: no float rounding
  KafkaRecord record = Route(event, RouterOptions{});
  EXPECT_THAT(
      record.headers,
      ElementsAre(Pair("id", "5f0c2d4e-9a34-4c6b-8f51-0a1b2c3d4e5f"),
                  Pair("eventType", "OrderCreated"),
                  Pair("traceparent", "00-abc-def-01"), Pair("tenant", "acme"),
                  Pair("outbox.seq", "9007199254740993")));
}

TEST(RouterTest, PolledEventSeqZeroIsStillASeq) {
  OutboxEvent event = SampleEvent();
  event.headers.clear();
  event.table_seq = 0;
  EXPECT_EQ(Route(event, RouterOptions{}).headers,
            (Headers{{"id", event.id},
                     {"eventType", "OrderCreated"},
                     {"outbox.seq", "0"}}));
}

TEST(RouterTest, NullPayloadIsTombstone) {
  OutboxEvent event = SampleEvent();
  event.payload.reset();
  EXPECT_FALSE(Route(event, RouterOptions{}).value.has_value());
}

TEST(RouterTest, EmptyPayloadIsNotTombstone) {
  OutboxEvent event = SampleEvent();
  event.payload = "";
  KafkaRecord record = Route(event, RouterOptions{});
  ASSERT_TRUE(record.value.has_value());
  EXPECT_EQ(*record.value, "");
}

TEST(RouterTest, BinaryPayloadAndKeyAreKeptByteForByte) {
  OutboxEvent event = SampleEvent();
  event.payload = std::string("\x00\xff\x01", 3);
  event.aggregate_id = std::string("k\x00y", 3);
  KafkaRecord record = Route(event, RouterOptions{});
  EXPECT_EQ(*record.value, std::string("\x00\xff\x01", 3));
  EXPECT_EQ(record.key, std::string("k\x00y", 3));
}

TEST(RouterTest, RecordBorrowsFromEvent) {
  OutboxEvent event = SampleEvent();
  KafkaRecord record = Route(event, RouterOptions{});
  EXPECT_EQ(record.key.data(), event.aggregate_id.data());
  EXPECT_EQ(record.value->data(), event.payload->data());
}

// --- topic names a real broker refuses ------------------------------------

TEST(TopicNameTest, LegalNamesPass) {
  EXPECT_TRUE(CheckTopicName("outbox.event.order").ok());
  EXPECT_TRUE(CheckTopicName("a").ok());
  EXPECT_TRUE(CheckTopicName("A-Z_a-z.0-9").ok());
  EXPECT_TRUE(CheckTopicName("...").ok());  // only "." and ".." are reserved
  EXPECT_TRUE(CheckTopicName(std::string(249, 'x')).ok());
}

TEST(TopicNameTest, EmptyIsIllegal) {
  absl::Status s = CheckTopicName("");
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("empty"));
}

TEST(TopicNameTest, DotAndDotDotAreIllegal) {
  EXPECT_TRUE(absl::IsInvalidArgument(CheckTopicName(".")));
  EXPECT_TRUE(absl::IsInvalidArgument(CheckTopicName("..")));
}

TEST(TopicNameTest, LongerThan249IsIllegal) {
  absl::Status s = CheckTopicName(std::string(250, 'x'));
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("250 characters"));
  // The reason stays short: the name is cut.
  EXPECT_LT(s.message().size(), 200u);
}

TEST(TopicNameTest, EveryCharacterOutsideTheLegalSetIsIllegal) {
  for (int c = 0; c < 256; ++c) {
    const bool legal = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                       (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                       c == '-';
    std::string name = absl::StrCat("t", std::string(1, static_cast<char>(c)));
    EXPECT_EQ(CheckTopicName(name).ok(), legal) << "character " << c;
  }
}

TEST(TopicNameTest, SpaceSlashAndNonAsciiAreIllegalWithAPrintableReason) {
  for (const std::string name :
       {"outbox.event.order created", "outbox.event.a/b",
        "outbox.event.\xc3\xa9v\xc3\xa9nement", "outbox.event.\n"}) {
    absl::Status s = CheckTopicName(name);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << name;
    EXPECT_THAT(std::string(s.message()),
                ::testing::HasSubstr("illegal Kafka topic name"));
    for (char c : s.message()) {
      EXPECT_TRUE(c >= 0x20 && c < 0x7f) << "unprintable byte in " << s;
    }
  }
}

TEST(TopicNameTest, RoutedTopicOfAnIllegalAggregateTypeIsRefused) {
  OutboxEvent event = SampleEvent();
  event.aggregate_type = "order line";
  EXPECT_FALSE(CheckTopicName(Route(event, RouterOptions{}).topic).ok());
  event.aggregate_type = std::string(249 - 13 + 1, 'a');  // prefix is 13
  EXPECT_FALSE(CheckTopicName(Route(event, RouterOptions{}).topic).ok());
  event.aggregate_type = std::string(249 - 13, 'a');
  EXPECT_TRUE(CheckTopicName(Route(event, RouterOptions{}).topic).ok());
}

TEST(EventAsJsonTest, KeepsEverythingNeededToReplay) {
  OutboxEvent event = SampleEvent();
  EXPECT_EQ(EventAsJson(event),
            R"({"id":"5f0c2d4e-9a34-4c6b-8f51-0a1b2c3d4e5f",)"
            R"("aggregatetype":"order","aggregateid":"order-42",)"
            R"("type":"OrderCreated","payload":"{\"total\": 10}",)"
            R"("headers":{"traceparent":"00-abc-def-01","tenant":"acme"}})");
  event.payload.reset();
  EXPECT_NE(EventAsJson(event).find(R"("payload":null)"), std::string::npos);
}

}  // namespace
}  // namespace outboxd
