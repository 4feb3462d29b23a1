// The causal-deferral rules, with a fake host and a fake clock: no broker,
// no database.
#include "consumer/dependency_gate.h"

#include <atomic>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace outboxd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// Applies into `applied` (ids), records every call as a line.
class FakeHost : public DependencyGate::Host {
 public:
  absl::StatusOr<bool> DependenciesApplied(
      const std::vector<std::string>& ids) override {
    ++queries;
    if (!database.ok()) return database;
    for (const std::string& id : ids) {
      if (!applied.contains(id)) return false;
    }
    return true;
  }
  absl::Status Apply(const InboxRecord& r) override {
    calls.push_back(absl::StrCat("apply ", r.event_id));
    applied.insert(r.event_id);
    return absl::OkStatus();
  }
  absl::Status DeadLetter(const InboxRecord& r,
                          const std::string& why) override {
    calls.push_back(absl::StrCat("dead-letter ", r.event_id));
    last_why = why;
    return absl::OkStatus();
  }
  void Pause(const TopicPartition& tp) override {
    calls.push_back(absl::StrCat("pause ", TopicPartitionName(tp)));
  }
  void Resume(const TopicPartition& tp) override {
    calls.push_back(absl::StrCat("resume ", TopicPartitionName(tp)));
  }

  std::set<std::string> applied;
  std::vector<std::string> calls;
  std::string last_why;
  absl::Status database;
  int queries = 0;
};

InboxRecord Record(int32_t partition, int64_t offset, std::string id,
                   std::vector<std::string> depends_on = {}) {
  InboxRecord r;
  r.topic = "t";
  r.partition = partition;
  r.offset = offset;
  r.event_id = std::move(id);
  r.depends_on = std::move(depends_on);
  return r;
}

class DependencyGateTest : public ::testing::Test {
 protected:
  void MakeGate(DependencyGate::Options options = {}) {
    options.dependency_wait = absl::Seconds(30);
    gate_ = std::make_unique<DependencyGate>(options, &host_, &stats_);
    gate_->Assign({"t", 0}, 0);
    gate_->Assign({"t", 1}, 0);
  }
  void SetUp() override { MakeGate(); }

  absl::Status Serve(absl::Time now) { return gate_->ServeWaiting(now, stop_); }

  FakeHost host_;
  InboxStats stats_;
  std::atomic<bool> stop_{false};
  std::unique_ptr<DependencyGate> gate_;
  const absl::Time t0_ = absl::FromUnixSeconds(1000);
};

TEST_F(DependencyGateTest, RecordWithoutDependenciesIsAppliedAtOnce) {
  ASSERT_TRUE(gate_->Offer(Record(0, 0, "a"), t0_).ok());
  EXPECT_THAT(host_.calls, ElementsAre("apply a"));
  EXPECT_EQ(host_.queries, 0);  // nothing to ask
  EXPECT_EQ(gate_->waiting(), 0u);
}

TEST_F(DependencyGateTest, WaitingRecordBlocksOnlyItsOwnPartition) {
  ASSERT_TRUE(gate_->Offer(Record(0, 0, "b", {"a"}), t0_).ok());
  ASSERT_TRUE(gate_->Offer(Record(0, 1, "c"), t0_).ok());  // behind b
  ASSERT_TRUE(gate_->Offer(Record(1, 0, "x"), t0_).ok());  // other partition
  EXPECT_THAT(host_.calls, ElementsAre("apply x"));
  EXPECT_EQ(gate_->waiting(), 2u);
  EXPECT_EQ(stats_.deferred, 1u);  // c only queues, it does not wait

  // "a" arrives on partition 1: b, then c, go, in their order.
  ASSERT_TRUE(gate_->Offer(Record(1, 1, "a"), t0_).ok());
  gate_->NoteProgress();
  ASSERT_TRUE(Serve(t0_ + absl::Milliseconds(1)).ok());
  EXPECT_THAT(host_.calls,
              ElementsAre("apply x", "apply a", "apply b", "apply c"));
  EXPECT_EQ(gate_->waiting(), 0u);
}

