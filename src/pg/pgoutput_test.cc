// Tests for the pgoutput decoder: one test per message kind with every field
// checked, then one test per way the bytes can be corrupt. Fixtures are built
// with ByteWriter following the documented layout, independent of the
// decoder's code.
#include "pg/pgoutput.h"

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/byte_reader.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace outboxd::pgoutput {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint64_t kFinalLsn = 0x16B374D848;
constexpr uint64_t kEndLsn = 0x16B374D900;
constexpr int64_t kCommitTime = 774000000123456;  // 2024-07-11, in PG micros
constexpr uint32_t kXid = 742;
constexpr uint32_t kRelId = 16385;

// --- fixtures ---------------------------------------------------------------

std::string BeginBytes() {
  return ByteWriter().U8('B').U64(kFinalLsn).I64(kCommitTime).U32(kXid).Take();
}

std::string CommitBytes() {
  return ByteWriter()
      .U8('C')
      .U8(0)
      .U64(kFinalLsn)
      .U64(kEndLsn)
      .I64(kCommitTime)
      .Take();
}

std::string OriginBytes() {
  return ByteWriter().U8('O').U64(0x1234).CString("pg_16390").Take();
}

std::string RelationBytes() {
  return ByteWriter()
      .U8('R')
      .U32(kRelId)
      .CString("public")
      .CString("outbox")
      .U8('d')
      .I16(3)
      .U8(1)
      .CString("id")
      .U32(2950)
      .I32(-1)  // uuid, key
      .U8(0)
      .CString("aggregateid")
      .U32(25)
      .I32(-1)  // text
      .U8(0)
      .CString("code")
      .U32(1043)
      .I32(36)  // varchar(32)
      .Take();
}

std::string TypeBytes() {
  return ByteWriter().U8('Y').U32(70001).CString("app").CString("mood").Take();
}

// Appends a tuple with one value of every kind: text, null, unchanged toast,
// binary (with an embedded NUL).
ByteWriter& AppendMixedTuple(ByteWriter& w) {
  return w.I16(4)
      .U8('t')
      .I32(5)
      .Bytes("hello")
      .U8('n')
      .U8('u')
      .U8('b')
      .I32(3)
      .Bytes(std::string("a\0b", 3));
}

std::string InsertBytes() {
  ByteWriter w;
  w.U8('I').U32(kRelId).U8('N');
  AppendMixedTuple(w);
  return w.Take();
}

std::string UpdateWithoutOldBytes() {
  return ByteWriter()
      .U8('U')
      .U32(kRelId)
      .U8('N')
      .I16(2)
      .U8('t')
      .I32(1)
      .Bytes("x")
      .U8('u')
      .Take();
}

std::string UpdateWithOldBytes(char old_kind) {
  return ByteWriter()
      .U8('U')
      .U32(kRelId)
      .U8(old_kind)
      .I16(1)
      .U8('t')
      .I32(3)
      .Bytes("old")
      .U8('N')
      .I16(1)
      .U8('t')
      .I32(3)
      .Bytes("new")
      .Take();
}

std::string DeleteBytes(char old_kind) {
  return ByteWriter()
      .U8('D')
      .U32(kRelId)
      .U8(old_kind)
      .I16(2)
      .U8('t')
      .I32(2)
      .Bytes("42")
      .U8('n')
      .Take();
}

std::string TruncateBytes() {
  return ByteWriter().U8('T').I32(2).U8(3).U32(kRelId).U32(kRelId + 1).Take();
}

std::string MessageBytes(uint8_t flags, absl::string_view prefix,
                         absl::string_view content) {
  return ByteWriter()
      .U8('M')
      .U8(flags)
      .U64(kFinalLsn)
      .CString(prefix)
      .I32(static_cast<int32_t>(content.size()))
      .Bytes(content)
      .Take();
}

// Every valid fixture, for the corruption loops.
std::vector<std::string> AllValidMessages() {
  return {BeginBytes(),
          CommitBytes(),
          OriginBytes(),
          RelationBytes(),
          TypeBytes(),
          InsertBytes(),
          UpdateWithoutOldBytes(),
          UpdateWithOldBytes('K'),
          UpdateWithOldBytes('O'),
          DeleteBytes('K'),
          DeleteBytes('O'),
          TruncateBytes(),
          MessageBytes(1, "outbox", R"({"a":1})"),
          MessageBytes(0, "", "")};
}

void ExpectDataLoss(const absl::StatusOr<PgOutputMessage>& result,
                    absl::string_view needle) {
  ASSERT_FALSE(result.ok()) << "decoded corrupt bytes; wanted: " << needle;
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDataLoss)
      << result.status();
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr(std::string(needle)));
}

