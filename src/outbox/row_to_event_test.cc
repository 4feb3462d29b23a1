#include "outbox/row_to_event.h"

#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "outbox/cloudevents.h"

namespace outboxd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

// A row as the SQL readers and the mapper hand it over: the outbox columns
// with Debezium's names plus seq (which is not an outbox column).
class RowToEventTest : public ::testing::Test {
 protected:
  RowToEventTest()
      : names_({"id", "aggregatetype", "aggregateid", "type", "payload",
                "headers", "depends_on", "seq"}),
        texts_({"5f0c2d4e-9a34-4c6b-8f51-0a1b2c3d4e5f", "order", "order-7",
                "OrderCreated", R"({"total": 10})",
                R"({"traceparent": "00-ab-cd-01", "tenant": "acme"})",
                std::nullopt, "42"}) {}

  void Set(const std::string& column, std::optional<std::string> text) {
    for (size_t i = 0; i < names_.size(); ++i) {
      if (names_[i] == column) texts_[i] = std::move(text);
    }
  }

  RowEvent Decode(bool payload_is_bytea = false) {
    return DecodeTyped(payload_is_bytea ? kByteaTypeOid : 3802 /* jsonb */);
  }

  RowEvent DecodeTyped(uint32_t payload_type_oid) {
    cells_.clear();
    for (size_t i = 0; i < names_.size(); ++i) {
      RowCell& c = cells_.emplace_back();
      c.name = names_[i];
      if (texts_[i].has_value()) c.text = *texts_[i];
    }
    OutboxRowLayout layout = LocateOutboxColumns(names_, columns_);
    SetPayloadType(payload_type_oid, &layout);
    return RowToEvent(cells_, layout, columns_, origin_);
  }

  static const OutboxEvent& Valid(const RowEvent& e) {
    if (const auto* bad = std::get_if<InvalidEvent>(&e)) {
      ADD_FAILURE() << "invalid: " << bad->reason;
    }
    static const OutboxEvent kNone;
    const auto* ok = std::get_if<OutboxEvent>(&e);
    return ok != nullptr ? *ok : kNone;
  }
  static InvalidEvent Invalid(const RowEvent& e) {
    const auto* bad = std::get_if<InvalidEvent>(&e);
    if (bad == nullptr) {
      ADD_FAILURE() << "valid, expected invalid";
      return InvalidEvent();
    }
    return *bad;
  }

  OutboxColumns columns_;
  std::vector<std::string> names_;
  std::vector<std::optional<std::string>> texts_;
  std::vector<RowCell> cells_;
  RowOrigin origin_{EventPosition{Lsn(1000), 3}, 42, 1700000000123, ""};
};

TEST_F(RowToEventTest, TextRowBecomesEventWithItsOrigin) {
  RowEvent r = Decode();
  const OutboxEvent& e = Valid(r);
  EXPECT_EQ(e.id, "5f0c2d4e-9a34-4c6b-8f51-0a1b2c3d4e5f");
  EXPECT_EQ(e.aggregate_type, "order");
  EXPECT_EQ(e.aggregate_id, "order-7");
  EXPECT_EQ(e.type, "OrderCreated");
  EXPECT_EQ(e.payload, R"({"total": 10})");  // json/text: as received
  EXPECT_EQ(e.position, (EventPosition{Lsn(1000), 3}));
  EXPECT_EQ(e.table_seq, 42);
  EXPECT_EQ(e.commit_time_unix_ms, 1700000000123);
  EXPECT_THAT(e.headers, ElementsAre(Pair("traceparent", "00-ab-cd-01"),
                                     Pair("tenant", "acme")));
  EXPECT_TRUE(e.depends_on.empty());
}

TEST_F(RowToEventTest, ConfiguredColumnNamesAreUsed) {
  columns_.aggregate_id = "key";
  names_[2] = "key";
  EXPECT_EQ(Valid(Decode()).aggregate_id, "order-7");
  columns_.aggregate_id = "missing";
  EXPECT_THAT(Invalid(Decode()).reason,
              HasSubstr("outbox table has no column 'missing'"));
}

TEST_F(RowToEventTest, NullPayloadIsTombstoneAndNullHeadersAreNone) {
  Set("payload", std::nullopt);
  Set("headers", std::nullopt);
  RowEvent r = Decode();
  const OutboxEvent& e = Valid(r);
  EXPECT_FALSE(e.payload.has_value());
  EXPECT_TRUE(e.headers.empty());
}

