#include "pipeline/exactly_once_filter.h"

#include <map>

#include "gtest/gtest.h"

namespace outboxd {
namespace {

class FakeSource : public PartitionInfoSource {
 public:
  absl::StatusOr<int32_t> PartitionCount(const std::string& topic) override {
    ++count_calls;
    if (!available) return absl::UnavailableError("down");
    return 4;
  }
  absl::StatusOr<std::optional<EventPosition>> LastPosition(
      const std::string& topic, int32_t partition) override {
    ++last_calls[{topic, partition}];
    if (!available) return absl::UnavailableError("down");
    auto it = last.find({topic, partition});
    if (it == last.end()) return std::optional<EventPosition>();
    return std::optional<EventPosition>(it->second);
  }
  bool available = true;
  int count_calls = 0;
  std::map<std::pair<std::string, int32_t>, EventPosition> last;
  std::map<std::pair<std::string, int32_t>, int> last_calls;
};

EventPosition Pos(uint64_t lsn, uint32_t index) {
  return EventPosition{Lsn(lsn), index};
}

TEST(Murmur2PartitionTest, MatchesJavaClientValues) {
  // Values of the Java client's Utils.murmur2 (toPositive % n), as listed in
  // librdkafka's rdmurmur2 unit test.
  EXPECT_EQ(Murmur2Partition("kafka", 1 << 30),
            static_cast<int32_t>(0xd067cf64u & 0x7fffffff) % (1 << 30));
  EXPECT_EQ(Murmur2Partition("", 1 << 30),
            static_cast<int32_t>(0x106e08d9u & 0x7fffffff) % (1 << 30));
  for (int n : {1, 3, 4, 7}) {
    int32_t p = Murmur2Partition("agg-42", n);
    EXPECT_GE(p, 0);
    EXPECT_LT(p, n);
    EXPECT_EQ(p, Murmur2Partition("agg-42", n));
  }
}

TEST(PositionFromHeadersTest, ParsesDecimalOnly) {
  EXPECT_EQ(PositionFromHeaders("123", "4"), Pos(123, 4));
  EXPECT_FALSE(PositionFromHeaders("", "4").has_value());
  EXPECT_FALSE(PositionFromHeaders("12x", "4").has_value());
  EXPECT_FALSE(PositionFromHeaders("12", "-1").has_value());
}

TEST(ExactlyOnceFilterTest, SkipsWhatThePartitionAlreadyHolds) {
  FakeSource source;
  const int32_t p = Murmur2Partition("k", 4);
  source.last[{"t", p}] = Pos(100, 2);
  ExactlyOnceFilter filter(&source);
  for (auto [pos, produce] : std::vector<std::pair<EventPosition, bool>>{
           {Pos(90, 7), false},
           {Pos(100, 1), false},
           {Pos(100, 2), false},
           {Pos(100, 3), true},
           {Pos(200, 0), true}}) {
    auto d = filter.Admit("t", "k", pos);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(d->partition, p);
    EXPECT_EQ(d->produce, produce) << pos.commit_lsn.value() << "#" << pos.index;
    if (d->produce) filter.Produced("t", d->partition, pos);
  }
  EXPECT_EQ(filter.skipped(), 3u);
  // Metadata and the last record are read once per topic / partition.
  EXPECT_EQ(source.count_calls, 1);
  EXPECT_EQ((source.last_calls[{"t", p}]), 1);
}

TEST(ExactlyOnceFilterTest, ProducedRaisesTheWatermark) {
  FakeSource source;
  ExactlyOnceFilter filter(&source);
  auto d = filter.Admit("t", "k", Pos(10, 0));
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(d->produce);  // empty partition
  filter.Produced("t", d->partition, Pos(10, 0));
  filter.Produced("t", d->partition, Pos(10, 1));
  // A resend after a reconnect: the same events again.
  EXPECT_FALSE(filter.Admit("t", "k", Pos(10, 0))->produce);
  EXPECT_FALSE(filter.Admit("t", "k", Pos(10, 1))->produce);
  EXPECT_TRUE(filter.Admit("t", "k", Pos(10, 2))->produce);
}

TEST(ExactlyOnceFilterTest, PartitionsAreIndependent) {
  FakeSource source;
  // Two keys on different partitions of 4.
  std::string a = "a", b;
  for (int i = 0; b.empty(); ++i) {
    std::string k = "key" + std::to_string(i);
    if (Murmur2Partition(k, 4) != Murmur2Partition(a, 4)) b = k;
  }
  source.last[{"t", Murmur2Partition(a, 4)}] = Pos(500, 0);
  ExactlyOnceFilter filter(&source);
  EXPECT_FALSE(filter.Admit("t", a, Pos(400, 0))->produce);
  EXPECT_TRUE(filter.Admit("t", b, Pos(400, 0))->produce);
  EXPECT_TRUE(filter.Admit("u", a, Pos(400, 0))->produce);  // other topic
}

TEST(ExactlyOnceFilterTest, UnavailableIsRetriedLater) {
  FakeSource source;
  source.available = false;
  ExactlyOnceFilter filter(&source);
  auto d = filter.Admit("t", "k", Pos(1, 0));
  EXPECT_TRUE(absl::IsUnavailable(d.status()));
  source.available = true;
  d = filter.Admit("t", "k", Pos(1, 0));
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(d->produce);
}

}  // namespace
}  // namespace outboxd