// --- one test per message kind ----------------------------------------------
// Decoded string_views point into the input, so each test keeps its bytes in
// a local that outlives the decoded message.

TEST(PgOutputDecodeTest, Begin) {
  std::string bytes = BeginBytes();
  auto m = Decode(bytes);
  ASSERT_TRUE(m.ok()) << m.status();
  const auto& b = std::get<Begin>(*m);
  EXPECT_EQ(b.final_lsn, Lsn(kFinalLsn));
  EXPECT_EQ(b.commit_time, kCommitTime);
  EXPECT_EQ(b.xid, kXid);
}

TEST(PgOutputDecodeTest, Commit) {
  std::string bytes = CommitBytes();
  auto m = Decode(bytes);
  ASSERT_TRUE(m.ok()) << m.status();
  const auto& c = std::get<Commit>(*m);
  EXPECT_EQ(c.flags, 0);
  EXPECT_EQ(c.commit_lsn, Lsn(kFinalLsn));
  EXPECT_EQ(c.end_lsn, Lsn(kEndLsn));
  EXPECT_EQ(c.commit_time, kCommitTime);
}

TEST(PgOutputDecodeTest, Origin) {
  std::string bytes = OriginBytes();
  auto m = Decode(bytes);
  ASSERT_TRUE(m.ok()) << m.status();
  const auto& o = std::get<Origin>(*m);
  EXPECT_EQ(o.commit_lsn, Lsn(0x1234));
  EXPECT_EQ(o.name, "pg_16390");
}

TEST(PgOutputDecodeTest, Relation) {
  std::string bytes = RelationBytes();
  auto m = Decode(bytes);
  ASSERT_TRUE(m.ok()) << m.status();
  const auto& r = std::get<Relation>(*m);
  EXPECT_EQ(r.relation_id, kRelId);
  EXPECT_EQ(r.nspname, "public");
  EXPECT_EQ(r.relname, "outbox");
  EXPECT_EQ(r.replica_identity, 'd');
  ASSERT_EQ(r.columns.size(), 3u);
  EXPECT_TRUE(r.columns[0].part_of_key);
  EXPECT_EQ(r.columns[0].name, "id");
  EXPECT_EQ(r.columns[0].type_oid, 2950u);
  EXPECT_EQ(r.columns[0].type_modifier, -1);
  EXPECT_FALSE(r.columns[1].part_of_key);
  EXPECT_EQ(r.columns[1].name, "aggregateid");
  EXPECT_EQ(r.columns[1].type_oid, 25u);
  EXPECT_FALSE(r.columns[2].part_of_key);
  EXPECT_EQ(r.columns[2].name, "code");
  EXPECT_EQ(r.columns[2].type_oid, 1043u);
  EXPECT_EQ(r.columns[2].type_modifier, 36);
}

TEST(PgOutputDecodeTest, RelationEveryReplicaIdentityAndNoColumns) {
  for (char identity : {'d', 'n', 'f', 'i'}) {
    std::string bytes = ByteWriter()
                            .U8('R')
                            .U32(7)
                            .CString("")  // pg_catalog is sent as ""
                            .CString("t")
                            .U8(identity)
                            .I16(0)
                            .Take();
    auto m = Decode(bytes);
    ASSERT_TRUE(m.ok()) << m.status();
    const auto& r = std::get<Relation>(*m);
    EXPECT_EQ(r.replica_identity, identity);
    EXPECT_EQ(r.nspname, "");
    EXPECT_TRUE(r.columns.empty());
  }
}

TEST(PgOutputDecodeTest, Type) {
  std::string bytes = TypeBytes();
  auto m = Decode(bytes);
  ASSERT_TRUE(m.ok()) << m.status();
  const auto& t = std::get<Type>(*m);
  EXPECT_EQ(t.type_oid, 70001u);
  EXPECT_EQ(t.nspname, "app");
  EXPECT_EQ(t.typname, "mood");
}

