// A real failover on the PostgreSQL version under test
// (OUTBOXD_TEST_PG_VERSION; ctest runs failover_test and failover_pg16 ..
// _pg18): a primary and a physical standby made from it
// (PgCluster::StartStandby), outboxd streaming with --pg naming both
// (target_session_attrs=read-write) while a writer commits; the primary
// crashes (pg_ctl -m immediate), the standby is promoted and the writer
// goes on there.
//   - 17+: the slot is a failover slot (--failover-slot=auto), synced to
//     the standby (sync_replication_slots=on, the primary's
//     synchronized_standby_slots naming the standby's physical slot):
//     outboxd finds it on the promoted server, nothing is lost or
//     republished; the time from the promotion to the first new event in
//     Kafka is printed.
//   - 15 and 16: the promoted server has no slot: --on-slot-loss=fail
//     stops with the one slot-loss line, --on-slot-loss=republish delivers
//     every event of the promoted server.
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "tests/integration/fault_fixture.h"

namespace outboxd::testing {
namespace {

constexpr char kStandbySlot[] = "standby1";

class FailoverTest : public FaultTest {
 protected:
  static void SetUpTestSuite() { StartServers(/*brokers=*/1); }
  void TearDown() override {
    StopAll(&outboxd_);
    standby_.reset();
  }

  std::string Topic() const { return prefix_ + "fo"; }

  // Starts the standby of cluster_ (17+: syncing failover slots), streaming
  // through physical slot `slot`.
  void StartStandby(const std::string& slot = kStandbySlot) {
    StandbyOptions o;
    o.slot = slot;
    if (cluster_->major_version() >= 17) {
      o.settings.push_back("sync_replication_slots=on");
    }
    auto standby = cluster_->StartStandby(o);
    ASSERT_TRUE(standby.ok()) << standby.status();
    standby_ = *std::move(standby);
    if (cluster_->major_version() >= 17) {
      // Logical walsenders of failover slots wait for this standby. Set
      // after the copy, as in production: the promoted standby must not
      // wait for a slot of its own that does not exist.
      ASSERT_TRUE(
          cluster_
              ->Exec("postgres", absl::StrCat("ALTER SYSTEM SET "
                                              "synchronized_standby_slots = '",
                                              slot, "'"))
              .ok());
      ASSERT_TRUE(cluster_->Exec("postgres", "SELECT pg_reload_conf()").ok());
    }
  }

  // outboxd with --pg naming the primary and the standby, JSON logs (the
  // crash's server WARNING must come through the logger too).
  size_t StartFailoverOutboxd(std::vector<std::string> extra,
                              bool wait_streaming = true) {
    std::vector<std::string> argv = BaseArgs();
    for (std::string& arg : argv) {
      if (absl::StartsWith(arg, "--pg=")) {
        arg = "--pg=" + MultiHostConnInfo({cluster_, standby_.get()}, db_);
      }
    }
    argv.insert(argv.end(), {"--topic=" + Topic(), "--log-format=json"});
    argv.insert(argv.end(), extra.begin(), extra.end());
    return StartOutboxd({}, wait_streaming, {}, argv);
  }

  // Every line of outboxd's log is one JSON object.
  void ExpectJsonLines(size_t o) {
    for (absl::string_view line : absl::StrSplit(Log(o), '\n')) {
      if (line.empty()) continue;
      EXPECT_TRUE(absl::StartsWith(line, "{") && absl::EndsWith(line, "}"))
          << "not a JSON log line: " << line;
    }
  }

  // The ids of the outbox table on the promoted standby.
  std::set<std::string> PromotedIds() {
    std::set<std::string> ids;
    for (const Row& row :
         QueryRows(standby_->ConnInfo(db_), "SELECT id::text FROM outbox")) {
      ids.insert(row[0].value_or(""));
    }
    return ids;
  }

