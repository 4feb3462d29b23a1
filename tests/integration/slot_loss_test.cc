// Slot loss (ctest label fault): a slot outboxd streamed from is dropped,
// invalidated by max_slot_wal_keep_size, or lost in a (simulated) failover.
// For each: the default --on-slot-loss=fail exits 1 with one line and
// creates nothing; --on-slot-loss=republish delivers every event committed
// during the gap (duplicates counted, none lost).
#include <libpq-fe.h>

#include <csignal>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "tests/integration/fault_fixture.h"

namespace outboxd::testing {
namespace {

class SlotLossTest : public FaultTest {
 protected:
  std::string Topic() const { return prefix_ + "sl"; }

  // INSERTs `transactions` transactions of `rows` events tagged `tag`.
  void Write(const std::string& tag, int transactions, int rows) {
    for (int t = 0; t < transactions; ++t) {
      ASSERT_TRUE(
          Exec(absl::StrCat("INSERT INTO outbox (aggregatetype, aggregateid, "
                            "type, payload) SELECT 'sl', 'agg-' || (g % 7), '",
                            tag, "', jsonb_build_object('t', ", t,
                            ", 'g', g) FROM generate_series(1, ", rows, ") g"))
              .ok());
    }
  }

  // Streams `n` events with a running outboxd and waits until the slot (and
  // so outboxd's record) confirmed them. Returns the outboxd's index.
  size_t StreamBeforeLoss(int n) {
    size_t o = StartOutboxd({"--topic=" + Topic()});
    Write("before", 1, n);
    EXPECT_EQ(Read(Topic(), n).size(), static_cast<size_t>(n));
    EXPECT_TRUE(WaitConfirmed(CurrentWalLsn(), absl::Seconds(60))) << Log(o);
    EXPECT_NE(Query(absl::StrCat("SELECT count(*) FROM "
                                 "outbox.publisher_state WHERE slot_name = '",
                                 slot_, "'")),
              "0");
    return o;
  }

  // --on-slot-loss=fail: exits 1 with one line naming the slot, position
  // and commit time, what happened (`why`, when not empty) and what to do.
  void ExpectFailsWithOneLine(size_t o, const std::string& why = "") {
    std::optional<int> code = Outboxd(o).Wait(absl::Seconds(60));
    ASSERT_TRUE(code.has_value()) << "still running:\n" << Log(o);
    EXPECT_EQ(*code, 1) << Log(o);
    std::vector<std::string> lines;
    for (absl::string_view line : absl::StrSplit(Log(o), '\n')) {
      if (absl::StrContains(line, " is lost: ")) lines.emplace_back(line);
    }
    ASSERT_EQ(lines.size(), 1u) << Log(o);
    const std::string& line = lines[0];
    EXPECT_TRUE(absl::StrContains(line, "replication slot " + slot_)) << line;
    EXPECT_TRUE(absl::StrContains(line, why)) << line;
    EXPECT_TRUE(absl::StrContains(line, "last acknowledged ")) << line;
    EXPECT_TRUE(absl::StrContains(line, "(commit time 2")) << line;
    EXPECT_TRUE(absl::StrContains(line, "--on-slot-loss=republish")) << line;
    EXPECT_TRUE(absl::StrContains(line, "DELETE FROM outbox.publisher_state"))
        << line;
  }