TEST_F(DependencyGateTest, EveryDependencyMustBeApplied) {
  host_.applied = {"a"};
  ASSERT_TRUE(gate_->Offer(Record(0, 0, "c", {"a", "b"}), t0_).ok());
  EXPECT_THAT(host_.calls, IsEmpty());
  host_.applied.insert("b");
  ASSERT_TRUE(Serve(t0_ + absl::Seconds(1)).ok());
  EXPECT_THAT(host_.calls, ElementsAre("apply c"));
}

TEST_F(DependencyGateTest, RechecksAreThrottledUnlessSomethingWasApplied) {
  ASSERT_TRUE(gate_->Offer(Record(0, 0, "b", {"a"}), t0_).ok());
  ASSERT_TRUE(Serve(t0_).ok());
  int queries = host_.queries;
  ASSERT_TRUE(Serve(t0_ + absl::Milliseconds(10)).ok());  // within 50 ms
  EXPECT_EQ(host_.queries, queries);
  ASSERT_TRUE(Serve(t0_ + absl::Milliseconds(60)).ok());
  EXPECT_EQ(host_.queries, queries + 1);
  gate_->NoteProgress();
  ASSERT_TRUE(Serve(t0_ + absl::Milliseconds(61)).ok());
  EXPECT_EQ(host_.queries, queries + 2);
}

TEST_F(DependencyGateTest, AfterTheWaitItIsDeadLetteredAndThePartitionGoesOn) {
  ASSERT_TRUE(gate_->Offer(Record(0, 0, "b", {"a"}), t0_).ok());
  ASSERT_TRUE(gate_->Offer(Record(0, 1, "c"), t0_).ok());
  ASSERT_TRUE(Serve(t0_ + absl::Seconds(29)).ok());
  EXPECT_THAT(host_.calls, IsEmpty());
  ASSERT_TRUE(Serve(t0_ + absl::Seconds(30)).ok());
  EXPECT_THAT(host_.calls, ElementsAre("dead-letter b", "apply c"));
  EXPECT_THAT(host_.last_why, HasSubstr("not applied within 30s: a"));
  EXPECT_EQ(stats_.applied_without_dependencies, 0u);
}

TEST_F(DependencyGateTest, ProceedPolicyAppliesItAnywayAndCountsIt) {
  DependencyGate::Options o;
  o.on_missing_dependency = MissingDependencyPolicy::kProceed;
  MakeGate(o);
  ASSERT_TRUE(gate_->Offer(Record(0, 0, "b", {"a"}), t0_).ok());
  ASSERT_TRUE(Serve(t0_ + absl::Seconds(31)).ok());
  EXPECT_THAT(host_.calls, ElementsAre("apply b"));
  EXPECT_EQ(stats_.applied_without_dependencies, 1u);
}

TEST_F(DependencyGateTest, QueuedRecordWaitsItsOwnTimeOnceItIsTheHead) {
  ASSERT_TRUE(gate_->Offer(Record(0, 0, "b", {"a"}), t0_).ok());
  ASSERT_TRUE(gate_->Offer(Record(0, 1, "d", {"c"}), t0_).ok());
  ASSERT_TRUE(Serve(t0_ + absl::Seconds(30)).ok());
  // b gave up; d became the head now and waits from now on.
  EXPECT_THAT(host_.calls, ElementsAre("dead-letter b"));
  EXPECT_EQ(stats_.deferred, 2u);
  ASSERT_TRUE(Serve(t0_ + absl::Seconds(59)).ok());
  EXPECT_THAT(host_.calls, ElementsAre("dead-letter b"));
  ASSERT_TRUE(Serve(t0_ + absl::Seconds(60)).ok());
  EXPECT_THAT(host_.calls, ElementsAre("dead-letter b", "dead-letter d"));
}