  // Waits until the standby has synced outboxd's slot (persisted: synced
  // and not temporary); false after `timeout`.
  bool WaitSynced(absl::Duration timeout) {
    const absl::Time from = absl::Now();
    while (absl::Now() < from + timeout) {
      if (standby_
              ->Query(db_, absl::StrCat("SELECT synced AND NOT temporary FROM "
                                        "pg_replication_slots WHERE "
                                        "slot_name = '",
                                        slot_, "'"))
              .value_or("") == "t") {
        return true;
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
    return false;
  }

  // Crashes the primary and promotes the standby; returns the moment the
  // promotion completed.
  absl::Time CrashAndPromote() {
    EXPECT_TRUE(cluster_->Crash().ok());
    EXPECT_TRUE(standby_->Promote().ok());
    return absl::Now();
  }

  std::unique_ptr<PgCluster> standby_;
};

// --failover-slot=on on a server without failover slots: exit 1, one line
// naming the server's version; nothing created.
TEST_F(FailoverTest, FailoverSlotOnNeeds17) {
  if (cluster_->major_version() >= 17) {
    GTEST_SKIP() << "17+ has failover slots";
  }
  size_t a = StartOutboxd({"--topic=" + Topic(), "--failover-slot=on"}, false);
  std::optional<int> code = Outboxd(a).Wait(absl::Seconds(30));
  ASSERT_TRUE(code.has_value()) << "still running:\n" << Log(a);
  EXPECT_EQ(*code, 1) << Log(a);
  EXPECT_TRUE(absl::StrContains(
      Log(a), absl::StrCat("--failover-slot=on needs PostgreSQL 17 or later "
                           "(failover slots) but the server is ",
                           cluster_->major_version(), ".")))
      << Log(a);
  EXPECT_EQ(ConfirmedFlush(), Lsn()) << "no slot may be created";
}

// PostgreSQL 18 invalidates a slot inactive for idle_replication_slot_timeout
// (at a checkpoint): a lost slot whose line carries the server's
// invalidation_reason. (Runs first: the next test crashes the primary.)
TEST_F(FailoverTest, IdleTimeoutInvalidationIsALostSlotWithTheReason) {
  if (cluster_->major_version() < 18) {
    GTEST_SKIP() << "idle_replication_slot_timeout is new in 18";
  }
  size_t a = StartOutboxd({"--topic=" + Topic()});
  ASSERT_TRUE(Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, "
                   "payload) VALUES ('fo', 'a', 'before', '{}')")
                  .ok());
  ASSERT_EQ(Read(Topic(), 1).size(), 1u) << Log(a);
  ASSERT_TRUE(WaitConfirmed(CurrentWalLsn(), absl::Seconds(30))) << Log(a);
  Outboxd(a).Signal(SIGTERM);
  ASSERT_EQ(Outboxd(a).Wait(absl::Seconds(30)), 0);

  ASSERT_TRUE(
      Exec("ALTER SYSTEM SET idle_replication_slot_timeout = '1s'").ok());
  ASSERT_TRUE(Exec("SELECT pg_reload_conf()").ok());
  std::string reason;
  for (int i = 0; i < 50 && reason.empty(); ++i) {
    absl::SleepFor(absl::Milliseconds(200));
    ASSERT_TRUE(Exec("CHECKPOINT").ok());
    reason = Query(absl::StrCat(
        "SELECT coalesce(invalidation_reason, '') FROM pg_replication_slots "
        "WHERE slot_name = '",
        slot_, "'"));
  }
  ASSERT_TRUE(Exec("ALTER SYSTEM RESET idle_replication_slot_timeout").ok());
  ASSERT_TRUE(Exec("SELECT pg_reload_conf()").ok());
  ASSERT_EQ(reason, "idle_timeout");

  size_t b = StartOutboxd({"--topic=" + Topic()}, false);
  std::optional<int> code = Outboxd(b).Wait(absl::Seconds(60));
  ASSERT_TRUE(code.has_value()) << "still running:\n" << Log(b);
  EXPECT_EQ(*code, 1) << Log(b);
  EXPECT_TRUE(absl::StrContains(
      Log(b),
      " is lost: the slot is invalidated (invalidation_reason "
      "'idle_timeout'"))
      << Log(b);
  EXPECT_TRUE(absl::StrContains(Log(b), "idle_replication_slot_timeout"))
      << Log(b);
  StopAll(&outboxd_);
  ASSERT_TRUE(
      Exec(absl::StrCat("SELECT pg_drop_replication_slot('", slot_, "')"))
          .ok());
}

// PostgreSQL 18's pgoutput only warns when the publication is dropped and
// streams on without it; outboxd stops with one line instead of confirming
// while publishing nothing.
TEST_F(FailoverTest, DroppedPublicationStopsOn18) {
  if (cluster_->major_version() < 18) {
    GTEST_SKIP() << "before 18 pgoutput fails the stream itself";
  }
  size_t a = StartOutboxd({"--topic=" + Topic(), "--publication=pub_fo"});
  ASSERT_TRUE(Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, "
                   "payload) VALUES ('fo', 'a', 'before', '{}')")
                  .ok());
  ASSERT_EQ(Read(Topic(), 1).size(), 1u) << Log(a);
  ASSERT_TRUE(Exec("DROP PUBLICATION pub_fo").ok());
  ASSERT_TRUE(Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, "
                   "payload) VALUES ('fo', 'a', 'after', '{}')")
                  .ok());
  std::optional<int> code = Outboxd(a).Wait(absl::Seconds(30));
  ASSERT_TRUE(code.has_value()) << "still running:\n" << Log(a);
  EXPECT_EQ(*code, 1) << Log(a);
  EXPECT_TRUE(absl::StrContains(Log(a), "publication pub_fo no longer exists"))
      << Log(a);
  StopAll(&outboxd_);
  ASSERT_TRUE(
      Exec(absl::StrCat("SELECT pg_drop_replication_slot('", slot_, "')"))
          .ok());
}

// 17+: a fresh failover slot is synced to the standby while nothing is
// written on the primary: outboxd logs standby snapshots and confirms
// keepalive progress after creating it (docs/failover.md, "Sync after the
// first start"). The time is printed.
TEST_F(FailoverTest, FreshFailoverSlotIsSyncedWhileThePrimaryIsIdle) {
  if (cluster_->major_version() < 17) {
    GTEST_SKIP() << "failover slots are new in 17";
  }
  constexpr char kIdleStandbySlot[] = "standby_idle";
  StartStandby(kIdleStandbySlot);
  ASSERT_NE(standby_, nullptr);
  const absl::Time started = absl::Now();
  size_t a = StartFailoverOutboxd({});
  const absl::Duration outboxd_ready = absl::Now() - started;
  ASSERT_TRUE(WaitSynced(absl::Seconds(120)))
      << "the failover slot was not synced; standby log:\n"
      << ReadFile(standby_->log_file()) << "\noutboxd:\n"
      << Log(a);
  std::printf(
      "[ measure ] PostgreSQL %d, idle primary: failover slot synced %s "
      "after outboxd started (ready after %s)\n",
      cluster_->major_version(),
      absl::FormatDuration(absl::Now() - started).c_str(),
      absl::FormatDuration(outboxd_ready).c_str());
  StopAll(&outboxd_);
  standby_.reset();
  ASSERT_TRUE(Exec("ALTER SYSTEM RESET synchronized_standby_slots").ok());
  ASSERT_TRUE(Exec("SELECT pg_reload_conf()").ok());
  ASSERT_TRUE(Exec(absl::StrCat("SELECT pg_drop_replication_slot('",
                                kIdleStandbySlot, "')"))
                  .ok());
}

// 17+: after creating a failover slot (and at start with one) outboxd logs
// standby snapshots so that standbys sync it promptly. The install script
// lets outboxd_publisher do so; without that right outboxd streams all the
// same and one warning says what to grant.
TEST_F(FailoverTest, StandbySnapshotsNeedTheGrantOrAreWarnedAbout) {
  if (cluster_->major_version() < 17) {
    GTEST_SKIP() << "failover slots are new in 17";
  }
  std::vector<std::string> argv = BaseArgs();
  for (std::string& arg : argv) {
    if (absl::StartsWith(arg, "--pg=")) {
      arg = absl::StrCat("--pg=host=127.0.0.1 port=", cluster_->port(),
                         " dbname=", db_, " user=outboxd_publisher");
    }
  }
  argv.push_back("--topic=" + Topic());
  size_t a = StartOutboxd({}, true, {}, argv);
  EXPECT_TRUE(WaitForLog(a, "logged a standby snapshot")) << Log(a);
  EXPECT_FALSE(absl::StrContains(Log(a), "cannot log a standby snapshot"))
      << Log(a);
  StopAll(&outboxd_);

  ASSERT_TRUE(Exec("REVOKE EXECUTE ON FUNCTION "
                   "pg_catalog.pg_log_standby_snapshot() FROM "
                   "outboxd_publisher")
                  .ok());
  size_t b = StartOutboxd({}, true, {}, argv);
  EXPECT_TRUE(WaitForLog(b, "cannot log a standby snapshot")) << Log(b);
  EXPECT_TRUE(absl::StrContains(Log(b),
                                "GRANT EXECUTE ON FUNCTION "
                                "pg_catalog.pg_log_standby_snapshot()"))
      << Log(b);
  ASSERT_TRUE(Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, "
                   "payload) VALUES ('fo', 'a', 'streams', '{}')")
                  .ok());
  EXPECT_EQ(Read(Topic(), 1).size(), 1u) << Log(b);
  StopAll(&outboxd_);
  ASSERT_TRUE(
      Exec(absl::StrCat("SELECT pg_drop_replication_slot('", slot_, "')"))
          .ok());
}

