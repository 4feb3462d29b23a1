#include "pipeline/acknowledged_ids.h"

#include "gtest/gtest.h"

namespace outboxd {
namespace {

TEST(AcknowledgedIdsTest, KeepsWhatWasAddedUntilPrunedPastIt) {
  AcknowledgedIds ids(absl::Seconds(10));
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  ids.Add(AcknowledgedIds::Hash("a"), t0);
  ids.Add(AcknowledgedIds::Hash("b"), t0 + absl::Seconds(15));
  ids.Add(AcknowledgedIds::Hash("c"), t0 + absl::Seconds(30));
  EXPECT_TRUE(ids.Contains(AcknowledgedIds::Hash("a")));
  EXPECT_FALSE(ids.Contains(AcknowledgedIds::Hash("z")));
  EXPECT_EQ(ids.ContainsEach(
                {AcknowledgedIds::Hash("b"), AcknowledgedIds::Hash("z")}),
            (std::vector<bool>{true, false}));
  // Only a bucket whose every id was added before the time goes.
  ids.PruneBefore(t0 + absl::Seconds(12));
  EXPECT_TRUE(ids.Contains(AcknowledgedIds::Hash("a")));
  ids.PruneBefore(t0 + absl::Seconds(15));
  EXPECT_FALSE(ids.Contains(AcknowledgedIds::Hash("a")));
  EXPECT_TRUE(ids.Contains(AcknowledgedIds::Hash("b")));
  // The newest bucket stays, however old.
  ids.PruneBefore(t0 + absl::Hours(1));
  EXPECT_TRUE(ids.Contains(AcknowledgedIds::Hash("c")));
  EXPECT_EQ(ids.size(), 1u);
}

TEST(AcknowledgedIdsTest, StreamingSinceIsTheFirstCall) {
  AcknowledgedIds ids;
  EXPECT_EQ(ids.streaming_since(), absl::InfiniteFuture());
  ids.SetStreaming(absl::FromUnixSeconds(5));
  ids.SetStreaming(absl::FromUnixSeconds(9));
  EXPECT_EQ(ids.streaming_since(), absl::FromUnixSeconds(5));
}

}  // namespace
}  // namespace outboxd
