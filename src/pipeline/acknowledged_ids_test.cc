#include "pipeline/acknowledged_ids.h"

#include "absl/strings/str_cat.h"
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

TEST(AcknowledgedIdsTest, ContainsEachFindsIdsOfEveryBucketInAnyOrder) {
  AcknowledgedIds ids(absl::Seconds(1));
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  for (int i = 0; i < 100; ++i) {
    ids.Add(AcknowledgedIds::Hash(absl::StrCat("e", i)),
            t0 + absl::Milliseconds(100 * i));  // 10 buckets
  }
  // In time order, backwards, jumping between the oldest and the newest
  // bucket, and with ids that were never added in between.
  std::vector<uint64_t> asked;
  std::vector<bool> expected;
  for (int i : {0, 1, 55, 56, 99, 0, 98, 12, 11, 10, 9, 200, 50, 49, 201}) {
    asked.push_back(AcknowledgedIds::Hash(absl::StrCat("e", i)));
    expected.push_back(i < 100);
  }
  EXPECT_EQ(ids.ContainsEach(asked), expected);
  for (size_t k = 0; k < asked.size(); ++k) {
    EXPECT_EQ(ids.Contains(asked[k]), expected[k]) << k;
  }
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