TEST_F(RowToEventTest, AbsentHeadersAndDependsOnColumnsAreNone) {
  names_ = {"id", "aggregatetype", "aggregateid", "type", "payload"};
  texts_.resize(names_.size());
  RowEvent r = Decode();
  EXPECT_TRUE(Valid(r).headers.empty());
  EXPECT_TRUE(Valid(r).depends_on.empty());
}

TEST_F(RowToEventTest, ByteaPayloadIsDecodedToRawBytes) {
  Set("payload", "\\x00ff41");
  RowEvent r = Decode(/*payload_is_bytea=*/true);
  EXPECT_EQ(Valid(r).payload, std::string("\x00\xff\x41", 3));
  Set("payload", "\\x0");
  EXPECT_THAT(Invalid(Decode(true)).reason, HasSubstr("odd length"));
}

TEST_F(RowToEventTest, ContentTypeDefaultsByThePayloadColumnsType) {
  EXPECT_EQ(ContentTypeOf(Valid(DecodeTyped(3802))), "application/json");
  EXPECT_EQ(ContentTypeOf(Valid(DecodeTyped(114))), "application/json");
  EXPECT_EQ(ContentTypeOf(Valid(DecodeTyped(25))), "text/plain");
  EXPECT_EQ(ContentTypeOf(Valid(DecodeTyped(1043))), "text/plain");  // varchar
  Set("payload", "\\x00ff");
  EXPECT_EQ(ContentTypeOf(Valid(DecodeTyped(kByteaTypeOid))),
            "application/octet-stream");
}

TEST_F(RowToEventTest, ContentTypeColumnGivesEachRowItsOwn) {
  names_.push_back("content_type");
  texts_.push_back("application/avro");
  EXPECT_EQ(ContentTypeOf(Valid(Decode())), "application/avro");
  Set("content_type", std::nullopt);
  EXPECT_EQ(ContentTypeOf(Valid(Decode())), "application/json");
  Set("content_type", "");
  EXPECT_EQ(ContentTypeOf(Valid(Decode())), "application/json");
  // Under another name, by flag; "" ignores the column.
  columns_.content_type = "";
  Set("content_type", "application/avro");
  EXPECT_EQ(ContentTypeOf(Valid(Decode())), "application/json");
}

TEST_F(RowToEventTest, EachNullRequiredColumnIsInvalidWithTheRowAsContent) {
  for (const char* column : {"id", "aggregatetype", "aggregateid", "type"}) {
    const std::vector<std::optional<std::string>> saved = texts_;
    Set(column, std::nullopt);
    InvalidEvent bad = Invalid(Decode());
    EXPECT_EQ(bad.reason, absl::StrCat("column '", column, "' is NULL"));
    EXPECT_THAT(bad.content, HasSubstr(absl::StrCat("\"", column, "\":null")));
    EXPECT_THAT(bad.content, HasSubstr(R"("seq":"42")"));
    EXPECT_EQ(bad.position, (EventPosition{Lsn(1000), 3}));
    EXPECT_EQ(bad.table_seq, 42);
    EXPECT_EQ(bad.commit_time_unix_ms, 1700000000123);
    // The dead-letter key, when there is one.
    EXPECT_EQ(bad.aggregate_id,
              std::string(column) == "aggregateid" ? "" : "order-7");
    texts_ = saved;
  }
}

TEST_F(RowToEventTest, MissingRequiredColumnIsInvalid) {
  names_[3] = "kind";  // no column 'type'
  EXPECT_EQ(Invalid(Decode()).reason, "outbox table has no column 'type'");
  names_[3] = "type";
  names_[4] = "body";  // no column 'payload'
  EXPECT_EQ(Invalid(Decode()).reason, "outbox table has no column 'payload'");
}

TEST_F(RowToEventTest, UnchangedToastInARequiredColumnIsInvalid) {
  Decode();
  cells_[4].unchanged_toast = true;
  OutboxRowLayout layout = LocateOutboxColumns(names_, columns_);
  InvalidEvent bad = Invalid(RowToEvent(cells_, layout, columns_, origin_));
  EXPECT_EQ(bad.reason, "column 'payload' arrived as unchanged TOAST");
  EXPECT_THAT(bad.content, HasSubstr(R"("payload":null)"));
}