TEST_F(DependencyGateTest, LongQueuePausesThePartitionShortOneResumesIt) {
  DependencyGate::Options o;
  o.max_deferred_per_partition = 4;
  MakeGate(o);
  ASSERT_TRUE(gate_->Offer(Record(0, 0, "w", {"a"}), t0_).ok());
  for (int i = 1; i < 4; ++i) {
    ASSERT_TRUE(gate_->Offer(Record(0, i, absl::StrCat("q", i)), t0_).ok());
  }
  EXPECT_THAT(host_.calls, ElementsAre("pause t[0]"));
  ASSERT_TRUE(gate_->Offer(Record(0, 4, "q4"), t0_).ok());  // paused once
  EXPECT_THAT(host_.calls, ElementsAre("pause t[0]"));
  host_.applied.insert("a");
  gate_->NoteProgress();
  ASSERT_TRUE(Serve(t0_).ok());
  EXPECT_EQ(host_.calls.back(), "resume t[0]");
  EXPECT_EQ(host_.calls.size(), 1u + 5u + 1u);
}

TEST_F(DependencyGateTest, OffsetsAlreadyTakenAndForeignPartitionsAreIgnored) {
  gate_->Assign({"t", 0}, 5);
  ASSERT_TRUE(gate_->Offer(Record(0, 4, "old"), t0_).ok());  // below start
  ASSERT_TRUE(gate_->Offer(Record(0, 5, "a"), t0_).ok());
  ASSERT_TRUE(gate_->Offer(Record(0, 5, "a-again"), t0_).ok());  // redelivery
  ASSERT_TRUE(gate_->Offer(Record(7, 0, "not-ours"), t0_).ok());
  EXPECT_THAT(host_.calls, ElementsAre("apply a"));
}

TEST_F(DependencyGateTest, RevokeDropsTheQueueAndLaterRecordsOfIt) {
  ASSERT_TRUE(gate_->Offer(Record(0, 0, "b", {"a"}), t0_).ok());
  ASSERT_TRUE(gate_->Offer(Record(0, 1, "c"), t0_).ok());
  gate_->Revoke({"t", 0});
  EXPECT_EQ(gate_->waiting(), 0u);
  ASSERT_TRUE(gate_->Offer(Record(0, 2, "d"), t0_).ok());
  host_.applied.insert("a");
  gate_->NoteProgress();
  ASSERT_TRUE(Serve(t0_).ok());
  EXPECT_THAT(host_.calls, IsEmpty());
  // Assigned again (from the stored offset): taken from there.
  gate_->Assign({"t", 0}, 0);
  ASSERT_TRUE(gate_->Offer(Record(0, 0, "b", {"a"}), t0_).ok());
  EXPECT_THAT(host_.calls, ElementsAre("apply b"));
}

TEST_F(DependencyGateTest, DatabaseErrorIsReturnedAndTheRecordKept) {
  ASSERT_TRUE(gate_->Offer(Record(0, 0, "b", {"a"}), t0_).ok());
  host_.database = absl::UnavailableError("database down");
  gate_->NoteProgress();
  EXPECT_TRUE(absl::IsUnavailable(Serve(t0_ + absl::Seconds(31))));
  EXPECT_TRUE(absl::IsUnavailable(gate_->Offer(Record(1, 0, "y", {"a"}), t0_)));
  EXPECT_THAT(host_.calls, IsEmpty());
  EXPECT_EQ(gate_->waiting(), 1u);
  host_.database = absl::OkStatus();
  host_.applied.insert("a");
  gate_->NoteProgress();
  ASSERT_TRUE(Serve(t0_ + absl::Seconds(32)).ok());
  // The refused offer may be made again: y was not taken.
  ASSERT_TRUE(gate_->Offer(Record(1, 0, "y", {"a"}), t0_).ok());
  EXPECT_THAT(host_.calls, ElementsAre("apply b", "apply y"));
}

TEST_F(DependencyGateTest, StopLeavesTheRestQueued) {
  ASSERT_TRUE(gate_->Offer(Record(0, 0, "b", {"a"}), t0_).ok());
  ASSERT_TRUE(gate_->Offer(Record(0, 1, "c"), t0_).ok());
  host_.applied.insert("a");
  stop_ = true;
  gate_->NoteProgress();
  ASSERT_TRUE(Serve(t0_).ok());
  EXPECT_THAT(host_.calls, IsEmpty());
  EXPECT_EQ(gate_->waiting(), 2u);
}

}  // namespace
}  // namespace outboxd
