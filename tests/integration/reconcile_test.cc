// The reconciler (--reconcile-interval, pipeline/reconciler.h) against a
// real PostgreSQL, the dev broker and outboxd as a child process: it finds
// the events a publication that lost and regained the table skipped, and
// publishes them late (while outboxd warns and sets
// outboxd_publication_missing_tables); it reports no loss for a long
// transaction, a rolled-back one, a row deleted in its own transaction or
// normal traffic.
#include <libpq-fe.h>
#include <signal.h>

#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/harness/metrics_scrape.h"
#include "tests/integration/fault_fixture.h"

namespace outboxd::testing {
namespace {

class ReconcileTest : public FaultTest {
 protected:
  // outboxd with a short reconciler; its metrics port.
  int StartReconciling(size_t* n, const std::string& margin = "2s",
                       const std::string& batch = "100000") {
    *n = StartOutboxd({"--reconcile-interval=1s",
                       absl::StrCat("--reconcile-margin=", margin),
                       absl::StrCat("--reconcile-batch=", batch),
                       "--metrics-address=127.0.0.1:0"});
    // The first pass takes the start: rows from then on are judged.
    EXPECT_TRUE(WaitForLog(*n, "reconcile: every")) << Log(*n);
    return MetricsPort(Log(*n));
  }
  double Missing(int port) {
    int code = 0;
    return Sample(Get(port, "/metrics", &code),
                  "outboxd_reconcile_missing_events_total");
  }
  // Waits until outboxd_publication_missing_tables is `value`.
  bool WaitForMissingTables(int port, double value) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    int code = 0;
    while (Sample(Get(port, "/metrics", &code),
                  "outboxd_publication_missing_tables") != value) {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return true;
  }
  void Insert(int rows, const std::string& type = "rec") {
    ASSERT_TRUE(
        Exec(absl::StrCat("INSERT INTO outbox (aggregatetype, aggregateid, "
                          "type, payload) SELECT '",
                          type,
                          "', 'a' || g, 'Evt', jsonb_build_object('n', "
                          "g) FROM generate_series(1, ",
                          rows, ") g"))
            .ok());
  }
};

// F10: ALTER PUBLICATION ... DROP TABLE, 30 events, ADD TABLE, 30 more. The
// stream never sees the first 30; outboxd warns (one line naming the fix)
// and sets outboxd_publication_missing_tables to 1 while the table is out;
// the reconciler publishes them late with outbox.reconciled and counts
// them.
TEST_F(ReconcileTest, PublicationThatLostTheTableIsReconciled) {
  size_t n = 0;
  const int port = StartReconciling(&n);
  ASSERT_GT(port, 0) << Log(n);
  EXPECT_TRUE(WaitForMissingTables(port, 0)) << Log(n);
  ASSERT_TRUE(Exec("ALTER PUBLICATION outbox_pub DROP TABLE outbox").ok());
  EXPECT_TRUE(WaitForLog(
      n, "ALTER PUBLICATION outbox_pub ADD TABLE public.outbox (until then"))
      << Log(n);
  EXPECT_TRUE(WaitForMissingTables(port, 1)) << Log(n);
  Insert(30);
  const std::set<std::string> skipped = OutboxIds();
  ASSERT_EQ(skipped.size(), 30u);
  ASSERT_TRUE(Exec("ALTER PUBLICATION outbox_pub ADD TABLE outbox").ok());
  EXPECT_TRUE(WaitForLog(n, "carries public.outbox again")) << Log(n);
  EXPECT_TRUE(WaitForMissingTables(port, 0)) << Log(n);
  Insert(30);

  std::vector<ConsumedRecord> records =
      Read(prefix_ + "rec", 60, absl::Seconds(60), absl::Seconds(3));
  const Tally t = Count(records);
  EXPECT_EQ(t.expected, 60u);
  EXPECT_EQ(t.lost, 0u) << Log(n);
  EXPECT_EQ(t.duplicates, 0u);
  size_t reconciled = 0;
  for (const ConsumedRecord& r : records) {
    if (!r.Header("outbox.reconciled").has_value()) continue;
    ++reconciled;
    EXPECT_TRUE(skipped.contains(r.Header("id").value_or("")));
    EXPECT_TRUE(r.Header("outbox.source").has_value());
  }
  EXPECT_EQ(reconciled, 30u);
  EXPECT_EQ(Missing(port), 30) << Log(n);
  EXPECT_NE(Log(n).find("were never published (first id"), std::string::npos)
      << Log(n);
}

// The late records' produce requests fail for longer than the window
// trails (five passes): the window waits for them, and a later pass
// publishes them; they are counted once.
TEST_F(ReconcileTest, ALatePublishThatFailsIsRetriedByTheNextPasses) {
  size_t n = 0;
  const int port = StartReconciling(&n);
  ASSERT_GT(port, 0) << Log(n);
  ASSERT_TRUE(Exec("ALTER PUBLICATION outbox_pub DROP TABLE outbox").ok());
  Insert(20, "late");
  ASSERT_TRUE(Exec("ALTER PUBLICATION outbox_pub ADD TABLE outbox").ok());
  // Produce (API key 0), not retriable: nothing else produces meanwhile.
  ASSERT_TRUE(broker_->InjectError(0, "TOPIC_AUTHORIZATION_FAILED", 5).ok());
  ASSERT_TRUE(WaitForLog(n, "; retried every")) << Log(n);
  std::vector<ConsumedRecord> records =
      Read(prefix_ + "late", 20, absl::Seconds(60), absl::Seconds(3));
  const Tally t = Count(records);
  EXPECT_EQ(t.expected, 20u);
  EXPECT_EQ(t.lost, 0u) << Log(n);
  EXPECT_EQ(Missing(port), 20) << Log(n);
}

// A row whose transaction was still open while passes judged its part of
// the window, and that the stream never saw (the publication lacked the
// table meanwhile): a later pass fetches that part again and finds it.
TEST_F(ReconcileTest, RowCommittedAfterPassesJudgedItsWindowIsReconciled) {
  size_t n = 0;
  const int port = StartReconciling(&n);
  ASSERT_GT(port, 0) << Log(n);
  Insert(5);  // judged by the passes while the transaction below is open
  ASSERT_TRUE(Exec("ALTER PUBLICATION outbox_pub DROP TABLE outbox").ok());
  PGconn* c = PQconnectdb(ConnInfo().c_str());
  for (const char* sql :
       {"BEGIN",
        "INSERT INTO outbox (aggregatetype, aggregateid, type, "
        "payload) VALUES ('rec', 'late', 'Evt', '{}')"}) {
    PQclear(PQexec(c, sql));
  }
  // Past the margin (2 s), within two: the passes' windows hold its
  // created_at while it is invisible to them.
  absl::SleepFor(absl::Seconds(3));
  PQclear(PQexec(c, "COMMIT"));
  PQfinish(c);
  ASSERT_TRUE(Exec("ALTER PUBLICATION outbox_pub ADD TABLE outbox").ok());
  Insert(5);

  std::vector<ConsumedRecord> records =
      Read(prefix_ + "rec", 11, absl::Seconds(60), absl::Seconds(3));
  const Tally t = Count(records);
  EXPECT_EQ(t.expected, 11u);
  EXPECT_EQ(t.lost, 0u) << Log(n);
  size_t reconciled = 0;
  for (const ConsumedRecord& r : records) {
    reconciled += r.Header("outbox.reconciled").has_value();
  }
  EXPECT_EQ(reconciled, 1u) << Log(n);
  EXPECT_EQ(Missing(port), 1) << Log(n);
}

// No false loss: a transaction open past the margin, a rolled-back one, a
// row deleted in its own transaction, and steady traffic.
TEST_F(ReconcileTest, NoFalseLossForLongTransactionsAndTraffic) {
  size_t n = 0;
  const int port = StartReconciling(&n);
  ASSERT_GT(port, 0) << Log(n);
  auto open_for = [this](absl::Duration d, const std::string& end) {
    PGconn* c = PQconnectdb(ConnInfo().c_str());
    for (const std::string& sql :
         {std::string("BEGIN"),
          std::string("INSERT INTO outbox (aggregatetype, aggregateid, type, "
                      "payload) VALUES ('rec', 'long', 'Evt', '{}')")}) {
      PQclear(PQexec(c, sql.c_str()));
    }
    absl::SleepFor(d);
    PQclear(PQexec(c, end.c_str()));
    PQfinish(c);
  };
  // Seen by a pass after its commit, not yet confirmed: judged later.
  std::thread short_commit([&] { open_for(absl::Seconds(3), "COMMIT"); });
  // Committed once the window passed its created_at: never judged.
  std::thread long_commit([&] { open_for(absl::Seconds(6), "COMMIT"); });
  std::thread long_rollback([&] { open_for(absl::Seconds(4), "ROLLBACK"); });
  ASSERT_TRUE(
      Exec("SELECT outbox.emit_transient('rec', 't', 'Evt', '{}')").ok());
  Inserter traffic(ConnInfo(), 300, 10, absl::Milliseconds(50), 100, "rec");
  traffic.Start();
  traffic.Join();
  short_commit.join();
  long_commit.join();
  long_rollback.join();
  // 300 + the long ones + the transient one (in the WAL only).
  std::vector<ConsumedRecord> records =
      Read(prefix_ + "rec", 303, absl::Seconds(60), absl::Seconds(2));
  const Tally t = Count(records);
  EXPECT_EQ(t.expected, 302u);
  EXPECT_EQ(t.lost, 0u);
  // Several passes judge every row (2 s margin, 1 s interval).
  absl::SleepFor(absl::Seconds(6));
  EXPECT_EQ(Missing(port), 0) << Log(n);
  EXPECT_EQ(Log(n).find("never published"), std::string::npos) << Log(n);
  for (const ConsumedRecord& r :
       Read(prefix_ + "rec", 303, absl::Seconds(10), absl::Seconds(1))) {
    EXPECT_FALSE(r.Header("outbox.reconciled").has_value());
  }
}

// The part of the window a killed process had not judged yet: its
// successor judges it from where the killed one got to
// (outbox.publisher_state.reconciled_before), asking Kafka about the rows
// that one may have published. The rows a publication without the table
// skipped just before the kill are published late; the rows the killed
// process published (one to the dead-letter topic) are not published
// again. Its passes take 7 rows at most, so the window is judged over
// several passes, and a transaction with more rows is taken whole.
TEST_F(ReconcileTest, RowsSkippedJustBeforeAKillAreReconciledAfterIt) {
  size_t first = 0;
  // A long margin: the first process judges none of the rows below.
  ASSERT_GT(StartReconciling(&first, "5m"), 0) << Log(first);
  Insert(10);  // published by the first process
  ASSERT_EQ(Count(Read(prefix_ + "rec", 10, absl::Seconds(30))).lost, 0u);
  Insert(1, "no topic!");  // dead-lettered by it (an illegal topic name)
  ASSERT_EQ(Read(prefix_ + "dlq", 1, absl::Seconds(30)).size(), 1u);
  const std::set<std::string> published = OutboxIds();
  ASSERT_TRUE(Exec("ALTER PUBLICATION outbox_pub DROP TABLE outbox").ok());
  Insert(30);
  std::set<std::string> skipped;
  for (const std::string& id : OutboxIds()) {
    if (!published.contains(id)) skipped.insert(id);
  }
  ASSERT_EQ(skipped.size(), 30u);
  ASSERT_TRUE(Exec("ALTER PUBLICATION outbox_pub ADD TABLE outbox").ok());
  Insert(5, "after");  // the stream has passed the gap once these arrive
  ASSERT_EQ(Read(prefix_ + "after", 5, absl::Seconds(30)).size(), 5u);
  Outboxd(first).Signal(SIGKILL);
  ASSERT_TRUE(Outboxd(first).Wait(absl::Seconds(15)).has_value());

  size_t second = 0;
  // 7 rows a pass: the 10 and the 30 (each one transaction start) are
  // taken whole, the rest over several passes.
  const int port = StartReconciling(&second, "2s", "7");
  ASSERT_GT(port, 0) << Log(second);
  std::vector<ConsumedRecord> records =
      Read(prefix_ + "rec", 40, absl::Seconds(60), absl::Seconds(3));
  std::set<std::string> expected = published;
  expected.insert(skipped.begin(), skipped.end());
  std::vector<ConsumedRecord> dead =
      Read(prefix_ + "dlq", 2, absl::Seconds(2), absl::Seconds(1));
  records.insert(records.end(), dead.begin(), dead.end());
  const Tally t = CountIn(expected, records);
  EXPECT_EQ(t.expected, 41u);
  EXPECT_EQ(t.lost, 0u) << Log(second);
  size_t reconciled = 0;
  for (const ConsumedRecord& r : records) {
    if (!r.Header("outbox.reconciled").has_value()) continue;
    ++reconciled;
    EXPECT_TRUE(skipped.contains(r.Header("id").value_or("")));
  }
  EXPECT_EQ(reconciled, 30u) << Log(second);
  EXPECT_EQ(Missing(port), 30) << Log(second);
  EXPECT_NE(Log(second).find("judged against Kafka"), std::string::npos)
      << Log(second);
}

// A principal that may not read the topics: Kafka cannot be asked about
// the rows from before the restart. They are left to the slot, with one
// warning naming the grant, and the reconciler goes on: a later
// publication fault is still reconciled (the window is not stuck).
TEST_F(ReconcileTest, TopicsItMayNotReadDoNotStopTheReconciler) {
  size_t first = 0;
  ASSERT_GT(StartReconciling(&first, "5m"), 0) << Log(first);
  Insert(3);
  ASSERT_EQ(Count(Read(prefix_ + "rec", 3, absl::Seconds(30))).lost, 0u);
  Outboxd(first).Signal(SIGKILL);
  ASSERT_TRUE(Outboxd(first).Wait(absl::Seconds(15)).has_value());

  // Fetch (API key 1) refused: only the reconciler's read-back fetches.
  ASSERT_TRUE(broker_->InjectError(1, "TOPIC_AUTHORIZATION_FAILED", 1000).ok());
  size_t second = 0;
  const int port = StartReconciling(&second);
  ASSERT_GT(port, 0) << Log(second);
  EXPECT_TRUE(WaitForLog(second, "are not judged (grant")) << Log(second);
  ASSERT_TRUE(broker_->ClearErrors(1).ok());
  ASSERT_TRUE(Exec("ALTER PUBLICATION outbox_pub DROP TABLE outbox").ok());
  Insert(4, "later");
  ASSERT_TRUE(Exec("ALTER PUBLICATION outbox_pub ADD TABLE outbox").ok());
  std::vector<ConsumedRecord> later =
      Read(prefix_ + "later", 4, absl::Seconds(60), absl::Seconds(3));
  EXPECT_EQ(later.size(), 4u) << Log(second);
  EXPECT_EQ(Missing(port), 4) << Log(second);
}

}  // namespace
}  // namespace outboxd::testing
