// Crash faults (ctest label `fault`): outboxd is SIGKILLed at 10 random
// moments while 100,000 events are inserted at a steady rate, restarted each
// time, and everything is read back by an independent consumer. Zero events
// may be lost; the duplicates are counted (at-least-once). A smaller run (3
// SIGKILLs over 20,000 events) is the version matrix's crash case
// (crash_pg16 .. _pg18).
#include "tests/integration/fault_fixture.h"

namespace outboxd::testing {
namespace {

constexpr int kBatch = 1000;                                   // rows per tx
constexpr absl::Duration kInterval = absl::Milliseconds(500);  // per tx

class CrashTest : public FaultTest {
 protected:
  void RunCrashes(const std::vector<std::string>& extra, uint32_t seed,
                  const char* mode, size_t* duplicates, int events = 100000,
                  int kills = 10) {
    const std::string topic = prefix_ + "crash";
    std::vector<std::string> args = extra;
    args.push_back("--topic=" + topic);
    StartOutboxd(args);

    // Kill moments over the insert period, at least 1 s apart.
    const double period = absl::ToDoubleSeconds(kInterval) * (events / kBatch);
    const std::vector<double> moments =
        KillMoments(seed, period, kills, /*spacing_s=*/1.0);

    Inserter inserter(ConnInfo(), events, kBatch, kInterval);
    const absl::Time start = absl::Now();
    inserter.Start();
    KillAndRestartAt(start, moments,
                     [&] { StartOutboxd(args, /*wait_streaming=*/false); });
    inserter.Join();
    ASSERT_EQ(inserter.written(), events) << inserter.error();
    const double insert_seconds = absl::ToDoubleSeconds(absl::Now() - start);

    // Everything written is confirmed once the last outboxd caught up.
    Lsn end = CurrentWalLsn();
    ASSERT_TRUE(WaitConfirmed(end, absl::Seconds(180)))
        << "confirmed " << ConfirmedFlush() << " of " << end << "\n"
        << Log(outboxd_.size() - 1);
    auto records = Read(topic, events, absl::Seconds(180), absl::Seconds(2));
    Tally t = Count(records);
    std::printf(
        "[ measure ] crash %s: %zu events, %d SIGKILLs over %.1f s: %zu "
        "records read, %zu lost, %zu duplicates\n",
        mode, t.expected, kills, insert_seconds, t.received, t.lost,
        t.duplicates);
    EXPECT_EQ(t.expected, static_cast<size_t>(events));
    EXPECT_EQ(t.lost, 0u);
    *duplicates = t.duplicates;

    // Per aggregate, first copies arrive in commit order: (outbox.lsn,
    // outbox.index) of the distinct events increases along each partition.
    EXPECT_EQ(OutOfOrderPositions(records, /*first_copies_only=*/true), 0u);
  }
};

TEST_F(CrashTest, AtLeastOnceLosesNothing) {
  size_t duplicates = 0;
  RunCrashes({}, /*seed=*/20261123, "at-least-once", &duplicates);
}

// The version matrix's crash case: the same, smaller.
TEST_F(CrashTest, ThreeSigkillsLoseNothing) {
  size_t duplicates = 0;
  RunCrashes({}, /*seed=*/20261207, "at-least-once, 3 SIGKILLs", &duplicates,
             /*events=*/20000, /*kills=*/3);
}

// --delivery=exactly-once needs Apache Kafka's transactions: its crash case
// is exactly_once_test's TenSigkillsUnderLoadLoseAndDuplicateNothing.

}  // namespace
}  // namespace outboxd::testing
