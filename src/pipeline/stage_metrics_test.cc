// Lag by stage and the stall alarm, with the clock given: no publisher, no
// sleeping.
#include "pipeline/stage_metrics.h"

#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"

namespace outboxd {
namespace {

using metrics::Stage;
using metrics::StallReason;
using ::testing::HasSubstr;

// Commit times in unix ms; `At(s)` is that many seconds after kT0.
constexpr int64_t kT0 = 1700000000000;
absl::Time At(double seconds) {
  return absl::FromUnixMillis(kT0) + absl::Seconds(seconds);
}
int64_t Ms(double seconds) {
  return kT0 + static_cast<int64_t>(seconds * 1000);
}

class StageLagTest : public ::testing::Test {
 protected:
  double Lag(Stage s) { return m_.StageLag(s).Value(); }
  double LsnOf(Stage s) { return m_.StageLsn(s).Value(); }

  metrics::OutboxdMetrics process_;
  metrics::SourceMetrics& m_ = process_.ForSource();
  StageLag lag_{m_};
};

TEST_F(StageLagTest, NothingYetIsNoLag) {
  lag_.Update(At(5), 0, false, SourcePosition(0));
  for (Stage s : {Stage::kReceived, Stage::kProduced, Stage::kAcknowledged,
                  Stage::kConfirmed}) {
    EXPECT_EQ(Lag(s), 0) << metrics::kStageNames[static_cast<int>(s)];
  }
}

TEST_F(StageLagTest, EachStageLagsByItsNewestEvent) {
  lag_.ServerWalEnd(500);
  lag_.Received(100, Ms(0));
  lag_.Produced(100, Ms(0));
  lag_.Committed(SourcePosition(150));
  lag_.Received(200, Ms(1));
  lag_.Produced(200, Ms(1));
  lag_.Committed(SourcePosition(250));
  lag_.Received(300, Ms(2));  // waits for room
  lag_.Committed(SourcePosition(350));
  lag_.Acknowledged(100, Ms(0));
  // 200 and 300 in flight, 300 pending, 150 confirmed.
  lag_.Update(At(10), 2, /*pending=*/true, SourcePosition(150));
  EXPECT_EQ(LsnOf(Stage::kWal), 500);
  EXPECT_EQ(LsnOf(Stage::kReceived), 300);
  EXPECT_EQ(LsnOf(Stage::kProduced), 200);
  EXPECT_EQ(LsnOf(Stage::kAcknowledged), 100);
  EXPECT_EQ(LsnOf(Stage::kConfirmed), 150);
  EXPECT_EQ(Lag(Stage::kReceived), 8);  // the source has more
  EXPECT_EQ(Lag(Stage::kProduced), 9);
  EXPECT_EQ(Lag(Stage::kAcknowledged), 10);
  EXPECT_EQ(Lag(Stage::kConfirmed), 10);

  // Everything through: every lag is 0.
  lag_.SourceCaughtUp();
  lag_.Produced(300, Ms(2));
  lag_.Acknowledged(300, Ms(2));
  lag_.Acknowledged(200, Ms(1));  // out of order: the newest stays
  lag_.Update(At(11), 0, false, SourcePosition(350));
  EXPECT_EQ(LsnOf(Stage::kAcknowledged), 300);
  EXPECT_EQ(LsnOf(Stage::kConfirmed), 350);
  for (Stage s : {Stage::kReceived, Stage::kProduced, Stage::kAcknowledged,
                  Stage::kConfirmed}) {
    EXPECT_EQ(Lag(s), 0) << metrics::kStageNames[static_cast<int>(s)];
  }
}

// An event after an idle hour: the lag counts from that event's commit, not
// from the previous event's an hour earlier.
TEST_F(StageLagTest, AfterAnIdleTimeTheLagStartsAtTheNextEvent) {
  lag_.Received(100, Ms(0));
  lag_.Produced(100, Ms(0));
  lag_.Acknowledged(100, Ms(0));
  lag_.Committed(SourcePosition(150));
  lag_.SourceCaughtUp();
  lag_.Update(At(1), 0, false, SourcePosition(150));
  lag_.Received(200, Ms(3600));
  lag_.Produced(200, Ms(3600));
  lag_.Committed(SourcePosition(250));
  lag_.Update(At(3602), 1, false, SourcePosition(150));
  EXPECT_EQ(Lag(Stage::kProduced), 0);
  EXPECT_EQ(Lag(Stage::kAcknowledged), 2);
  EXPECT_EQ(Lag(Stage::kConfirmed), 2);
  // Still not acknowledged a minute later: the lag grows.
  lag_.Update(At(3660), 1, false, SourcePosition(150));
  EXPECT_EQ(Lag(Stage::kAcknowledged), 60);
}

// A transaction without events confirms nothing to wait for.
TEST_F(StageLagTest, TransactionsWithoutEventsAreNotAwaited) {
  lag_.Committed(SourcePosition(50));
  lag_.Update(At(1), 0, false, SourcePosition(0));
  EXPECT_EQ(Lag(Stage::kConfirmed), 0);
}

// Captures what spdlog's default logger writes while it lives.
class LogCapture {
 public:
  LogCapture() : previous_(spdlog::default_logger()) {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out_);
    sink->set_pattern("%l %v");
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("t", sink));
  }
  ~LogCapture() { spdlog::set_default_logger(previous_); }
  std::vector<std::string> Lines() const {
    return absl::StrSplit(out_.str(), '\n', absl::SkipEmpty());
  }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::logger> previous_;
};

