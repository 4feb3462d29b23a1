// The slot monitor's gauges from a sample, and a database it cannot reach:
// logged once, retried, never fatal. No server needed (a closed port).
#include "upkeep/slot_monitor.h"

#include <memory>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"

namespace outboxd {
namespace {

double Status(metrics::SourceMetrics& m, const std::string& status) {
  for (int i = 0; i < metrics::kWalStatusCount; ++i) {
    if (status == metrics::kWalStatusNames[i]) {
      return m.slot_wal_status[i]->Value();
    }
  }
  ADD_FAILURE() << "no status " << status;
  return -1;
}

TEST(SlotMonitorTest, ASampleSetsTheRetainedBytesAndOneStatus) {
  metrics::OutboxdMetrics process;
  metrics::SourceMetrics& m = process.ForSource();
  ApplySlotSample({true, 123456, "reserved"}, m);
  EXPECT_EQ(m.slot_retained_wal_bytes->Value(), 123456);
  EXPECT_EQ(Status(m, "reserved"), 1);
  EXPECT_EQ(Status(m, "lost"), 0);
  // max_slot_wal_keep_size is near: the status moves, one at a time.
  ApplySlotSample({true, 999999, "unreserved"}, m);
  EXPECT_EQ(Status(m, "reserved"), 0);
  EXPECT_EQ(Status(m, "unreserved"), 1);
  // Invalidated: restart_lsn is NULL, nothing is retained.
  ApplySlotSample({true, std::nullopt, "lost"}, m);
  EXPECT_EQ(m.slot_retained_wal_bytes->Value(), 0);
  EXPECT_EQ(Status(m, "unreserved"), 0);
  EXPECT_EQ(Status(m, "lost"), 1);
  // No slot (yet, or dropped): every status 0.
  ApplySlotSample({}, m);
  for (const char* s : metrics::kWalStatusNames) EXPECT_EQ(Status(m, s), 0);
}

// 17+: 1 only for a failover slot that an active standby keeps in sync.
TEST(SlotMonitorTest, FailoverReadiness) {
  metrics::OutboxdMetrics process;
  metrics::SourceMetrics& m = process.ForSource();
  SlotSample ready{true, 100, "reserved", true, true};
  ApplySlotSample(ready, m);
  EXPECT_EQ(m.slot_failover_ready->Value(), 1);
  EXPECT_FALSE(NotReadyForFailover(ready));
  SlotSample no_standby{true, 100, "reserved", true, false};
  ApplySlotSample(no_standby, m);
  EXPECT_EQ(m.slot_failover_ready->Value(), 0);
  EXPECT_TRUE(NotReadyForFailover(no_standby));
  // Not a failover slot (SlotKeeper warns about it), or before 17: 0, and
  // no readiness warning.
  SlotSample plain{true, 100, "reserved", false, false};
  EXPECT_FALSE(NotReadyForFailover(plain));
  SlotSample old_server{true, 100, "reserved"};
  ApplySlotSample(old_server, m);
  EXPECT_EQ(m.slot_failover_ready->Value(), 0);
  EXPECT_FALSE(NotReadyForFailover(old_server));
}

// --databases: one round's rows, by slot name, each to its source's
// metrics; a slot without a row (dropped, or not created yet) reads 0.
TEST(SlotMonitorTest, SeveralSlotsEachSetTheirOwnSourcesGauges) {
  metrics::OutboxdMetrics process;
  metrics::SourceMetrics& a = process.ForSource("a");
  metrics::SourceMetrics& b = process.ForSource("b");
  metrics::SourceMetrics& c = process.ForSource("c");
  const std::vector<WatchedSlot> slots = {
      {"s_a", &a}, {"s_b", &b}, {"s_c", &c}};
  c.slot_retained_wal_bytes->Set(5);  // from an earlier round
  c.slot_wal_status[0]->Set(1);
  ApplySlotSamples({{"s_a", {true, 100, "reserved"}},
                    {"s_b", {true, 2000, "extended"}},
                    {"other", {true, 7, "lost"}}},
                   slots);
  EXPECT_EQ(a.slot_retained_wal_bytes->Value(), 100);
  EXPECT_EQ(Status(a, "reserved"), 1);
  EXPECT_EQ(Status(a, "extended"), 0);
  EXPECT_EQ(b.slot_retained_wal_bytes->Value(), 2000);
  EXPECT_EQ(Status(b, "extended"), 1);
  EXPECT_EQ(Status(b, "reserved"), 0);
  EXPECT_EQ(c.slot_retained_wal_bytes->Value(), 0);
  for (const char* s : metrics::kWalStatusNames) EXPECT_EQ(Status(c, s), 0);
}

TEST(SlotMonitorTest, AnUnreachableDatabaseIsLoggedOnceAndRetried) {
  std::ostringstream out;
  auto previous = spdlog::default_logger();
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  sink->set_pattern("%l %v");
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("t", sink));
  metrics::OutboxdMetrics process;
  metrics::SourceMetrics& m = process.ForSource();
  {
    // Port 1 on loopback: refused at once.
    std::unique_ptr<SlotMonitor> monitor = SlotMonitor::Start(
        {"host=127.0.0.1 port=1 connect_timeout=2", absl::Milliseconds(5)},
        {{"outbox_slot", &m}});
    const absl::Time give_up = absl::Now() + absl::Seconds(30);
    while (monitor->rounds() < 5 && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    EXPECT_GE(monitor->rounds(), 5u);
  }
  spdlog::set_default_logger(previous);
  // One line (libpq's message may hold a newline of its own).
  const std::string log = out.str();
  EXPECT_TRUE(absl::StartsWith(
      log, "warning slot metrics: cannot read pg_replication_slots"))
      << log;
  size_t lines = 0;
  for (size_t at = log.find("slot metrics:"); at != std::string::npos;
       at = log.find("slot metrics:", at + 1)) {
    ++lines;
  }
  EXPECT_EQ(lines, 1u) << log;
}

}  // namespace
}  // namespace outboxd
