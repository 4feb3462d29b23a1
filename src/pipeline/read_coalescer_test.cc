#include "pipeline/read_coalescer.h"

#include "gtest/gtest.h"

namespace outboxd {
namespace {

// Feeds `per_second` transactions a second, in wakeups 1 ms apart, for
// `span`, starting at `t`; returns the end.
absl::Time Feed(ReadCoalescer& c, absl::Time t, int per_second,
                absl::Duration span) {
  const absl::Time end = t + span;
  double owed = 0;
  for (; t < end; t += absl::Milliseconds(1)) {
    owed += per_second / 1000.0;
    const int64_t n = static_cast<int64_t>(owed);
    owed -= n;
    c.Observe(t, n);
  }
  return t;
}

TEST(ReadCoalescerTest, DoesNotWaitBeforeItKnowsTheRate) {
  ReadCoalescer c(absl::Milliseconds(5));
  EXPECT_EQ(c.Window(), absl::ZeroDuration());
  c.Observe(absl::UnixEpoch(), 1);
  EXPECT_EQ(c.Window(), absl::ZeroDuration());
}

TEST(ReadCoalescerTest, GrowsWithTheRateUpToTheMaximum) {
  ReadCoalescer c(absl::Milliseconds(5));
  absl::Time t = absl::UnixEpoch();
  t = Feed(c, t, 1500, absl::Milliseconds(300));
  EXPECT_NEAR(c.rate(), 1500, 100);
  EXPECT_EQ(c.Window(), absl::ZeroDuration());  // below kMinRate
  t = Feed(c, t, 3000, absl::Milliseconds(300));
  EXPECT_NEAR(c.rate(), 3000, 100);
  EXPECT_NEAR(absl::ToDoubleMilliseconds(c.Window()), 3.0, 0.1);
  t = Feed(c, t, 20000, absl::Milliseconds(300));
  EXPECT_EQ(c.Window(), absl::Milliseconds(5));  // capped
  // The traffic falls again: so does the wait, and below kMinRate it ends.
  t = Feed(c, t, 2500, absl::Milliseconds(300));
  EXPECT_NEAR(absl::ToDoubleMilliseconds(c.Window()), 2.5, 0.1);
  Feed(c, t, 1000, absl::Milliseconds(300));
  EXPECT_EQ(c.Window(), absl::ZeroDuration());
}

TEST(ReadCoalescerTest, AQuietSpellEndsTheWait) {
  ReadCoalescer c(absl::Milliseconds(5));
  absl::Time t = Feed(c, absl::UnixEpoch(), 20000, absl::Milliseconds(300));
  ASSERT_EQ(c.Window(), absl::Milliseconds(5));
  // One transaction a minute later: the span it closes had almost none.
  c.Observe(t + absl::Minutes(1), 1);
  EXPECT_EQ(c.Window(), absl::ZeroDuration());
}

TEST(ReadCoalescerTest, WithoutAMinimumRateItWaitsTheShortestWindowAtOnce) {
  ReadCoalescer c(absl::Milliseconds(5), 0);
  EXPECT_EQ(c.Window(), ReadCoalescer::kMinWindow);
}

TEST(ReadCoalescerTest, TheMaximumCapsEvenASmallWindow) {
  ReadCoalescer c(absl::Microseconds(300));
  Feed(c, absl::UnixEpoch(), 5000, absl::Milliseconds(300));
  EXPECT_EQ(c.Window(), absl::Microseconds(300));
}

TEST(ReadCoalescerTest, ZeroNeverWaits) {
  ReadCoalescer c(absl::ZeroDuration());
  Feed(c, absl::UnixEpoch(), 20000, absl::Milliseconds(300));
  EXPECT_EQ(c.Window(), absl::ZeroDuration());
}

}  // namespace
}  // namespace outboxd