TEST(StallAlarmTest, StallsOnceAfterTheTimeoutAndClears) {
  metrics::OutboxdMetrics process;
  metrics::SourceMetrics& m = process.ForSource();
  m.streaming->Set(1);
  process.kafka_brokers_up->Set(1);
  StallAlarm alarm(m, absl::Seconds(60));
  LogCapture log;
  const auto reason = StallReason::kUnacknowledged;
  alarm.Update(At(0), 0, reason);  // idle
  alarm.Update(At(1), 3, reason);  // events pending since the last wakeup
  EXPECT_EQ(alarm.Deadline(3), At(60));
  alarm.Update(At(59), 3, reason);
  EXPECT_FALSE(alarm.stalled());
  EXPECT_TRUE(process.Ready());
  alarm.Update(At(60), 3, reason);
  EXPECT_TRUE(alarm.stalled());
  EXPECT_EQ(m.Stalled(reason).Value(), 1);
  EXPECT_THAT(process.NotReadyReason(), HasSubstr("stalled (unacknowledged)"));
  EXPECT_EQ(alarm.Deadline(3), absl::InfiniteFuture());
  for (int s = 61; s < 200; ++s) alarm.Update(At(s), 3, reason);
  alarm.Acknowledged();
  alarm.Update(At(200), 2, reason);
  EXPECT_FALSE(alarm.stalled());
  EXPECT_EQ(m.Stalled(reason).Value(), 0);
  EXPECT_TRUE(process.Ready());
  // One warning when it stalled, one line when it cleared.
  std::vector<std::string> lines = log.Lines();
  ASSERT_EQ(lines.size(), 2u) << absl::StrJoin(lines, "\n");
  EXPECT_THAT(lines[0], HasSubstr("warning stalled: 3 events pending "
                                  "(unacknowledged)"));
  EXPECT_THAT(lines[1], HasSubstr("info no longer stalled"));
}

