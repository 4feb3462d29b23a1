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

// The window as a function of the rate: none below kMinRate, then in
// proportion to the rate, the maximum from kFullRate on and never more.
TEST(ReadCoalescerTest, WindowAtARate) {
  for (absl::Duration max : {absl::Milliseconds(5), absl::Milliseconds(10),
                             absl::Milliseconds(20)}) {
    const ReadCoalescer c(max);
    EXPECT_EQ(c.WindowAt(0), absl::ZeroDuration());
    EXPECT_EQ(c.WindowAt(1000), absl::ZeroDuration());
    EXPECT_EQ(c.WindowAt(1999), absl::ZeroDuration());
    EXPECT_EQ(c.WindowAt(2000), max * 0.4);
    EXPECT_EQ(c.WindowAt(3000), max * 0.6);
    absl::Duration last = absl::ZeroDuration();
    for (double rate = 2000; rate <= 100000; rate += 500) {
      const absl::Duration w = c.WindowAt(rate);
      EXPECT_GE(w, last) << rate;
      if (rate < ReadCoalescer::kFullRate) EXPECT_GT(w, last) << rate;
      EXPECT_LE(w, max) << rate;
      last = w;
    }
    EXPECT_EQ(c.WindowAt(ReadCoalescer::kFullRate), max);
    EXPECT_EQ(c.WindowAt(1e9), max);
  }
  // Today's default: 1 ms per 1,000 transactions/s.
  EXPECT_EQ(ReadCoalescer(absl::Milliseconds(5)).WindowAt(3000),
            absl::Milliseconds(3));
  EXPECT_EQ(ReadCoalescer(absl::ZeroDuration()).WindowAt(1e6),
            absl::ZeroDuration());
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