TEST(PgOutputDecodeTest, InsertWithEveryValueKind) {
  std::string bytes = InsertBytes();
  auto m = Decode(bytes);
  ASSERT_TRUE(m.ok()) << m.status();
  const auto& i = std::get<Insert>(*m);
  EXPECT_EQ(i.relation_id, kRelId);
  const auto& v = i.new_tuple.values;
  ASSERT_EQ(v.size(), 4u);
  EXPECT_EQ(v[0].kind, TupleValue::Kind::kText);
  EXPECT_EQ(v[0].data, "hello");
  EXPECT_EQ(v[1].kind, TupleValue::Kind::kNull);
  EXPECT_TRUE(v[1].data.empty());
  EXPECT_EQ(v[2].kind, TupleValue::Kind::kUnchangedToast);
  EXPECT_TRUE(v[2].data.empty());
  EXPECT_EQ(v[3].kind, TupleValue::Kind::kBinary);
  EXPECT_EQ(v[3].data, absl::string_view("a\0b", 3));
  // Values are views into the input, not copies (the documented lifetime).
  EXPECT_GE(v[0].data.data(), bytes.data());
  EXPECT_LT(v[0].data.data(), bytes.data() + bytes.size());
}

TEST(PgOutputDecodeTest, InsertWithEmptyTupleAndEmptyText) {
  std::string empty_bytes = ByteWriter().U8('I').U32(1).U8('N').I16(0).Take();
  auto empty = Decode(empty_bytes);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(std::get<Insert>(*empty).new_tuple.values.empty());

  std::string empty_text_bytes =
      ByteWriter().U8('I').U32(1).U8('N').I16(1).U8('t').I32(0).Take();
  auto empty_text = Decode(empty_text_bytes);
  ASSERT_TRUE(empty_text.ok()) << empty_text.status();
  const auto& v = std::get<Insert>(*empty_text).new_tuple.values;
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].kind, TupleValue::Kind::kText);
  EXPECT_TRUE(v[0].data.empty());
}

TEST(PgOutputDecodeTest, UpdateWithoutOldTuple) {
  std::string bytes = UpdateWithoutOldBytes();
  auto m = Decode(bytes);
  ASSERT_TRUE(m.ok()) << m.status();
  const auto& u = std::get<Update>(*m);
  EXPECT_EQ(u.relation_id, kRelId);
  EXPECT_EQ(u.old_kind, 0);
  EXPECT_FALSE(u.old_tuple.has_value());
  ASSERT_EQ(u.new_tuple.values.size(), 2u);
  EXPECT_EQ(u.new_tuple.values[0].data, "x");
  EXPECT_EQ(u.new_tuple.values[1].kind, TupleValue::Kind::kUnchangedToast);
}

TEST(PgOutputDecodeTest, UpdateWithOldKeyAndOldRow) {
  for (char old_kind : {'K', 'O'}) {
    std::string bytes = UpdateWithOldBytes(old_kind);
    auto m = Decode(bytes);
    ASSERT_TRUE(m.ok()) << m.status();
    const auto& u = std::get<Update>(*m);
    EXPECT_EQ(u.relation_id, kRelId);
    EXPECT_EQ(u.old_kind, old_kind);
    ASSERT_TRUE(u.old_tuple.has_value());
    ASSERT_EQ(u.old_tuple->values.size(), 1u);
    EXPECT_EQ(u.old_tuple->values[0].data, "old");
    ASSERT_EQ(u.new_tuple.values.size(), 1u);
    EXPECT_EQ(u.new_tuple.values[0].data, "new");
  }
}

TEST(PgOutputDecodeTest, DeleteWithOldKeyAndOldRow) {
  for (char old_kind : {'K', 'O'}) {
    std::string bytes = DeleteBytes(old_kind);
    auto m = Decode(bytes);
    ASSERT_TRUE(m.ok()) << m.status();
    const auto& d = std::get<Delete>(*m);
    EXPECT_EQ(d.relation_id, kRelId);
    EXPECT_EQ(d.old_kind, old_kind);
    ASSERT_EQ(d.old_tuple.values.size(), 2u);
    EXPECT_EQ(d.old_tuple.values[0].data, "42");
    EXPECT_EQ(d.old_tuple.values[1].kind, TupleValue::Kind::kNull);
  }
}

TEST(PgOutputDecodeTest, Truncate) {
  std::string bytes = TruncateBytes();
  auto m = Decode(bytes);
  ASSERT_TRUE(m.ok()) << m.status();
  const auto& t = std::get<Truncate>(*m);
  EXPECT_EQ(t.options, 3);
  EXPECT_THAT(t.relation_ids, ElementsAre(kRelId, kRelId + 1));
}

