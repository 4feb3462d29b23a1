#include "pipeline/checkpoint.h"

#include "gtest/gtest.h"

namespace outboxd {
namespace {

EventPosition Pos(uint64_t lsn, uint32_t index) {
  return EventPosition{Lsn(lsn), index};
}

CommittedOffset Offset(const std::string& topic, int32_t partition,
                       const Checkpoint& c) {
  return CommittedOffset{topic, partition, CheckpointOffset(c.position),
                         EncodeCheckpoint(c)};
}

TEST(CheckpointTest, RoundTrips) {
  Checkpoint c{"7301/app/outbox_slot", Pos(0xFFFFFFFFFFFFFFF0ull, 4294967295u)};
  auto back = DecodeCheckpoint(EncodeCheckpoint(c));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->source, c.source);
  EXPECT_EQ(back->position, c.position);
  EXPECT_EQ(back->commit_time_unix_ms, 0);
  c.commit_time_unix_ms = 1700000000123;
  back = DecodeCheckpoint(EncodeCheckpoint(c));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->commit_time_unix_ms, 1700000000123);
  EXPECT_LT(EncodeCheckpoint(c).size(), 4096u);
  // The offset stays a valid (non-negative) Kafka offset.
  EXPECT_GE(CheckpointOffset(c.position), 0);
  EXPECT_EQ(CheckpointOffset(Pos(12345, 0)), 12345);
}

TEST(CheckpointTest, RejectsWhatIsNotACheckpoint) {
  for (const char* bad :
       {"", "x", "[]", "{}",
        R"({"outboxd":2,"source":"s","lsn":"1","index":0})",
        R"({"outboxd":1,"lsn":"1","index":0})",
        R"({"outboxd":1,"source":"s","lsn":1,"index":0})",
        R"({"outboxd":1,"source":"s","lsn":"-1","index":0})",
        R"({"outboxd":1,"source":"s","lsn":"1","index":-1})",
        R"({"outboxd":1,"source":"s","lsn":"1","index":4294967296})",
        R"({"outboxd":1,"source":"s","lsn":"1","index":0,"time":"x"})"}) {
    EXPECT_TRUE(absl::IsDataLoss(DecodeCheckpoint(bad).status())) << bad;
  }
}

TEST(CheckpointTest, NoOffsetsNoCheckpoint) {
  auto newest = NewestCheckpoint({}, "s", "g");
  ASSERT_TRUE(newest.ok());
  EXPECT_FALSE(newest->has_value());
}

TEST(CheckpointTest, TheNewestPositionOverEveryTopicWins) {
  // Each transaction commits on partition 0 of one of its topics: the
  // newest checkpoint may be on any of them.
  std::vector<CommittedOffset> offsets = {
      Offset("orders", 0, {"s", Pos(500, 2)}),
      Offset("outbox.dlq", 0, {"s", Pos(900, 0)}),
      Offset("payments", 0, {"s", Pos(900, 1)}),
      Offset("users", 0, {"s", Pos(100, 9)}),
  };
  auto newest = NewestCheckpoint(offsets, "s", "g");
  ASSERT_TRUE(newest.ok()) << newest.status();
  EXPECT_EQ((*newest)->position, Pos(900, 1));
}

// A database whose WAL went back on the same timeline (a restore) reuses
// positions: the checkpoint written last is the current history's, even
// below an older one's position.
TEST(CheckpointTest, TheCheckpointWrittenLastWinsOverAHigherOlderOne) {
  Checkpoint before_restore{"s", Pos(900, 0), "", 1700000000000};
  Checkpoint after_restore{"s", Pos(500, 1), "", 1700000090000};
  std::vector<CommittedOffset> offsets = {
      Offset("orders", 0, before_restore),
      Offset("payments", 0, after_restore),
  };
  auto newest = NewestCheckpoint(offsets, "s", "g");
  ASSERT_TRUE(newest.ok()) << newest.status();
  EXPECT_EQ((*newest)->position, Pos(500, 1));
}

TEST(CheckpointTest, AnotherSourcesCheckpointIsAnErrorNotASkip) {
  // Two sources sharing one transactional id (and so one group): whatever
  // the positions, outboxd refuses rather than skip by another's position.
  std::vector<CommittedOffset> offsets = {
      Offset("orders", 0, {"mine", Pos(100, 0)}),
      Offset("shared", 0, {"theirs", Pos(1, 0)}),
  };
  auto newest = NewestCheckpoint(offsets, "mine", "g");
  EXPECT_TRUE(absl::IsFailedPrecondition(newest.status())) << newest.status();
  EXPECT_NE(newest.status().message().find("theirs"), std::string::npos);
}

TEST(CheckpointTest, AForeignOffsetInTheGroupIsAnError) {
  std::vector<CommittedOffset> offsets = {
      Offset("orders", 0, {"mine", Pos(100, 0)}),
      CommittedOffset{"orders", 1, 42, ""},  // a consumer committed here
  };
  EXPECT_TRUE(absl::IsFailedPrecondition(
      NewestCheckpoint(offsets, "mine", "g").status()));
}

}  // namespace
}  // namespace outboxd