  // --on-slot-loss=republish: every event of the table arrives. Returns the
  // tally, printed as `what`.
  Tally RepublishAndCount(const std::string& what, int gap,
                          std::vector<std::string> extra = {}) {
    extra.insert(extra.begin(),
                 {"--topic=" + Topic(), "--on-slot-loss=republish"});
    size_t o = StartOutboxd(extra);
    EXPECT_TRUE(WaitForLog(o, "republished ")) << Log(o);
    Write("after", 1, 10);
    const size_t expected = OutboxIds().size();
    // Republished duplicates reach the count early: read again until every
    // event is there (or a minute passed).
    std::vector<ConsumedRecord> records;
    Tally t;
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    do {
      records = Read(Topic(), expected);
      t = Count(records);
    } while (t.lost > 0 && absl::Now() < deadline);
    std::printf(
        "[ measure ] %s: %d events committed during the gap, %zu "
        "events in all, %zu lost, %zu duplicates\n",
        what.c_str(), gap, t.expected, t.lost, t.duplicates);
    EXPECT_EQ(t.lost, 0u) << Log(o);
    // Republished records say so, and sort before the new slot's events.
    uint64_t max_republished = 0;
    uint64_t min_after = UINT64_MAX;
    size_t republished = 0;
    for (const auto& r : records) {
      uint64_t lsn = 0;
      if (!absl::SimpleAtoi(r.Header("outbox.lsn").value_or(""), &lsn)) {
        ADD_FAILURE() << "record without outbox.lsn";
        continue;
      }
      if (r.Header("outbox.republished").has_value()) {
        ++republished;
        max_republished = std::max(max_republished, lsn);
      } else if (r.Header("eventType") == "after") {
        min_after = std::min(min_after, lsn);
      }
    }
    EXPECT_GE(republished, static_cast<size_t>(gap));
    EXPECT_LT(max_republished, min_after);
    EXPECT_TRUE(Outboxd(o).Running()) << Log(o);
    return t;
  }
};

// Dropped while outboxd was stopped; a transaction open across the loss
// whose created_at is older than the last acknowledged commit (only the
// xmin criterion finds it: --republish-margin=0s).
TEST_F(SlotLossTest, DroppedSlotFailsOrIsRepublished) {
  size_t a = StreamBeforeLoss(30);
  PGconn* longtx = PQconnectdb(ConnInfo().c_str());
  ASSERT_EQ(PQstatus(longtx), CONNECTION_OK);
  PQclear(PQexec(longtx, "BEGIN"));
  PGresult* res =
      PQexec(longtx,
             "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) "
             "VALUES ('sl', 'agg-long', 'long', '{}')");
  ASSERT_EQ(PQresultStatus(res), PGRES_COMMAND_OK) << PQerrorMessage(longtx);
  PQclear(res);
  Write("acked", 2, 10);  // acknowledged after the long one began
  ASSERT_EQ(Read(Topic(), 50).size(), 50u);
  ASSERT_TRUE(WaitConfirmed(CurrentWalLsn(), absl::Seconds(60))) << Log(a);
  Outboxd(a).Signal(SIGTERM);
  ASSERT_EQ(Outboxd(a).Wait(absl::Seconds(30)), 0);

  ASSERT_TRUE(
      Exec(absl::StrCat("SELECT pg_drop_replication_slot('", slot_, "')"))
          .ok());
  Write("gap", 5, 20);
  res = PQexec(longtx, "COMMIT");
  ASSERT_EQ(PQresultStatus(res), PGRES_COMMAND_OK);
  PQclear(res);
  PQfinish(longtx);
  const int gap = 101;

  ExpectFailsWithOneLine(StartOutboxd({"--topic=" + Topic()}, false));
  EXPECT_EQ(ConfirmedFlush(), Lsn()) << "fail must not re-create the slot";

  Tally t = RepublishAndCount("dropped slot", gap, {"--republish-margin=0s"});
  EXPECT_EQ(t.expected, 30u + 20u + 101u + 10u);
}

// Invalidated by max_slot_wal_keep_size while outboxd was stopped. The line
// carries what the server says: on 17+ its invalidation_reason, on 16 the
// wal_status and `conflicting` (16 cannot say more), on 15 the wal_status.
TEST_F(SlotLossTest, InvalidatedSlotFailsOrIsRepublished) {
  size_t a = StreamBeforeLoss(30);
  Outboxd(a).Signal(SIGTERM);
  ASSERT_EQ(Outboxd(a).Wait(absl::Seconds(30)), 0);

  ASSERT_TRUE(Exec("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'").ok());
  ASSERT_TRUE(Exec("SELECT pg_reload_conf()").ok());
  Write("gap", 5, 20);
  const int gap = 100;
  ASSERT_TRUE(Exec("CREATE TABLE walfill (x int)").ok());
  std::string status;
  for (int i = 0; i < 20 && status != "lost"; ++i) {
    ASSERT_TRUE(Exec("INSERT INTO walfill VALUES (1)").ok());
    ASSERT_TRUE(Exec("SELECT pg_switch_wal()").ok());
    ASSERT_TRUE(Exec("INSERT INTO walfill VALUES (2)").ok());
    ASSERT_TRUE(Exec("SELECT pg_switch_wal()").ok());
    ASSERT_TRUE(Exec("CHECKPOINT").ok());
    status = Query(absl::StrCat(
        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = '",
        slot_, "'"));
  }
  ASSERT_TRUE(Exec("ALTER SYSTEM RESET max_slot_wal_keep_size").ok());
  ASSERT_TRUE(Exec("SELECT pg_reload_conf()").ok());
  ASSERT_EQ(status, "lost");
  std::string why = "the slot is invalidated (wal_status 'lost'";
  if (cluster_->major_version() == 16) {
    // 16's `conflicting` is true for any invalidated slot.
    why += ", conflicting true: the server removed WAL it needed";
  } else if (cluster_->major_version() >= 17) {
    const std::string reason = Query(absl::StrCat(
        "SELECT invalidation_reason FROM pg_replication_slots WHERE "
        "slot_name = '",
        slot_, "'"));
    EXPECT_EQ(reason, "wal_removed");
    why = absl::StrCat("the slot is invalidated (invalidation_reason '", reason,
                       "', wal_status 'lost'");
  }

  ExpectFailsWithOneLine(StartOutboxd({"--topic=" + Topic()}, false), why);
  EXPECT_EQ(Query(absl::StrCat("SELECT wal_status FROM pg_replication_slots "
                               "WHERE slot_name = '",
                               slot_, "'")),
            "lost");

  RepublishAndCount("invalidated slot", gap);
}

// A simulated failover: the server goes away under a running outboxd and
// comes back without the slot (started meanwhile without outboxd, slot
// dropped, events written); outboxd reconnects.
TEST_F(SlotLossTest, FailoverWithoutTheSlotFailsOrIsRepublished) {
  size_t a = StreamBeforeLoss(30);
  ASSERT_TRUE(cluster_->Stop().ok());
  ASSERT_TRUE(WaitForLog(a, "reconnecting")) << Log(a);
  Outboxd(a).Signal(SIGSTOP);  // kept away while the "standby" serves
  ASSERT_TRUE(cluster_->StartAgain().ok());
  ASSERT_TRUE(
      Exec(absl::StrCat("SELECT pg_drop_replication_slot('", slot_, "')"))
          .ok());
  Write("gap", 5, 20);
  const int gap = 100;
  ASSERT_TRUE(cluster_->Stop().ok());
  ASSERT_TRUE(cluster_->StartAgain().ok());
  Outboxd(a).Signal(SIGCONT);

  // The running outboxd reconnects, finds the slot gone and stops.
  ExpectFailsWithOneLine(a);
  EXPECT_EQ(ConfirmedFlush(), Lsn()) << "fail must not re-create the slot";

  RepublishAndCount("failover", gap);
}

// --cleanup-after keeps what a republish would need: rows within
// --republish-margin of the last acknowledged commit stay although the slot
// confirmed them and they are older than --cleanup-after.
TEST_F(SlotLossTest, CleanupKeepsRowsWithinTheRepublishMargin) {
  size_t o = StartOutboxd({"--topic=" + Topic(), "--cleanup-after=1s"});
  Write("kept", 2, 10);
  ASSERT_EQ(Read(Topic(), 20).size(), 20u);
  ASSERT_TRUE(WaitConfirmed(CurrentWalLsn(), absl::Seconds(60))) << Log(o);
  absl::SleepFor(absl::Seconds(5));  // several cleanup rounds
  EXPECT_EQ(Query("SELECT count(*) FROM outbox"), "20") << Log(o);
}

// A role that may not use outboxd's record gets one clear line saying what
// to grant, instead of streaming without loss detection.
TEST_F(SlotLossTest, RoleWithoutTheRecordIsToldWhatToGrant) {
  const std::string role = "nostate_" + db_;
  ASSERT_TRUE(
      Exec(absl::StrCat("CREATE ROLE ", role,
                        " LOGIN REPLICATION; GRANT SELECT ON outbox TO ", role))
          .ok());
  std::vector<std::string> argv = BaseArgs();
  for (auto& a : argv) {
    if (a.rfind("--pg=", 0) == 0) {
      a = absl::StrCat("--pg=host=127.0.0.1 port=", cluster_->port(),
                       " dbname=", db_, " user=", role);
    }
  }
  size_t o = StartOutboxd({}, false, {}, argv);
  std::optional<int> code = Outboxd(o).Wait(absl::Seconds(60));
  ASSERT_TRUE(code.has_value()) << Log(o);
  EXPECT_EQ(*code, 1) << Log(o);
  EXPECT_TRUE(absl::StrContains(
      Log(o),
      "GRANT SELECT, INSERT, UPDATE ON outbox.publisher_state TO " + role))
      << Log(o);
  EXPECT_EQ(ConfirmedFlush(), Lsn()) << "no slot without a record";
}

}  // namespace
}  // namespace outboxd::testing
