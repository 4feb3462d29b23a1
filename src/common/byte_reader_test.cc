// Tests for ByteReader / ByteWriter: big-endian round trips, and that no read
// ever runs off the end of the buffer (every failure is kDataLoss naming what
// was being read).
#include "common/byte_reader.h"

#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace outboxd {
namespace {

using ::testing::HasSubstr;

TEST(ByteReaderTest, RoundTripsEveryWidthBigEndian) {
  std::string bytes = ByteWriter()
                          .U8(0xAB)
                          .I16(-2)
                          .I32(-3)
                          .U32(0xF1F2F3F4)
                          .I64(-4)
                          .U64(0x0102030405060708)
                          .Bytes("xy")
                          .CString("name")
                          .Take();
  // Network order: the most significant byte first.
  EXPECT_EQ(bytes.substr(0, 3), std::string("\xAB\xFF\xFE", 3));
  EXPECT_EQ(bytes.substr(19, 8),
            std::string("\x01\x02\x03\x04\x05\x06\x07\x08", 8));

  ByteReader r(bytes);
  EXPECT_EQ(*r.ReadU8("u8"), 0xAB);
  EXPECT_EQ(*r.ReadI16("i16"), -2);
  EXPECT_EQ(*r.ReadI32("i32"), -3);
  EXPECT_EQ(*r.ReadU32("u32"), 0xF1F2F3F4u);
  EXPECT_EQ(*r.ReadI64("i64"), -4);
  EXPECT_EQ(*r.ReadU64("u64"), 0x0102030405060708u);
  EXPECT_EQ(*r.ReadBytes(2, "bytes"), "xy");
  EXPECT_EQ(*r.ReadCString("cstring"), "name");
  EXPECT_TRUE(r.AtEnd());
  EXPECT_TRUE(r.ExpectEnd("msg").ok());
}

TEST(ByteReaderTest, ReadPastEndIsDataLossNamingTheField) {
  std::string bytes("\x01\x02\x03", 3);
  ByteReader r(bytes);
  auto v = r.ReadU32("relation id");
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("relation id"));
  // A failed read consumes nothing.
  EXPECT_EQ(r.position(), 0u);
  EXPECT_EQ(r.remaining(), 3u);
}

TEST(ByteReaderTest, EveryFixedWidthReadChecksBounds) {
  for (size_t size = 0; size < 8; ++size) {
    std::string bytes(size, '\x7f');
    ByteReader r(bytes);
    EXPECT_EQ(r.ReadU8("u8").ok(), size >= 1);
    ByteReader r16(bytes);
    EXPECT_EQ(r16.ReadI16("i16").ok(), size >= 2);
    ByteReader r32(bytes);
    EXPECT_EQ(r32.ReadI32("i32").ok(), size >= 4);
    ByteReader ru32(bytes);
    EXPECT_EQ(ru32.ReadU32("u32").ok(), size >= 4);
    ByteReader r64(bytes);
    EXPECT_FALSE(r64.ReadI64("i64").ok());
    ByteReader ru64(bytes);
    EXPECT_FALSE(ru64.ReadU64("u64").ok());
  }
}

TEST(ByteReaderTest, ReadBytesBounds) {
  ByteReader r("abc");
  EXPECT_FALSE(r.ReadBytes(4, "payload").ok());
  // Sizes near SIZE_MAX must not wrap around the bounds check.
  EXPECT_FALSE(r.ReadBytes(SIZE_MAX, "payload").ok());
  EXPECT_EQ(*r.ReadBytes(0, "nothing"), "");
  EXPECT_EQ(*r.ReadBytes(3, "payload"), "abc");
  EXPECT_FALSE(r.ReadBytes(1, "payload").ok());
  EXPECT_EQ(*r.ReadBytes(0, "nothing"), "");
}

TEST(ByteReaderTest, CStringNeedsTerminator) {
  ByteReader r(absl::string_view("ab\0cd", 5));
  EXPECT_EQ(*r.ReadCString("first"), "ab");
  auto second = r.ReadCString("second");
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(second.status().message()),
              HasSubstr("second has no NUL terminator"));
  EXPECT_EQ(r.remaining(), 2u);

  ByteReader empty("");
  EXPECT_FALSE(empty.ReadCString("s").ok());
  ByteReader only_nul(absl::string_view("\0", 1));
  EXPECT_EQ(*only_nul.ReadCString("s"), "");
  EXPECT_TRUE(only_nul.AtEnd());
}

TEST(ByteReaderTest, ReadRestAndTrailingBytes) {
  ByteReader r("hello");
  ASSERT_TRUE(r.ReadBytes(2, "head").ok());
  absl::Status trailing = r.ExpectEnd("greeting");
  EXPECT_EQ(trailing.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(trailing.message()), HasSubstr("greeting"));
  EXPECT_THAT(std::string(trailing.message()),
              HasSubstr("3 unexpected trailing"));
  EXPECT_EQ(r.ReadRest(), "llo");
  EXPECT_TRUE(r.AtEnd());
  EXPECT_EQ(r.ReadRest(), "");
  EXPECT_TRUE(r.ExpectEnd("greeting").ok());
}

TEST(ByteReaderTest, ViewsPointIntoTheBuffer) {
  std::string bytes = "abc";
  ByteReader r(bytes);
  absl::string_view v = *r.ReadBytes(2, "two");
  EXPECT_EQ(v.data(), bytes.data());
}

}  // namespace
}  // namespace outboxd