TEST_F(FailoverTest, PromotedStandbyKeepsEveryEvent) {
  const int version = cluster_->major_version();
  StartStandby();
  ASSERT_NE(standby_, nullptr);
  const bool failover_slots = version >= 17;

  Inserter writer(MultiHostConnInfo({cluster_, standby_.get()}, db_),
                  /*total=*/1000000, /*batch=*/5, absl::Milliseconds(50),
                  /*aggregates=*/50, "fo");
  const absl::Time started = absl::Now();
  size_t a = StartFailoverOutboxd({});
  writer.Start();
  // (No quiet time: the writer goes on.)
  ASSERT_FALSE(
      Read(Topic(), 20, absl::Seconds(60), absl::Milliseconds(1)).empty())
      << Log(a);

  absl::Duration sync_took;
  if (failover_slots) {
    EXPECT_EQ(QueryRows(ConnInfo(), absl::StrCat("SELECT failover::text FROM "
                                                 "pg_replication_slots WHERE "
                                                 "slot_name = '",
                                                 slot_, "'"))
                  .at(0)
                  .at(0),
              "true")
        << Log(a);
    // The standby syncs the slot once it has passed a running-xacts record
    // the slot's catalog_xmin allows; writing goes on meanwhile.
    ASSERT_TRUE(WaitSynced(absl::Seconds(60)))
        << "the failover slot was not synced; standby log:\n"
        << ReadFile(standby_->log_file());
    sync_took = absl::Now() - started;
  } else {
    absl::SleepFor(absl::Seconds(1));
  }
  absl::SleepFor(absl::Milliseconds(500));  // more commits in flight

  const absl::Time promoted = CrashAndPromote();
  const int written_at_crash = writer.written();
  // The first event committed on the promoted server.
  ASSERT_TRUE(standby_
                  ->Exec(db_,
                         "INSERT INTO outbox (aggregatetype, aggregateid, "
                         "type, payload) VALUES ('fo', 'marker', 'marker', "
                         "'{}')")
                  .ok());

  size_t b = a;
  if (!failover_slots) {
    // 15 and 16: the promoted server has no slot.
    std::optional<int> code = Outboxd(a).Wait(absl::Seconds(60));
    ASSERT_TRUE(code.has_value()) << "still running:\n" << Log(a);
    EXPECT_EQ(*code, 1) << Log(a);
    EXPECT_TRUE(absl::StrContains(Log(a), " is lost: the slot does not exist"))
        << Log(a);
    b = StartFailoverOutboxd({"--on-slot-loss=republish"});
  }

  // Time to the marker in Kafka.
  absl::Duration first_new = absl::InfiniteDuration();
  while (absl::Now() < promoted + absl::Seconds(60)) {
    auto records = ReadTopic(Bootstrap(), Topic(), 1, absl::Milliseconds(300),
                             absl::Milliseconds(50));
    if (records.ok()) {
      bool found = false;
      for (const auto& r : *records) {
        found |= r.Header("eventType") == "marker";
      }
      if (found) {
        first_new = absl::Now() - promoted;
        break;
      }
    }
  }
  EXPECT_LT(first_new, absl::Seconds(60)) << Log(b);

  absl::SleepFor(absl::Seconds(2));  // the writer goes on on the new primary
  writer.Stop();
  writer.Join();
  EXPECT_TRUE(writer.error().empty()) << writer.error();

  const std::set<std::string> expected = PromotedIds();
  std::vector<ConsumedRecord> records;
  Tally t;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  do {
    records = Read(Topic(), expected.size(), absl::Seconds(10));
    t = CountIn(expected, records);
  } while (t.lost > 0 && absl::Now() < deadline);
  size_t republished = 0;
  for (const auto& r : records) {
    if (r.Header("outbox.republished").has_value()) ++republished;
  }
  std::printf(
      "[ measure ] PostgreSQL %d (%s): %d events written before the crash, "
      "%zu committed on the promoted server, %zu delivered, %zu lost, %zu "
      "duplicates, %zu republished; first new event in Kafka %s after the "
      "promotion%s\n",
      version, failover_slots ? "failover slot" : "slot lost, republish",
      written_at_crash, t.expected, t.received, t.lost, t.duplicates,
      republished, absl::FormatDuration(first_new).c_str(),
      failover_slots
          ? absl::StrCat("; slot synced ", absl::FormatDuration(sync_took),
                         " after outboxd started")
                .c_str()
          : "");
  EXPECT_EQ(t.lost, 0u) << Log(b);
  EXPECT_TRUE(Outboxd(b).Running()) << Log(b);
  if (failover_slots) {
    EXPECT_FALSE(absl::StrContains(Log(a), " is lost")) << Log(a);
    EXPECT_EQ(republished, 0u);
  }
  ExpectJsonLines(a);
  if (b != a) ExpectJsonLines(b);
}

}  // namespace
}  // namespace outboxd::testing
