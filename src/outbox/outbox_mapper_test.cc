#include "outbox/outbox_mapper.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "outbox/cloudevents.h"

namespace outboxd {
namespace {

using pgoutput::TupleValue;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

constexpr uint32_t kOutboxRel = 16400;
constexpr uint32_t kOtherRel = 16500;
constexpr uint32_t kJsonbOid = 3802;
constexpr uint32_t kByteaOid = 17;
constexpr uint32_t kTextOid = 25;
constexpr uint32_t kUuidOid = 2950;
// 2024-01-01T00:00:00Z in PostgreSQL microseconds.
constexpr int64_t kCommitTimePg = 757382400LL * 1000000;
constexpr int64_t kCommitTimeUnixMs = 1704067200000LL;

pgoutput::Relation OutboxRelation(uint32_t payload_oid = kJsonbOid,
                                  bool with_headers = true) {
  pgoutput::Relation rel;
  rel.relation_id = kOutboxRel;
  rel.nspname = "public";
  rel.relname = "outbox";
  rel.replica_identity = 'd';
  rel.columns = {{true, "id", kUuidOid, -1},
                 {false, "aggregatetype", kTextOid, -1},
                 {false, "aggregateid", kTextOid, -1},
                 {false, "type", kTextOid, -1},
                 {false, "payload", payload_oid, -1}};
  if (with_headers) rel.columns.push_back({false, "headers", kJsonbOid, -1});
  return rel;
}

TupleValue Text(absl::string_view s) { return {TupleValue::Kind::kText, s}; }
TupleValue Null() { return {TupleValue::Kind::kNull, {}}; }

pgoutput::Insert OutboxInsert(std::vector<TupleValue> values,
                              uint32_t rel = kOutboxRel) {
  pgoutput::Insert ins;
  ins.relation_id = rel;
  ins.new_tuple.values = std::move(values);
  return ins;
}

class OutboxMapperTest : public ::testing::Test {
 protected:
  OutboxMapperTest() : mapper_(Options()) {}

  static OutboxMapperOptions Options() {
    OutboxMapperOptions o;
    o.tables = {QualifiedName{"public", "outbox"}};
    return o;
  }

  void Begin(uint64_t commit_lsn) {
    auto out =
        mapper_.Apply(pgoutput::Begin{Lsn(commit_lsn), kCommitTimePg, 7});
    ASSERT_TRUE(out.ok()) << out.status();
    ASSERT_TRUE(std::holds_alternative<TransactionBegin>(*out));
  }

  MappedMessage MustApply(const pgoutput::PgOutputMessage& m) {
    auto out = mapper_.Apply(m);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? *out : MappedMessage();
  }

