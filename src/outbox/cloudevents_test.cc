#include "outbox/cloudevents.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "outbox/router.h"

namespace outboxd {
namespace {

using Headers = std::vector<std::pair<std::string, std::string>>;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

constexpr char kSource[] = "/outboxd/7301234567890123456/shop/outbox_slot";

OutboxEvent SampleEvent() {
  OutboxEvent event;
  event.position = {.commit_lsn = Lsn(23456789), .index = 3};
  event.commit_time_unix_ms = 1700000000123;  // 2023-11-14T22:13:20.123Z
  event.id = "5f0c2d4e-9a34-4c6b-8f51-0a1b2c3d4e5f";
  event.aggregate_type = "order";
  event.aggregate_id = "order-42";
  event.type = "OrderCreated";
  event.payload = R"({"total": 10})";
  event.content_type = "application/json";
  event.headers = {{"traceparent", "00-abc-def-01"}};
  return event;
}

CloudEventsOptions Options(CloudEventsMode mode) {
  return CloudEventsOptions{.mode = mode, .source = kSource};
}

nlohmann::json Document(const OutboxEvent& event) {
  return nlohmann::json::parse(*event.payload);
}

TEST(CloudEventsTest, ParsesModes) {
  EXPECT_EQ(*ParseCloudEventsMode("off"), CloudEventsMode::kOff);
  EXPECT_EQ(*ParseCloudEventsMode("binary"), CloudEventsMode::kBinary);
  EXPECT_EQ(*ParseCloudEventsMode("structured"), CloudEventsMode::kStructured);
  EXPECT_FALSE(ParseCloudEventsMode("Binary").ok());
  EXPECT_EQ(CloudEventsModeName(CloudEventsMode::kStructured), "structured");
}

TEST(CloudEventsTest, FormatsRfc3339InUtcWithMilliseconds) {
  EXPECT_EQ(FormatRfc3339Millis(1700000000123), "2023-11-14T22:13:20.123Z");
  EXPECT_EQ(FormatRfc3339Millis(0), "1970-01-01T00:00:00.000Z");
}

TEST(CloudEventsTest, DefaultSourcePercentEncodesTheIdentity) {
  EXPECT_EQ(DefaultCloudEventsSource("7301234567890123456/shop/outbox_slot"),
            "/outboxd/7301234567890123456/shop/outbox_slot");
  // A database name with a space, a '%' and UTF-8: RFC 3986 path segments.
  EXPECT_EQ(DefaultCloudEventsSource("73/my db%/caf\xc3\xa9"),
            "/outboxd/73/my%20db%25/caf%C3%A9");
  EXPECT_TRUE(CheckCloudEventsSource(DefaultCloudEventsSource("a b/c")).ok());
}

TEST(CloudEventsTest, ChecksTheSourceFlag) {
  EXPECT_TRUE(CheckCloudEventsSource("https://example.com/orders").ok());
  EXPECT_TRUE(CheckCloudEventsSource("urn:shop:orders").ok());
  EXPECT_TRUE(CheckCloudEventsSource("/my%20source").ok());
  EXPECT_FALSE(CheckCloudEventsSource("").ok());
  EXPECT_THAT(CheckCloudEventsSource("my source").message(),
              HasSubstr("offset 2 must be percent-encoded"));
  EXPECT_THAT(CheckCloudEventsSource("/bad%2").message(),
              HasSubstr("two hex digits"));
}

TEST(CloudEventsTest, BinaryModeAddsAttributeHeadersAndKeepsThePayload) {
  OutboxEvent event = SampleEvent();
  ASSERT_TRUE(ToCloudEvent(Options(CloudEventsMode::kBinary), &event).ok());
  EXPECT_EQ(*event.payload, R"({"total": 10})");
  EXPECT_THAT(
      event.headers,
      ElementsAre(Pair("traceparent", "00-abc-def-01"),
                  Pair("ce_specversion", "1.0"),
                  Pair("ce_id", "5f0c2d4e-9a34-4c6b-8f51-0a1b2c3d4e5f"),
                  Pair("ce_source", kSource), Pair("ce_type", "OrderCreated"),
                  Pair("ce_time", "2023-11-14T22:13:20.123Z"),
                  Pair("ce_subject", "order-42"),
                  Pair("content-type", "application/json")));
  // The router keeps its own headers around them.
  RouterOptions router;
  router.source = "s";
  KafkaRecord record = Route(event, router);
  EXPECT_THAT(record.headers.front(), Pair("id", event.id));
  EXPECT_THAT(record.headers.back(), Pair("outbox.source", "s"));
}

TEST(CloudEventsTest, BinaryTombstoneStaysATombstoneWithoutContentType) {
  OutboxEvent event = SampleEvent();
  event.payload.reset();
  ASSERT_TRUE(ToCloudEvent(Options(CloudEventsMode::kBinary), &event).ok());
  EXPECT_FALSE(event.payload.has_value());
  EXPECT_THAT(event.headers.back(), Pair("ce_subject", "order-42"));
}

TEST(CloudEventsTest, StructuredTombstoneIsABinaryModeEventWithoutData) {
  OutboxEvent event = SampleEvent();
  event.payload.reset();
  ASSERT_TRUE(ToCloudEvent(Options(CloudEventsMode::kStructured), &event).ok());
  EXPECT_FALSE(event.payload.has_value());  // compaction still drops the key
  EXPECT_THAT(
      event.headers,
      ElementsAre(Pair("traceparent", "00-abc-def-01"),
                  Pair("ce_specversion", "1.0"), Pair("ce_id", event.id),
                  Pair("ce_source", kSource), Pair("ce_type", "OrderCreated"),
                  Pair("ce_time", "2023-11-14T22:13:20.123Z"),
                  Pair("ce_subject", "order-42")));
}

TEST(CloudEventsTest, StructuredModeJsonPayloadIsDataVerbatim) {
  OutboxEvent event = SampleEvent();
  // A number no double holds: the document carries the payload's text.
  event.payload = R"( {"total": 10, "big": 123456789012345678901234567890} )";
  ASSERT_TRUE(ToCloudEvent(Options(CloudEventsMode::kStructured), &event).ok());
  EXPECT_EQ(
      *event.payload,
      R"({"specversion":"1.0","id":"5f0c2d4e-9a34-4c6b-8f51-0a1b2c3d4e5f",)"
      R"("source":"/outboxd/7301234567890123456/shop/outbox_slot",)"
      R"("type":"OrderCreated","time":"2023-11-14T22:13:20.123Z",)"
      R"("subject":"order-42","datacontenttype":"application/json",)"
      R"("data":{"total": 10, "big": 123456789012345678901234567890}})");
  EXPECT_TRUE(nlohmann::json::accept(*event.payload));
  EXPECT_THAT(event.headers, ElementsAre(Pair("traceparent", "00-abc-def-01"),
                                         Pair("content-type",
                                              "application/cloudevents+json; "
                                              "charset=UTF-8")));
}

TEST(CloudEventsTest, StructuredModeBinaryPayloadIsDataBase64) {
  OutboxEvent event = SampleEvent();
  event.payload = std::string("\x00\xff\x10 avro", 8);
  event.content_type = "application/octet-stream";
  ASSERT_TRUE(ToCloudEvent(Options(CloudEventsMode::kStructured), &event).ok());
  nlohmann::json doc = Document(event);
  EXPECT_FALSE(doc.contains("data"));
  EXPECT_EQ(doc["data_base64"],
            absl::Base64Escape(std::string("\x00\xff\x10 avro", 8)));
  EXPECT_EQ(doc["datacontenttype"], "application/octet-stream");
}

TEST(CloudEventsTest, StructuredModeTextPayloadIsAJsonString) {
  OutboxEvent event = SampleEvent();
  event.payload = "plain \"text\"";
  event.content_type = "text/plain; charset=utf-8";
  ASSERT_TRUE(ToCloudEvent(Options(CloudEventsMode::kStructured), &event).ok());
  EXPECT_EQ(Document(event)["data"], "plain \"text\"");
}

TEST(CloudEventsTest, StructuredModeJsonTypedButInvalidPayloadIsBase64) {
  // The bytes are kept exactly; a JSON string would change their meaning.
  OutboxEvent event = SampleEvent();
  event.payload = "{not json";
  event.content_type = "application/vnd.shop+json";
  ASSERT_TRUE(ToCloudEvent(Options(CloudEventsMode::kStructured), &event).ok());
  EXPECT_EQ(Document(event)["data_base64"], absl::Base64Escape("{not json"));
}

TEST(CloudEventsTest, StructuredModeOmitsEmptySubjectAndUnknownTime) {
  OutboxEvent event = SampleEvent();
  event.aggregate_id = "";
  event.commit_time_unix_ms = 0;  // a polled row without created_at
  ASSERT_TRUE(ToCloudEvent(Options(CloudEventsMode::kStructured), &event).ok());
  nlohmann::json doc = Document(event);
  EXPECT_FALSE(doc.contains("subject"));
  EXPECT_FALSE(doc.contains("time"));
  event = SampleEvent();
  event.commit_time_unix_ms = 0;
  ASSERT_TRUE(ToCloudEvent(Options(CloudEventsMode::kBinary), &event).ok());
  for (const auto& [name, value] : event.headers) EXPECT_NE(name, "ce_time");
}

// No content_type column value: the payload column type's default.
TEST(CloudEventsTest, EmptyContentTypeIsThePayloadTypesDefault) {
  OutboxEvent event = SampleEvent();
  event.content_type = "";
  event.default_content_type = "application/octet-stream";
  EXPECT_EQ(ContentTypeOf(event), "application/octet-stream");
  ASSERT_TRUE(ToCloudEvent(Options(CloudEventsMode::kBinary), &event).ok());
  EXPECT_THAT(event.headers.back(),
              Pair("content-type", "application/octet-stream"));
  event = SampleEvent();
  event.content_type = "";
  ASSERT_TRUE(ToCloudEvent(Options(CloudEventsMode::kStructured), &event).ok());
  EXPECT_EQ(Document(event)["datacontenttype"], "application/json");
  EXPECT_EQ(Document(event)["data"]["total"], 10);
}

TEST(CloudEventsTest, HeadersColumnCannotForgeCloudEventsHeaders) {
  OutboxEvent event = SampleEvent();
  event.headers = {{"ce_id", "forged"},
                   {"Content-Type", "text/html"},
                   {"ce_partitionkey", "p1"}};
  ASSERT_TRUE(ToCloudEvent(Options(CloudEventsMode::kBinary), &event).ok());
  EXPECT_THAT(event.dropped_headers, ElementsAre("ce_id", "Content-Type"));
  EXPECT_THAT(event.headers.front(), Pair("ce_partitionkey", "p1"));
  int ids = 0;
  for (const auto& [name, value] : event.headers) ids += name == "ce_id";
  EXPECT_EQ(ids, 1);
}

TEST(CloudEventsTest, EventThatCannotBeACloudEventIsRefusedUntouched) {
  OutboxEvent event = SampleEvent();
  event.type = "";
  EXPECT_THAT(ToCloudEvent(Options(CloudEventsMode::kBinary), &event).message(),
              HasSubstr("event type is empty"));
  event = SampleEvent();
  event.aggregate_id = "bad\xff";
  EXPECT_THAT(
      ToCloudEvent(Options(CloudEventsMode::kStructured), &event).message(),
      HasSubstr("aggregate id is not UTF-8"));
  EXPECT_EQ(*event.payload, R"({"total": 10})");
  event = SampleEvent();
  event.content_type = "json";
  EXPECT_THAT(ToCloudEvent(Options(CloudEventsMode::kBinary), &event).message(),
              HasSubstr("not a media type"));
  EXPECT_EQ(event.headers.size(), 1u);
}

// --- the way back
// --------------------------------------------------------------

TEST(CloudEventsTest, ModeOfARecord) {
  EXPECT_EQ(CloudEventsModeOf({{"id", "x"}}), CloudEventsMode::kOff);
  EXPECT_EQ(CloudEventsModeOf({{"ce_specversion", "1.0"}}),
            CloudEventsMode::kBinary);
  EXPECT_EQ(
      CloudEventsModeOf({{"Content-Type", "Application/CloudEvents+JSON"}}),
      CloudEventsMode::kStructured);
  EXPECT_EQ(CloudEventsModeOf({{"content-type", "application/json"},
                               {"ce_specversion", "1.0"}}),
            CloudEventsMode::kBinary);
}

TEST(CloudEventsTest, BinaryRoundTrip) {
  OutboxEvent event = SampleEvent();
  event.headers = {{"ce_partitionkey", "p1"}};
  ASSERT_TRUE(ToCloudEvent(Options(CloudEventsMode::kBinary), &event).ok());
  absl::StatusOr<CloudEvent> ce =
      DecodeCloudEvent(event.headers, event.payload);
  ASSERT_TRUE(ce.ok()) << ce.status();
  EXPECT_EQ(ce->mode, CloudEventsMode::kBinary);
  EXPECT_EQ(ce->specversion, "1.0");
  EXPECT_EQ(ce->id, event.id);
  EXPECT_EQ(ce->source, kSource);
  EXPECT_EQ(ce->type, "OrderCreated");
  EXPECT_EQ(ce->time, "2023-11-14T22:13:20.123Z");
  EXPECT_EQ(ce->subject, "order-42");
  EXPECT_EQ(ce->datacontenttype, "application/json");
  EXPECT_THAT(ce->extensions, ElementsAre(Pair("partitionkey", "p1")));
  EXPECT_EQ(ce->data, R"({"total": 10})");
}

TEST(CloudEventsTest, StructuredRoundTripsKeepThePayloadBytes) {
  for (const auto& [payload, content_type] :
       std::vector<std::pair<std::string, std::string>>{
           {R"({"a": [1, {"b": "}\""}], "n": 1.10})", "application/json"},
           {R"("just a string")", "application/json"},
           {"12", "application/json"},
           {std::string("\x00\x01\xfe", 3), "application/octet-stream"},
           {"caf\xc3\xa9", "text/plain"},
           {"", "application/json"}}) {
    OutboxEvent event = SampleEvent();
    event.payload = payload;
    event.content_type = content_type;
    ASSERT_TRUE(
        ToCloudEvent(Options(CloudEventsMode::kStructured), &event).ok());
    absl::StatusOr<CloudEvent> ce =
        DecodeCloudEvent(event.headers, event.payload);
    ASSERT_TRUE(ce.ok()) << ce.status() << " for " << *event.payload;
    EXPECT_EQ(ce->mode, CloudEventsMode::kStructured);
    EXPECT_EQ(ce->id, event.id);
    EXPECT_EQ(ce->datacontenttype, content_type);
    EXPECT_EQ(ce->data, payload) << *event.payload;
  }
}

