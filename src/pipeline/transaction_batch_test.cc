#include "pipeline/transaction_batch.h"

#include "gtest/gtest.h"

namespace outboxd {
namespace {

EventPosition Pos(uint64_t lsn, uint32_t index) {
  return EventPosition{Lsn(lsn), index};
}

TransactionBatchOptions Options() {
  TransactionBatchOptions o;
  o.interval = absl::Milliseconds(100);
  o.max_events = 3;
  o.split_events = 5;
  return o;
}

const absl::Time kT0 = absl::FromUnixSeconds(1000);

TEST(TransactionBatchTest, EmptyOrClosedIsNeverDue) {
  TransactionBatch b(Options());
  EXPECT_FALSE(b.open());
  EXPECT_FALSE(b.CommitDue(kT0 + absl::Hours(1), true));
  EXPECT_EQ(b.Deadline(), absl::InfiniteFuture());
  b.Began(kT0);
  EXPECT_TRUE(b.open());
  // Begun but nothing produced: nothing to commit yet.
  EXPECT_FALSE(b.CommitDue(kT0 + absl::Hours(1), true));
}

TEST(TransactionBatchTest, DueByAgeOnlyAtAPostgresCommitBoundary) {
  TransactionBatch b(Options());
  b.Began(kT0);
  b.Produced(7, Pos(100, 0), 0, "t");
  EXPECT_EQ(b.Deadline(), kT0 + absl::Milliseconds(100));
  EXPECT_FALSE(b.CommitDue(kT0 + absl::Milliseconds(99), true));
  // Old enough, but the PostgreSQL transaction is half read: wait for it.
  EXPECT_FALSE(b.CommitDue(kT0 + absl::Milliseconds(100), false));
  EXPECT_TRUE(b.CommitDue(kT0 + absl::Milliseconds(100), true));
}

TEST(TransactionBatchTest, DueBySizeAtABoundary) {
  TransactionBatch b(Options());
  b.Began(kT0);
  b.Produced(1, Pos(100, 0), 0, "t");
  b.Produced(2, Pos(100, 1), 0, "t");
  EXPECT_FALSE(b.CommitDue(kT0, true));
  b.Produced(3, Pos(200, 0), 0, "t");
  EXPECT_FALSE(b.CommitDue(kT0, false));
  EXPECT_TRUE(b.CommitDue(kT0, true));
}

TEST(TransactionBatchTest, AHugePostgresTransactionIsSplit) {
  TransactionBatch b(Options());
  b.Began(kT0);
  for (uint32_t i = 0; i < 4; ++i) b.Produced(i, Pos(100, i), 0, "t");
  EXPECT_FALSE(b.CommitDue(kT0, false));
  b.Produced(4, Pos(100, 4), 0, "t");
  // split_events reached in the middle of one PostgreSQL transaction.
  EXPECT_TRUE(b.CommitDue(kT0, false));
  // The checkpoint is the last event, mid transaction: (100, 4).
  EXPECT_EQ(b.last_position(), Pos(100, 4));
}

TEST(TransactionBatchTest, CommittedEventsAreAcknowledgedWithTheLastPosition) {
  TransactionBatch b(Options());
  b.Began(kT0);
  b.Produced(10, Pos(100, 0), 0, "orders");
  b.Produced(11, Pos(100, 1), 0, "outbox.dlq");
  b.Produced(13, Pos(300, 0), 0, "orders");
  EXPECT_EQ(b.size(), 3u);
  EXPECT_EQ(b.first_topic(), "orders");
  EXPECT_EQ(b.last_position(), Pos(300, 0));
  std::vector<uint64_t> committed = b.TakeCommitted();
  EXPECT_EQ(committed, (std::vector<uint64_t>{10, 11, 13}));
  EXPECT_FALSE(b.open());
  EXPECT_EQ(b.size(), 0u);
  // The next transaction starts empty.
  b.Began(kT0 + absl::Seconds(1));
  EXPECT_TRUE(b.TakeCommitted().empty());
}

TEST(TransactionBatchTest, AbortedEventsAreNeverAcknowledged) {
  TransactionBatch b(Options());
  b.Began(kT0);
  b.Produced(1, Pos(100, 0), 0, "t");
  b.Aborted();
  EXPECT_FALSE(b.open());
  EXPECT_EQ(b.size(), 0u);
  b.Began(kT0);
  b.Produced(2, Pos(200, 0), 0, "u");
  EXPECT_EQ(b.first_topic(), "u");
  EXPECT_EQ(b.TakeCommitted(), (std::vector<uint64_t>{2}));
}

}  // namespace
}  // namespace outboxd