  OutboxMapper mapper_;
};

TEST_F(OutboxMapperTest, InsertBecomesEventWithPositionAndHeaders) {
  MustApply(OutboxRelation());
  Begin(1000);
  MappedMessage first = MustApply(
      OutboxInsert({Text("6f1c5c1e-0000-4000-8000-000000000001"), Text("order"),
                    Text("o-1"), Text("OrderCreated"), Text(R"({"total": 12})"),
                    Text(R"({"traceparent": "00-abc", "tenant": "t1"})")}));
  ASSERT_TRUE(std::holds_alternative<OutboxEvent>(first));
  const auto& e = std::get<OutboxEvent>(first);
  EXPECT_EQ(e.id, "6f1c5c1e-0000-4000-8000-000000000001");
  EXPECT_EQ(e.aggregate_type, "order");
  EXPECT_EQ(e.aggregate_id, "o-1");
  EXPECT_EQ(e.type, "OrderCreated");
  EXPECT_EQ(e.payload, R"({"total": 12})");
  EXPECT_EQ(e.position.commit_lsn, Lsn(1000));
  EXPECT_EQ(e.position.index, 0u);
  EXPECT_EQ(e.commit_time_unix_ms, kCommitTimeUnixMs);
  EXPECT_THAT(e.headers,
              ElementsAre(Pair("traceparent", "00-abc"), Pair("tenant", "t1")));

  MappedMessage second =
      MustApply(OutboxInsert({Text("id2"), Text("order"), Text("o-1"),
                              Text("OrderPaid"), Null(), Null()}));
  ASSERT_TRUE(std::holds_alternative<OutboxEvent>(second));
  EXPECT_EQ(std::get<OutboxEvent>(second).position.index, 1u);
  EXPECT_FALSE(std::get<OutboxEvent>(second).payload.has_value());

  MappedMessage end =
      MustApply(pgoutput::Commit{0, Lsn(1000), Lsn(1040), kCommitTimePg});
  ASSERT_TRUE(std::holds_alternative<TransactionCommit>(end));
  EXPECT_EQ(std::get<TransactionCommit>(end).end_lsn, Lsn(1040));
  EXPECT_EQ(mapper_.counters().events, 2u);
}

TEST_F(OutboxMapperTest, IndexRestartsInEachTransaction) {
  MustApply(OutboxRelation());
  for (uint64_t lsn : {100, 200}) {
    Begin(lsn);
    auto m = MustApply(OutboxInsert(
        {Text("i"), Text("a"), Text("k"), Text("t"), Text("{}"), Null()}));
    EXPECT_EQ(std::get<OutboxEvent>(m).position, (EventPosition{Lsn(lsn), 0}));
    MustApply(pgoutput::Commit{0, Lsn(lsn), Lsn(lsn + 8), kCommitTimePg});
  }
}

TEST_F(OutboxMapperTest, ByteaPayloadIsDecodedToRawBytes) {
  MustApply(OutboxRelation(kByteaOid, false));
  Begin(10);
  auto m = MustApply(OutboxInsert(
      {Text("i"), Text("a"), Text("k"), Text("t"), Text("\\x00ff41")}));
  ASSERT_TRUE(std::holds_alternative<OutboxEvent>(m));
  EXPECT_EQ(std::get<OutboxEvent>(m).payload, std::string("\x00\xff"
                                                          "A",
                                                          3));
  // The Relation's type oid gives the content type (CloudEvents).
  EXPECT_EQ(ContentTypeOf(std::get<OutboxEvent>(m)),
            "application/octet-stream");
}

TEST_F(OutboxMapperTest, ContentTypeFromTheColumnOrThePayloadType) {
  pgoutput::Relation rel = OutboxRelation(kTextOid, false);
  rel.columns.push_back({false, "content_type", kTextOid, -1});
  MustApply(rel);
  Begin(10);
  auto own = MustApply(OutboxInsert({Text("i"), Text("a"), Text("k"), Text("t"),
                                     Text("x"), Text("application/avro")}));
  ASSERT_TRUE(std::holds_alternative<OutboxEvent>(own));
  EXPECT_EQ(ContentTypeOf(std::get<OutboxEvent>(own)), "application/avro");
  auto by_type = MustApply(OutboxInsert(
      {Text("i"), Text("a"), Text("k"), Text("t"), Text("x"), Null()}));
  ASSERT_TRUE(std::holds_alternative<OutboxEvent>(by_type));
  EXPECT_EQ(ContentTypeOf(std::get<OutboxEvent>(by_type)), "text/plain");
}

TEST_F(OutboxMapperTest, OtherTablesUpdatesDeletesAreIgnoredAndCounted) {
  pgoutput::Relation other = OutboxRelation();
  other.relation_id = kOtherRel;
  other.relname = "orders";
  MustApply(OutboxRelation());
  MustApply(other);
  Begin(10);
  std::vector<TupleValue> row = {Text("i"), Text("a"),  Text("k"),
                                 Text("t"), Text("{}"), Null()};
  EXPECT_TRUE(std::holds_alternative<std::monostate>(
      MustApply(OutboxInsert(row, kOtherRel))));
  pgoutput::Update upd;
  upd.relation_id = kOutboxRel;
  upd.new_tuple.values = row;
  EXPECT_TRUE(std::holds_alternative<std::monostate>(MustApply(upd)));
  pgoutput::Delete del{kOutboxRel, 'K', {}};
  EXPECT_TRUE(std::holds_alternative<std::monostate>(MustApply(del)));
  EXPECT_TRUE(std::holds_alternative<std::monostate>(
      MustApply(pgoutput::Truncate{0, {kOutboxRel}})));
  EXPECT_EQ(mapper_.counters().ignored_other_tables, 1u);
  EXPECT_EQ(mapper_.counters().ignored_updates, 1u);
  EXPECT_EQ(mapper_.counters().ignored_deletes, 1u);
  EXPECT_EQ(mapper_.counters().ignored_truncates, 1u);
  EXPECT_EQ(mapper_.counters().events, 0u);
}

TEST_F(OutboxMapperTest, NewRelationMidStreamIsUsed) {
  MustApply(OutboxRelation(kJsonbOid, false));
  Begin(10);
  MustApply(
      OutboxInsert({Text("i"), Text("a"), Text("k"), Text("t"), Text("{}")}));
  MustApply(pgoutput::Commit{0, Lsn(10), Lsn(20), kCommitTimePg});
  // ALTER TABLE ... ADD COLUMN: a new Relation with one more column.
  pgoutput::Relation altered = OutboxRelation(kJsonbOid, false);
  altered.columns.push_back({false, "extra", kTextOid, -1});
  MustApply(altered);
  Begin(30);
  auto m = MustApply(OutboxInsert(
      {Text("i2"), Text("a"), Text("k"), Text("t"), Text("{}"), Text("x")}));
  ASSERT_TRUE(std::holds_alternative<OutboxEvent>(m));
  EXPECT_EQ(std::get<OutboxEvent>(m).id, "i2");
}

TEST_F(OutboxMapperTest, NullAggregateIdIsInvalidNotAnError) {
  MustApply(OutboxRelation());
  Begin(10);
  auto m = MustApply(OutboxInsert(
      {Text("i"), Text("a"), Null(), Text("t"), Text("{}"), Null()}));
  ASSERT_TRUE(std::holds_alternative<InvalidEvent>(m));
  const auto& bad = std::get<InvalidEvent>(m);
  EXPECT_THAT(bad.reason, HasSubstr("aggregateid"));
  EXPECT_THAT(bad.content, HasSubstr("\"aggregateid\":null"));
  EXPECT_EQ(bad.position, (EventPosition{Lsn(10), 0}));
}

TEST_F(OutboxMapperTest, ReservedHeaderNamesInAMessageAreDropped) {
  Begin(10);
  auto m = MustApply(pgoutput::Message{
      true, Lsn(9), "outbox",
      R"({"id":"m1","aggregatetype":"order","aggregateid":"o-9","type":"X",)"
      R"("payload":{},"headers":{"outbox.lsn":"1","h":"v","id":"f"}})"});
  ASSERT_TRUE(std::holds_alternative<OutboxEvent>(m));
  const auto& e = std::get<OutboxEvent>(m);
  EXPECT_EQ(e.id, "m1");
  EXPECT_THAT(e.headers, ElementsAre(Pair("h", "v")));
  EXPECT_THAT(e.dropped_headers, ElementsAre("outbox.lsn", "id"));
}

TEST_F(OutboxMapperTest, UnchangedToastInAnOutboxColumnIsInvalid) {
  MustApply(OutboxRelation());
  Begin(10);
  const TupleValue toast{TupleValue::Kind::kUnchangedToast, {}};
  auto m = MustApply(OutboxInsert(
      {Text("i"), Text("a"), Text("k"), Text("t"), toast, Null()}));
  ASSERT_TRUE(std::holds_alternative<InvalidEvent>(m));
  EXPECT_THAT(std::get<InvalidEvent>(m).reason,
              HasSubstr("'payload' arrived as unchanged TOAST"));
  EXPECT_THAT(std::get<InvalidEvent>(m).content, HasSubstr("\"payload\":null"));
  EXPECT_EQ(mapper_.counters().invalid_events, 1u);
}

TEST_F(OutboxMapperTest, MissingColumnAfterDropIsInvalid) {
  pgoutput::Relation rel = OutboxRelation(kJsonbOid, false);
  rel.columns.erase(rel.columns.begin() + 3);  // DROP COLUMN type
  MustApply(rel);
  Begin(10);
  auto m =
      MustApply(OutboxInsert({Text("i"), Text("a"), Text("k"), Text("{}")}));
  ASSERT_TRUE(std::holds_alternative<InvalidEvent>(m));
  EXPECT_THAT(std::get<InvalidEvent>(m).reason, HasSubstr("no column 'type'"));
}

TEST_F(OutboxMapperTest, AnInsertNamesItsTable) {
  MustApply(OutboxRelation());
  Begin(10);
  auto m = MustApply(OutboxInsert(
      {Text("i"), Text("a"), Text("k"), Text("t"), Text("{}"), Null()}));
  ASSERT_TRUE(std::holds_alternative<OutboxEvent>(m));
  EXPECT_EQ(std::get<OutboxEvent>(m).table, "public.outbox");
  // An invalid row names it too (its dead-letter record carries it).
  auto bad = MustApply(
      OutboxInsert({Text("i"), Text("a"), Null(), Text("t"), Null(), Null()}));
  ASSERT_TRUE(std::holds_alternative<InvalidEvent>(bad));
  EXPECT_EQ(std::get<InvalidEvent>(bad).table, "public.outbox");
}

TEST(OutboxMapperTablesTest, EveryListedTableIsMappedTheSameWayAndNamed) {
  OutboxMapperOptions o;
  o.tables = {QualifiedName{"public", "outbox"},
              QualifiedName{"Billing", "Out box"}};
  OutboxMapper mapper(o);
  pgoutput::Relation first = OutboxRelation();
  pgoutput::Relation second = OutboxRelation(kByteaOid, false);
  second.relation_id = kOtherRel;
  second.nspname = "Billing";
  second.relname = "Out box";
  pgoutput::Relation unlisted = OutboxRelation();
  unlisted.relation_id = kOtherRel + 1;
  unlisted.relname = "orders";
  for (const auto& rel : {first, second, unlisted}) {
    ASSERT_TRUE(mapper.Apply(rel).ok());
  }
  ASSERT_TRUE(mapper.Apply(pgoutput::Begin{Lsn(50), kCommitTimePg, 7}).ok());
  auto a = mapper.Apply(OutboxInsert(
      {Text("1"), Text("order"), Text("o-1"), Text("T"), Text("{}"), Null()}));
  auto b = mapper.Apply(OutboxInsert(
      {Text("2"), Text("invoice"), Text("i-1"), Text("T"), Text("\\x4142")},
      kOtherRel));
  auto c = mapper.Apply(OutboxInsert(
      {Text("3"), Text("order"), Text("o-2"), Text("T"), Text("{}"), Null()},
      kOtherRel + 1));
  auto m = mapper.Apply(pgoutput::Message{
      true, Lsn(50), "outbox",
      R"({"id":"4","aggregatetype":"order","aggregateid":"o-3",)"
      R"("type":"T","payload":{}})"});
  ASSERT_TRUE(a.ok() && b.ok() && c.ok() && m.ok());
  ASSERT_TRUE(std::holds_alternative<OutboxEvent>(*a));
  ASSERT_TRUE(std::holds_alternative<OutboxEvent>(*b));
  EXPECT_EQ(std::get<OutboxEvent>(*a).table, "public.outbox");
  EXPECT_EQ(std::get<OutboxEvent>(*b).table, "Billing.Out box");
  // Each table's own column types: the second table's payload is bytea.
  EXPECT_EQ(std::get<OutboxEvent>(*b).payload, "AB");
  // One position sequence over the tables of a transaction.
  EXPECT_EQ(std::get<OutboxEvent>(*a).position.index, 0u);
  EXPECT_EQ(std::get<OutboxEvent>(*b).position.index, 1u);
  // A table that is not listed is ignored; a message has no table.
  EXPECT_TRUE(std::holds_alternative<std::monostate>(*c));
  EXPECT_EQ(mapper.counters().ignored_other_tables, 1u);
  ASSERT_TRUE(std::holds_alternative<OutboxEvent>(*m));
  EXPECT_EQ(std::get<OutboxEvent>(*m).table, "");
  EXPECT_EQ(std::get<OutboxEvent>(*m).position.index, 2u);
}

TEST_F(OutboxMapperTest, TransactionalMessagesWithPrefixAreEvents) {
  Begin(10);
  auto m = MustApply(pgoutput::Message{
      true, Lsn(9), "outbox",
      R"({"id":"m1","aggregatetype":"order","aggregateid":"o-9","type":"X",)"
      R"("payload":{"a":[1,"é"]},"headers":{"h":"v"}})"});
  ASSERT_TRUE(std::holds_alternative<OutboxEvent>(m));
  const auto& e = std::get<OutboxEvent>(m);
  EXPECT_EQ(e.id, "m1");
  EXPECT_EQ(e.aggregate_id, "o-9");
  EXPECT_EQ(e.payload, R"({"a":[1,"é"]})");
  EXPECT_EQ(ContentTypeOf(e), "application/json");
  EXPECT_THAT(e.headers, ElementsAre(Pair("h", "v")));

  EXPECT_TRUE(std::holds_alternative<std::monostate>(
      MustApply(pgoutput::Message{true, Lsn(9), "other", "{}"})));
  EXPECT_TRUE(std::holds_alternative<InvalidEvent>(
      MustApply(pgoutput::Message{true, Lsn(9), "outbox", "{\"id\": 1}"})));
  EXPECT_EQ(mapper_.counters().ignored_other_prefix_messages, 1u);
}

TEST_F(OutboxMapperTest, NonTransactionalMessagesAreCountedAndIgnored) {
  auto m = MustApply(pgoutput::Message{false, Lsn(9), "outbox", "{}"});
  EXPECT_TRUE(std::holds_alternative<std::monostate>(m));
  EXPECT_EQ(mapper_.counters().ignored_nontransactional_messages, 1u);
}

TEST_F(OutboxMapperTest, ProtocolViolationsAreDataLoss) {
  // Insert for a relation never described.
  Begin(10);
  auto unknown = mapper_.Apply(OutboxInsert({Text("x")}, 999));
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kDataLoss);
  // Begin inside a transaction.
  EXPECT_EQ(mapper_.Apply(pgoutput::Begin{Lsn(20), 0, 1}).status().code(),
            absl::StatusCode::kDataLoss);
  // Commit for another LSN.
  EXPECT_EQ(
      mapper_.Apply(pgoutput::Commit{0, Lsn(11), Lsn(12), 0}).status().code(),
      absl::StatusCode::kDataLoss);
  MustApply(pgoutput::Commit{0, Lsn(10), Lsn(12), 0});
  // Commit and Insert outside a transaction.
  EXPECT_EQ(
      mapper_.Apply(pgoutput::Commit{0, Lsn(10), Lsn(12), 0}).status().code(),
      absl::StatusCode::kDataLoss);
  MustApply(OutboxRelation());
  EXPECT_EQ(mapper_.Apply(OutboxInsert({Text("x")})).status().code(),
            absl::StatusCode::kDataLoss);
  // Column count differs from the Relation.
  Begin(30);
  EXPECT_EQ(mapper_.Apply(OutboxInsert({Text("x")})).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST_F(OutboxMapperTest, DependsOnColumnIsFoundByName) {
  pgoutput::Relation rel = OutboxRelation();
  constexpr uint32_t kUuidArrayOid = 2951;
  rel.columns.push_back({false, "depends_on", kUuidArrayOid, -1});
  MustApply(rel);
  Begin(10);
  auto m = MustApply(OutboxInsert({Text("i"), Text("a"), Text("k"), Text("t"),
                                   Text("{}"), Null(), Text("{u1,u2}")}));
  ASSERT_TRUE(std::holds_alternative<OutboxEvent>(m));
  EXPECT_THAT(std::get<OutboxEvent>(m).depends_on, ElementsAre("u1", "u2"));
}

TEST_F(OutboxMapperTest, MessageDependsOn) {
  Begin(10);
  auto m = MustApply(pgoutput::Message{
      true, Lsn(9), "outbox",
      R"({"id":"m2","aggregatetype":"order","aggregateid":"o-9","type":"X",)"
      R"("depends_on":["m1"]})"});
  ASSERT_TRUE(std::holds_alternative<OutboxEvent>(m));
  EXPECT_THAT(std::get<OutboxEvent>(m).depends_on, ElementsAre("m1"));
  EXPECT_TRUE(std::holds_alternative<InvalidEvent>(MustApply(pgoutput::Message{
      true, Lsn(9), "outbox",
      R"({"id":"m3","aggregatetype":"o","aggregateid":"o","type":"X",)"
      R"("depends_on":"m1"})"})));
}

}  // namespace
}  // namespace outboxd