TEST(CloudEventsTest, StructuredTombstoneDecodesAsBinaryWithoutData) {
  OutboxEvent event = SampleEvent();
  event.payload.reset();
  ASSERT_TRUE(ToCloudEvent(Options(CloudEventsMode::kStructured), &event).ok());
  absl::StatusOr<CloudEvent> ce = DecodeCloudEvent(event.headers, std::nullopt);
  ASSERT_TRUE(ce.ok()) << ce.status();
  EXPECT_EQ(ce->mode, CloudEventsMode::kBinary);
  EXPECT_FALSE(ce->data.has_value());
}

TEST(CloudEventsTest, DecodeRejectsWhatIsNotAValidCloudEvent) {
  const Headers structured = {{"content-type", "application/cloudevents+json"}};
  auto decode = [&](const Headers& h, std::optional<std::string> v) {
    return std::string(DecodeCloudEvent(h, v).status().message());
  };
  EXPECT_THAT(decode({{"ce_specversion", "0.3"},
                      {"ce_id", "1"},
                      {"ce_source", "/s"},
                      {"ce_type", "t"}},
                     "x"),
              HasSubstr("specversion"));
  EXPECT_THAT(
      decode({{"ce_specversion", "1.0"}, {"ce_source", "/s"}, {"ce_type", "t"}},
             "x"),
      HasSubstr("'id' is missing"));
  EXPECT_THAT(decode({{"ce_specversion", "1.0"},
                      {"ce_id", "1"},
                      {"ce_id", "2"},
                      {"ce_source", "/s"},
                      {"ce_type", "t"}},
                     "x"),
              HasSubstr("appears twice"));
  EXPECT_THAT(decode(structured, "[1]"), HasSubstr("not a JSON object"));
  EXPECT_THAT(decode(structured, std::nullopt), HasSubstr("no value"));
  const std::string attrs =
      R"("specversion":"1.0","id":"1","source":"/s","type":"t")";
  EXPECT_THAT(
      decode(structured, "{" + attrs + R"(,"data":1,"data_base64":"AA=="})"),
      HasSubstr("both data and data_base64"));
  EXPECT_THAT(decode(structured, "{" + attrs + R"(,"data_base64":"%%"})"),
              HasSubstr("not a base64"));
  EXPECT_THAT(decode({{"content-type", "application/cloudevents+avro"}}, "x"),
              HasSubstr("not supported"));
  EXPECT_TRUE(DecodeCloudEvent(structured, "{" + attrs + "}").ok());
}

TEST(CloudEventsTest, AttributesJson) {
  CloudEvent ce;
  ce.specversion = "1.0";
  ce.id = "1";
  ce.source = "/s";
  ce.type = "t";
  ce.subject = "order-42";
  ce.extensions = {{"partitionkey", "p1"}};
  EXPECT_EQ(CloudEventAttributesJson(ce),
            R"({"specversion":"1.0","id":"1","source":"/s","type":"t",)"
            R"("subject":"order-42","partitionkey":"p1"})");
}

}  // namespace
}  // namespace outboxd