TEST_F(RowToEventTest, HeadersThatAreNotAnObjectOfStringsAreInvalid) {
  for (const char* headers : {"[1,2]", R"({"a": 1})", "{not json"}) {
    Set("headers", headers);
    EXPECT_THAT(Invalid(Decode()).reason, HasSubstr("header")) << headers;
  }
  Set("headers", R"({"n": 1})");
  EXPECT_EQ(Invalid(Decode()).reason, "header 'n' is not a string");
}

// A headers column cannot forge the record's own headers: reserved names
// are dropped (and listed for the pipeline's warning), the event stays valid.
TEST_F(RowToEventTest, ReservedHeaderNamesAreDropped) {
  Set("headers",
      R"({"id": "forged", "eventType": "Forged", "tenant": "t1",)"
      R"( "outbox.lsn": "99999999999", "outbox.index": "7",)"
      R"( "outbox.seq": "1", "outbox.source": "x/y/z",)"
      R"( "outbox.depends-on": "a", "outbox.anything": "v", "Id": "kept",)"
      R"( "outboxx": "kept"})");
  RowEvent r = Decode();
  const OutboxEvent& e = Valid(r);
  EXPECT_THAT(e.headers, ElementsAre(Pair("tenant", "t1"), Pair("Id", "kept"),
                                     Pair("outboxx", "kept")));
  EXPECT_THAT(
      e.dropped_headers,
      ElementsAre("id", "eventType", "outbox.lsn", "outbox.index", "outbox.seq",
                  "outbox.source", "outbox.depends-on", "outbox.anything"));
}

TEST_F(RowToEventTest, DependsOnArrayBecomesIdList) {
  Set("depends_on", "{u1,\"u 2\"}");
  EXPECT_THAT(Valid(Decode()).depends_on, ElementsAre("u1", "u 2"));
  Set("depends_on", "{}");
  EXPECT_TRUE(Valid(Decode()).depends_on.empty());
  Set("depends_on", "{u1,NULL}");
  EXPECT_EQ(Invalid(Decode()).reason,
            "column 'depends_on': array has a NULL element");
  columns_.depends_on = "";  // --column-depends-on='': ignored
  EXPECT_TRUE(Valid(Decode()).depends_on.empty());
}

TEST_F(RowToEventTest, InvalidRowKeepsEveryCellAndBadUtf8) {
  Decode();
  cells_[1].text = absl::string_view("\xff\xfe", 2);  // not UTF-8
  InvalidEvent bad =
      InvalidRow(cells_, LocateOutboxColumns(names_, columns_), origin_, "why");
  EXPECT_EQ(bad.reason, "why");
  EXPECT_EQ(bad.aggregate_id, "order-7");
  EXPECT_THAT(bad.content, HasSubstr(R"("id":"5f0c2d4e)"));
  EXPECT_THAT(bad.content, HasSubstr(R"("depends_on":null)"));
  // Replaced by U+FFFD, so the content stays valid JSON.
  EXPECT_THAT(bad.content, HasSubstr("\"aggregatetype\":\"\xEF\xBF\xBD"));
}

TEST(ParseIdArrayTextTest, Forms) {
  EXPECT_THAT(*ParseIdArrayText("{}"), ElementsAre());
  EXPECT_THAT(*ParseIdArrayText("{a}"), ElementsAre("a"));
  EXPECT_THAT(*ParseIdArrayText("{a, \"b c\"}"), ElementsAre("a", "b c"));
  EXPECT_FALSE(ParseIdArrayText("a,b").ok());
  EXPECT_FALSE(ParseIdArrayText("{a,,b}").ok());
  EXPECT_FALSE(ParseIdArrayText("{NULL}").ok());
  EXPECT_FALSE(ParseIdArrayText("{{a}}").ok());
}

TEST(DecodeByteaTextTest, HexAndEscapeFormats) {
  EXPECT_EQ(*DecodeByteaText("\\x"), "");
  EXPECT_EQ(*DecodeByteaText("\\x41Ff"), std::string("A\xff", 2));
  EXPECT_EQ(*DecodeByteaText("a\\\\b\\001"), std::string("a\\b\x01", 4));
  EXPECT_FALSE(DecodeByteaText("\\x4").ok());
  EXPECT_FALSE(DecodeByteaText("\\xzz").ok());
  EXPECT_FALSE(DecodeByteaText("\\9").ok());
}

}  // namespace
}  // namespace outboxd
