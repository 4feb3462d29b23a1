#include "pipeline/reconnect_backoff.h"

#include "gtest/gtest.h"

namespace outboxd {
namespace {

TEST(ReconnectBackoffTest, DoublesWithJitterUpToTheCap) {
  ReconnectOptions o;
  o.initial_backoff = absl::Milliseconds(100);
  o.max_backoff = absl::Seconds(1);
  ReconnectBackoff backoff(o, /*seed=*/7);
  absl::Duration ceiling = absl::Milliseconds(100);
  for (int i = 0; i < 20; ++i) {
    absl::Duration d = backoff.Next();
    EXPECT_GE(d, ceiling / 2) << i;
    EXPECT_LE(d, ceiling) << i;
    ceiling = std::min(ceiling * 2, absl::Seconds(1));
  }
}

TEST(ReconnectBackoffTest, ResetStartsOver) {
  ReconnectOptions o;
  o.initial_backoff = absl::Milliseconds(10);
  o.max_backoff = absl::Seconds(10);
  ReconnectBackoff backoff(o, 1);
  for (int i = 0; i < 8; ++i) backoff.Next();
  backoff.Reset();
  EXPECT_LE(backoff.Next(), absl::Milliseconds(10));
}

TEST(ReconnectBackoffTest, JitterSpreadsStandbys) {
  ReconnectOptions o;
  o.initial_backoff = absl::Seconds(1);
  o.max_backoff = absl::Seconds(1);
  ReconnectBackoff a(o, 1), b(o, 2);
  int different = 0;
  for (int i = 0; i < 10; ++i) different += a.Next() != b.Next();
  EXPECT_GT(different, 5);
}

}  // namespace
}  // namespace outboxd
