// A real physical standby on the PostgreSQL version under test
// (OUTBOXD_TEST_PG_VERSION; ctest runs standby_test_pg15 .. _pg18): built by
// PgCluster::StartStandby without pg_basebackup, it replays the primary's
// rows, and when the primary crashes it is promoted and takes writes
// (DESIGN.md section 8: failover is tested with a real standby, not a
// restart of the same cluster). On 17+ a failover logical slot created on
// the primary is synced to the standby (sync_replication_slots) and is
// there after the promotion.
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/harness/child_process.h"
#include "tests/harness/pg_cluster.h"

namespace outboxd::testing {
namespace {

// The physical slot the standby streams from.
constexpr char kStandbySlot[] = "standby1";
// The failover logical slot of 17+.
constexpr char kFailoverSlot[] = "outbox_failover";

// Polls `sql` on `cluster` until it returns "t".
bool WaitTrue(const PgCluster& cluster, const std::string& sql,
              absl::Duration timeout = absl::Seconds(60)) {
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    absl::StatusOr<std::string> answer = cluster.Query("postgres", sql);
    if (answer.ok() && *answer == "t") return true;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return false;
}

TEST(StandbyTest, ReplaysThenTakesOverWhenThePrimaryCrashes) {
  const int version = TestPgVersion();
  const bool failover_slots = version >= 17;
  PgClusterOptions primary_options;
  if (failover_slots) {
    // Logical walsenders of failover slots wait for this standby.
    primary_options.settings.push_back(
        absl::StrCat("synchronized_standby_slots=", kStandbySlot));
  }
  auto primary = PgCluster::Start(primary_options);
  ASSERT_TRUE(primary.ok()) << primary.status();
  EXPECT_EQ((*primary)->major_version(), version)
      << "server_version_num " << (*primary)->version_num();
  ASSERT_TRUE((*primary)
                  ->Exec("postgres",
                         "CREATE TABLE t (id int PRIMARY KEY, note text); "
                         "INSERT INTO t SELECT g, 'before' FROM "
                         "generate_series(1, 100) g")
                  .ok());

  StandbyOptions standby_options;
  standby_options.slot = kStandbySlot;
  if (failover_slots) {
    standby_options.settings.push_back("sync_replication_slots=on");
  }
  auto standby = (*primary)->StartStandby(standby_options);
  ASSERT_TRUE(standby.ok()) << standby.status();
  EXPECT_EQ((*standby)->version_num(), (*primary)->version_num());
  EXPECT_EQ((*standby)->InRecovery().value_or(false), true);
  EXPECT_EQ(
      (*standby)->Query("postgres", "SELECT count(*) FROM t").value_or(""),
      "100");

  // Streaming through its slot, with feedback.
  EXPECT_TRUE(WaitTrue(**primary,
                       absl::StrCat("SELECT active AND xmin IS NOT NULL FROM "
                                    "pg_replication_slots WHERE slot_name = '",
                                    kStandbySlot, "'")))
      << "the physical slot is not active with hot_standby_feedback's xmin";

  if (failover_slots) {
    // (slot, plugin, temporary, twophase, failover)
    ASSERT_TRUE((*primary)
                    ->Exec("postgres",
                           absl::StrCat("SELECT pg_create_logical_replication_"
                                        "slot('",
                                        kFailoverSlot,
                                        "', 'pgoutput', false, false, true)"))
                    .ok());
  }
  ASSERT_TRUE((*primary)
                  ->Exec("postgres",
                         "INSERT INTO t SELECT g, 'streamed' FROM "
                         "generate_series(101, 200) g")
                  .ok());
  ASSERT_TRUE((*primary)->WaitForReplay(**standby).ok());
  EXPECT_EQ(
      (*standby)
          ->Query("postgres", "SELECT count(*) FROM t WHERE note = 'streamed'")
          .value_or(""),
      "100");

  std::string synced_to;
  if (failover_slots) {
    // The standby persists a synced slot only once the primary's slot needs
    // no older WAL or catalog rows than the standby still has: move the slot
    // on (advance to the end of WAL, past a fresh running-xacts record, so
    // its catalog_xmin moves too) until the standby shows it synced.
    const std::string nudge = absl::StrCat(
        "SELECT pg_log_standby_snapshot(); SELECT "
        "pg_replication_slot_advance('",
        kFailoverSlot, "', pg_current_wal_lsn())");
    const std::string synced = absl::StrCat(
        "SELECT synced AND NOT temporary FROM pg_replication_slots WHERE "
        "slot_name = '",
        kFailoverSlot, "'");
    absl::Time deadline = absl::Now() + absl::Seconds(60);
    bool done = false;
    while (!done && absl::Now() < deadline) {
      ASSERT_TRUE((*primary)->Exec("postgres", nudge).ok());
      done = WaitTrue(**standby, synced, absl::Milliseconds(500));
    }
    ASSERT_TRUE(done) << "the failover slot was not synced to the standby; "
                         "its log:\n"
                      << ReadFile((*standby)->log_file());
    synced_to =
        (*standby)
            ->Query("postgres", absl::StrCat("SELECT confirmed_flush_lsn FROM "
                                             "pg_replication_slots WHERE "
                                             "slot_name = '",
                                             kFailoverSlot, "'"))
            .value_or("");
  }

  // Both named, libpq finds the primary (the standby is read-only).
  const std::string both = MultiHostConnInfo({primary->get(), standby->get()});
  std::vector<Row> writer = QueryRows(both, "SELECT inet_server_port()");
  ASSERT_EQ(writer.size(), 1u);
  EXPECT_EQ(writer[0][0], absl::StrCat((*primary)->port()));

  // The primary dies; the standby is promoted and takes writes.
  ASSERT_TRUE((*primary)->Crash().ok());
  ASSERT_TRUE((*standby)->Promote().ok());
  EXPECT_EQ((*standby)->InRecovery().value_or(true), false);
  writer = QueryRows(both, "SELECT inet_server_port()");
  ASSERT_EQ(writer.size(), 1u);
  EXPECT_EQ(writer[0][0], absl::StrCat((*standby)->port()));
  ASSERT_TRUE((*standby)
                  ->Exec("postgres",
                         "INSERT INTO t SELECT g, 'promoted' FROM "
                         "generate_series(201, 250) g")
                  .ok());
  EXPECT_EQ(
      (*standby)->Query("postgres", "SELECT count(*) FROM t").value_or(""),
      "250");
  if (failover_slots) {
    EXPECT_EQ((*standby)
                  ->Query("postgres",
                          absl::StrCat("SELECT failover AND confirmed_flush_lsn"
                                       " >= '",
                                       synced_to,
                                       "' FROM pg_replication_slots WHERE "
                                       "slot_name = '",
                                       kFailoverSlot, "'"))
                  .value_or(""),
              "t")
        << "the promoted standby lacks the failover slot";
  }
}

}  // namespace
}  // namespace outboxd::testing
