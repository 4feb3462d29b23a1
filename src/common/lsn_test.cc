// Tests for Lsn: PostgreSQL's "X/Y" text form both ways, ordering, and the
// inputs Parse must refuse.
#include "common/lsn.h"

#include <sstream>
#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace outboxd {
namespace {

TEST(LsnTest, ToStringMatchesPostgres) {
  EXPECT_EQ(Lsn(0).ToString(), "0/0");
  EXPECT_EQ(Lsn(0x16B374D848).ToString(), "16/B374D848");
  EXPECT_EQ(Lsn(0x00000001000000FF).ToString(), "1/FF");
  EXPECT_EQ(Lsn(UINT64_MAX).ToString(), "FFFFFFFF/FFFFFFFF");
  std::ostringstream os;
  os << Lsn(0x16B374D848);
  EXPECT_EQ(os.str(), "16/B374D848");
}

TEST(LsnTest, ParseToStringRoundTrip) {
  for (uint64_t v :
       {uint64_t{0}, uint64_t{1}, uint64_t{0xFFFFFFFF}, uint64_t{0x100000000},
        uint64_t{0x16B374D848}, uint64_t{0xDEADBEEF00C0FFEE}, UINT64_MAX}) {
    auto parsed = Lsn::Parse(Lsn(v).ToString());
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(parsed->value(), v);
  }
}

TEST(LsnTest, ParseAcceptsLowercaseAndLeadingZeros) {
  auto lower = Lsn::Parse("16/b374d848");
  ASSERT_TRUE(lower.ok()) << lower.status();
  EXPECT_EQ(*lower, Lsn(0x16B374D848));
  auto padded = Lsn::Parse("00000016/0000ABCD");
  ASSERT_TRUE(padded.ok()) << padded.status();
  EXPECT_EQ(*padded, Lsn(0x160000ABCD));
}

TEST(LsnTest, ParseRejectsBadInput) {
  for (const char* bad :
       {"",      "/",     "0",          "16",    "/0",          "0/",
        "16//0", "1/2/3", "G/0",        "0/XYZ", "123456789/0", "0/123456789",
        "-1/0",  "0/-1",  "+1/0",       "0x1/0", "0/0x1",       " 1/0",
        "1/0 ",  "1 /0",  "16.B374D848"}) {
    auto parsed = Lsn::Parse(bad);
    EXPECT_FALSE(parsed.ok()) << "accepted '" << bad << "'";
    if (!parsed.ok()) {
      EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST(LsnTest, OrderingAndValidity) {
  EXPECT_FALSE(Lsn().valid());
  EXPECT_TRUE(Lsn(1).valid());
  EXPECT_LT(Lsn(0xFFFFFFFF), Lsn(0x100000000));
  EXPECT_EQ(Lsn::Max(Lsn(3), Lsn(7)), Lsn(7));
  EXPECT_EQ(Lsn::Max(Lsn(7), Lsn(3)), Lsn(7));
}

}  // namespace
}  // namespace outboxd