TEST(PgOutputDecodeTest, TransactionalMessage) {
  std::string bytes = MessageBytes(1, "outbox", R"({"a":1})");
  auto m = Decode(bytes);
  ASSERT_TRUE(m.ok()) << m.status();
  const auto& msg = std::get<Message>(*m);
  EXPECT_TRUE(msg.transactional);
  EXPECT_EQ(msg.lsn, Lsn(kFinalLsn));
  EXPECT_EQ(msg.prefix, "outbox");
  EXPECT_EQ(msg.content, R"({"a":1})");
}

TEST(PgOutputDecodeTest, NonTransactionalMessageWithBinaryContent) {
  std::string content("\0\xff\0", 3);
  std::string bytes = MessageBytes(0, "audit", content);
  auto m = Decode(bytes);
  ASSERT_TRUE(m.ok()) << m.status();
  const auto& msg = std::get<Message>(*m);
  EXPECT_FALSE(msg.transactional);
  EXPECT_EQ(msg.prefix, "audit");
  EXPECT_EQ(msg.content, content);
}

// --- corruption: one test per class
// -------------------------------------------

TEST(PgOutputCorruptionTest, TruncatedAtEveryOffset) {
  for (const std::string& full : AllValidMessages()) {
    ASSERT_TRUE(Decode(full).ok()) << "fixture must be valid";
    for (size_t len = 0; len < full.size(); ++len) {
      SCOPED_TRACE(testing::Message() << "kind '" << full[0] << "' cut to "
                                      << len << " of " << full.size());
      // An exact-size heap copy, so that ASan catches any read past `len`.
      std::unique_ptr<char[]> cut(new char[len]);
      std::memcpy(cut.get(), full.data(), len);
      auto m = Decode(absl::string_view(cut.get(), len));
      ASSERT_FALSE(m.ok());
      EXPECT_EQ(m.status().code(), absl::StatusCode::kDataLoss) << m.status();
    }
  }
}

TEST(PgOutputCorruptionTest, TrailingBytes) {
  for (std::string bytes : AllValidMessages()) {
    SCOPED_TRACE(testing::Message() << "kind '" << bytes[0] << "'");
    bytes.push_back('\0');
    ExpectDataLoss(Decode(bytes), "trailing");
  }
}

TEST(PgOutputCorruptionTest, UnknownMessageKind) {
  // 'S'/'E'/'c'/'A' are streaming kinds of proto v2, 'P' two-phase (v3):
  // not negotiated, so as unknown as 'Z' or a NUL byte.
  for (char kind : {'Z', 'S', 'E', 'c', 'A', 'P', '\0', '\xff'}) {
    std::string bytes = ByteWriter().U8(kind).U64(1).U64(2).Take();
    ExpectDataLoss(Decode(bytes), "unknown pgoutput message kind");
  }
  ExpectDataLoss(Decode(""), "message kind");
}

TEST(PgOutputCorruptionTest, UnknownTupleValueKind) {
  std::string bytes =
      ByteWriter().U8('I').U32(1).U8('N').I16(2).U8('n').U8('x').Take();
  ExpectDataLoss(Decode(bytes),
                 "unknown tuple value kind 'x' (0x78) in column 1");
}

TEST(PgOutputCorruptionTest, NegativeTupleValueLength) {
  std::string bytes =
      ByteWriter().U8('I').U32(1).U8('N').I16(1).U8('t').I32(-1).Take();
  ExpectDataLoss(Decode(bytes), "negative length -1 of tuple value 0");
  std::string binary =
      ByteWriter().U8('I').U32(1).U8('N').I16(1).U8('b').I32(INT32_MIN).Take();
  ExpectDataLoss(Decode(binary), "negative length");
}

TEST(PgOutputCorruptionTest, NegativeCounts) {
  ExpectDataLoss(Decode(ByteWriter().U8('I').U32(1).U8('N').I16(-1).Take()),
                 "negative tuple column count -1");
  ExpectDataLoss(Decode(ByteWriter()
                            .U8('R')
                            .U32(1)
                            .CString("s")
                            .CString("t")
                            .U8('d')
                            .I16(-2)
                            .Take()),
                 "negative column count -2");
  ExpectDataLoss(Decode(ByteWriter().U8('T').I32(-1).U8(0).Take()),
                 "negative relation count -1");
  ExpectDataLoss(
      Decode(ByteWriter().U8('M').U8(1).U64(1).CString("p").I32(-5).Take()),
      "negative content length -5");
}