// With several sources (--databases) the lines name the database.
TEST(StallAlarmTest, TheLinesNameTheSource) {
  metrics::OutboxdMetrics process;
  metrics::SourceMetrics& m = process.ForSource();
  StallAlarm alarm(m, absl::Seconds(10), "[db_a] ");
  LogCapture log;
  alarm.Update(At(0), 2, StallReason::kUnacknowledged);
  alarm.Update(At(10), 2, StallReason::kUnacknowledged);
  alarm.Update(At(11), 0, StallReason::kUnacknowledged);
  std::vector<std::string> lines = log.Lines();
  ASSERT_EQ(lines.size(), 2u) << absl::StrJoin(lines, "\n");
  EXPECT_THAT(lines[0], HasSubstr("warning [db_a] stalled: 2 events pending"));
  EXPECT_THAT(lines[1], HasSubstr("info [db_a] no longer stalled"));
}

TEST(StallAlarmTest, AcknowledgementsKeepItFromStalling) {
  metrics::OutboxdMetrics process;
  metrics::SourceMetrics& m = process.ForSource();
  StallAlarm alarm(m, absl::Seconds(10));
  alarm.Update(At(0), 0, StallReason::kUnacknowledged);
  for (int s = 5; s <= 100; s += 5) {
    alarm.Acknowledged();
    alarm.Update(At(s), 50, StallReason::kUnacknowledged);
    EXPECT_FALSE(alarm.stalled()) << s;
  }
}

TEST(StallAlarmTest, TheReasonFollowsWhatTheEventsWaitFor) {
  metrics::OutboxdMetrics process;
  metrics::SourceMetrics& m = process.ForSource();
  StallAlarm alarm(m, absl::Seconds(10));
  alarm.Update(At(0), 1, StallReason::kQueueFull);
  alarm.Update(At(10), 1, StallReason::kQueueFull);
  EXPECT_EQ(m.Stalled(StallReason::kQueueFull).Value(), 1);
  alarm.Update(At(11), 1, StallReason::kTopicMetadata);
  EXPECT_EQ(m.Stalled(StallReason::kQueueFull).Value(), 0);
  EXPECT_EQ(m.Stalled(StallReason::kTopicMetadata).Value(), 1);
  // Nothing pending any more: cleared.
  alarm.Update(At(12), 0, StallReason::kUnacknowledged);
  EXPECT_EQ(m.Stalled(StallReason::kTopicMetadata).Value(), 0);
}

TEST(StallAlarmTest, ZeroTimeoutNeverStalls) {
  metrics::OutboxdMetrics process;
  metrics::SourceMetrics& m = process.ForSource();
  StallAlarm alarm(m, absl::ZeroDuration());
  alarm.Update(At(0), 0, StallReason::kUnacknowledged);
  alarm.Update(At(1000), 5, StallReason::kUnacknowledged);
  EXPECT_FALSE(alarm.stalled());
  EXPECT_EQ(alarm.Deadline(5), absl::InfiniteFuture());
}

// librdkafka's totals become counters that only grow.
TEST(ProducerStatsToMetricsTest, CountsRequestsAndRecordsSent) {
  metrics::OutboxdMetrics m;
  auto on_stats = ProducerStatsToMetrics(m);
  ProducerStats stats;
  stats.brokers_up = 2;
  stats.produce_requests = 10;
  stats.records_sent = 250;
  on_stats(stats);
  EXPECT_EQ(m.kafka_brokers_up->Value(), 2);
  EXPECT_EQ(m.kafka_requests->Value(), 10);
  EXPECT_EQ(m.kafka_records_sent->Value(), 250);
  stats.brokers_up = 1;
  stats.produce_requests = 14;
  stats.records_sent = 400;
  auto copy = on_stats;  // the same totals
  copy(stats);
  EXPECT_EQ(m.kafka_brokers_up->Value(), 1);
  EXPECT_EQ(m.kafka_requests->Value(), 14);
  EXPECT_EQ(m.kafka_records_sent->Value(), 400);
  stats.produce_requests = 2;  // a broker's counts went away
  on_stats(stats);
  EXPECT_EQ(m.kafka_requests->Value(), 14);
}

}  // namespace
}  // namespace outboxd