TEST(PgOutputCorruptionTest, HugeCounts) {
  // Counts far beyond what the bytes left can hold: rejected before any
  // allocation is sized by them.
  ExpectDataLoss(
      Decode(ByteWriter().U8('I').U32(1).U8('N').I16(32767).U8('n').Take()),
      "tuple column count 32767 needs at least 32767 bytes, only 1 left");
  ExpectDataLoss(Decode(ByteWriter()
                            .U8('R')
                            .U32(1)
                            .CString("s")
                            .CString("t")
                            .U8('d')
                            .I16(30000)
                            .Take()),
                 "column count 30000 needs at least");
  ExpectDataLoss(
      Decode(ByteWriter().U8('T').I32(INT32_MAX).U8(0).U32(1).Take()),
      "relation count 2147483647 needs at least");
  ExpectDataLoss(Decode(ByteWriter()
                            .U8('M')
                            .U8(1)
                            .U64(1)
                            .CString("p")
                            .I32(INT32_MAX)
                            .Bytes("abc")
                            .Take()),
                 "Message content");
  ExpectDataLoss(Decode(ByteWriter()
                            .U8('I')
                            .U32(1)
                            .U8('N')
                            .I16(1)
                            .U8('t')
                            .I32(INT32_MAX)
                            .Bytes("abc")
                            .Take()),
                 "tuple value bytes");
}

TEST(PgOutputCorruptionTest, BadTupleMarkers) {
  ExpectDataLoss(Decode(ByteWriter().U8('I').U32(1).U8('K').I16(0).Take()),
                 "Insert: expected new tuple 'N', got 'K'");
  ExpectDataLoss(Decode(ByteWriter().U8('U').U32(1).U8('X').I16(0).Take()),
                 "Update: expected tuple marker 'K', 'O' or 'N', got 'X'");
  // An old tuple must be followed by 'N', not by a second old tuple.
  ExpectDataLoss(
      Decode(ByteWriter().U8('U').U32(1).U8('K').I16(0).U8('O').I16(0).Take()),
      "got 'O'");
  ExpectDataLoss(Decode(ByteWriter().U8('D').U32(1).U8('N').I16(0).Take()),
                 "Delete: expected old tuple marker 'K' or 'O', got 'N'");
}

TEST(PgOutputCorruptionTest, UnknownFlags) {
  ExpectDataLoss(Decode(ByteWriter().U8('C').U8(1).U64(1).U64(2).I64(3).Take()),
                 "Commit: unknown flags");
  ExpectDataLoss(Decode(MessageBytes(2, "p", "c")), "Message: unknown flags");
  ExpectDataLoss(Decode(ByteWriter().U8('T').I32(0).U8(4).Take()),
                 "Truncate: unknown options");
  ExpectDataLoss(Decode(ByteWriter()
                            .U8('R')
                            .U32(1)
                            .CString("s")
                            .CString("t")
                            .U8('d')
                            .I16(1)
                            .U8(2)
                            .CString("c")
                            .U32(25)
                            .I32(-1)
                            .Take()),
                 "Relation: unknown flags 0x02 on column 0");
}

TEST(PgOutputCorruptionTest, UnknownReplicaIdentity) {
  ExpectDataLoss(Decode(ByteWriter()
                            .U8('R')
                            .U32(1)
                            .CString("s")
                            .CString("t")
                            .U8('x')
                            .I16(0)
                            .Take()),
                 "unknown replica identity 'x'");
}

TEST(PgOutputCorruptionTest, ZeroLsnWhereOneIsRequired) {
  ExpectDataLoss(Decode(ByteWriter().U8('B').U64(0).I64(1).U32(1).Take()),
                 "Begin: final LSN is 0");
  ExpectDataLoss(Decode(ByteWriter().U8('C').U8(0).U64(1).U64(0).I64(1).Take()),
                 "Commit: end LSN is 0");
}

TEST(PgOutputCorruptionTest, StringWithoutTerminator) {
  ExpectDataLoss(Decode(ByteWriter().U8('O').U64(1).Bytes("no-nul").Take()),
                 "Origin name has no NUL terminator");
}

}  // namespace
}  // namespace outboxd::pgoutput
