// End-to-end tests of the polling publishers (--source=poll and
// --source=notify): exact records, two pollers on one table, a kill in the
// middle of a batch, and notify waking well before the poll interval. Real
// PostgreSQL 15 (throwaway cluster), the dev broker, outboxd as its own
// process; records are read back by an independent librdkafka consumer.

#include <algorithm>
#include <csignal>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/harness/child_process.h"
#include "tests/harness/dev_broker.h"
#include "tests/harness/kafka_reader.h"
#include "tests/harness/outboxd_test_base.h"
#include "tests/harness/pg_cluster.h"

namespace outboxd::testing {
namespace {

// Rows of one aggregate must reach Kafka in seq order: checks every key's
// records, in (partition, offset) order, for one partition and rising seq.
void ExpectSeqOrderPerKey(const std::vector<ConsumedRecord>& all) {
  std::map<std::string, std::vector<const ConsumedRecord*>> by_key;
  for (const auto& r : all) by_key[r.key].push_back(&r);
  for (auto& [key, recs] : by_key) {
    std::sort(recs.begin(), recs.end(), [](auto* a, auto* b) {
      return std::tie(a->partition, a->offset) <
             std::tie(b->partition, b->offset);
    });
    EXPECT_EQ(recs.front()->partition, recs.back()->partition) << key;
    for (size_t i = 1; i < recs.size(); ++i) {
      EXPECT_LT(HeaderU64(*recs[i - 1], "outbox.seq"),
                HeaderU64(*recs[i], "outbox.seq"))
          << key;
    }
  }
}

class PollTest : public OutboxdTestBase {
 protected:
  PollTest()
      : OutboxdTestBase(
            {.db_stem = "pdb",
             .prefix_stem = "p",
             .slot_stem = "",  // polling uses no slot
             .sql_files = {"/sql/outbox.sql", "/sql/outbox_notify.sql"},
             // --source=poll unless a test's arguments say otherwise.
             .default_args = {"--metrics-address=", "--source=poll"},
             .ready = {"publishing from"}}) {}

  int64_t QueryInt(const std::string& sql) {
    int64_t v = -1;
    std::string text = Query(sql);
    EXPECT_TRUE(absl::SimpleAtoi(text, &v)) << sql << " -> " << text;
    return v;
  }
  // Waits until `sql` returns "t".
  bool WaitFor(const std::string& sql, absl::Duration timeout) {
    absl::Time deadline = absl::Now() + timeout;
    while (Query(sql) != "t") {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return true;
  }

  // `count` rows in transactions of `per_tx`, aggregates agg-0..agg-(k-1)
  // of type `type`; payload {"agg", "n", "tx"} and header tx.
  void InsertRows(int count, int per_tx, int aggregates,
                  const std::string& type, int tx_base = 0) {
    std::mt19937 rng(count + tx_base);
    for (int written = 0, tx = tx_base; written < count; ++tx) {
      std::vector<std::string> values;
      for (int i = 0; i < per_tx && written < count; ++i, ++written) {
        int agg = std::uniform_int_distribution<int>(0, aggregates - 1)(rng);
        values.push_back(absl::StrCat(
            "('", type, "', 'agg-", agg, "', 'Evt", written % 3, "', ",
            written % 97 == 5 ? "NULL"
                              : absl::StrCat("jsonb_build_object('agg', ", agg,
                                             ", 'n', ", written, ")"),
            ", jsonb_build_object('tx', '", tx, "'))"));
      }
      ASSERT_TRUE(Exec(absl::StrCat("INSERT INTO outbox (aggregatetype, "
                                    "aggregateid, type, payload, headers) "
                                    "VALUES ",
                                    absl::StrJoin(values, ",")))
                      .ok());
    }
  }
};

// Every row exactly as the record contract says (docs/ARCHITECTURE.md;
// outbox.seq in place of the LSN position), none missing, none extra, each
// aggregate in seq order, all marked published; SIGTERM exits 0.
TEST_F(PollTest, PollDeliversExactRecordsAndMarksThem) {
  const int kRows = 1500;
  InsertRows(kRows / 2, 40, 50, "order");
  ChildProcess* p = StartOutboxd({"--batch-size=200", "--poll-interval=200ms"});
  InsertRows(kRows / 2, 25, 50, "order", /*tx_base=*/1000);

  std::map<std::string, Row> rows;
  for (auto& row : QueryRows(
           ConnInfo(),
           "SELECT id::text, aggregatetype, aggregateid, type, payload::text, "
           "headers->>'tx', seq::text, "
           "(extract(epoch FROM created_at) * 1000)::bigint::text "
           "FROM outbox")) {
    rows[*row[0]] = row;
  }
  ASSERT_EQ(rows.size(), static_cast<size_t>(kRows));
  auto records = Read(prefix_ + "order", kRows);
  ASSERT_EQ(records.size(), static_cast<size_t>(kRows));

  const std::string source_id = absl::StrCat(
      Query("SELECT system_identifier::text || '/' || current_database() "
            "FROM pg_control_system()"),
      "/public.outbox");
  std::set<std::string> seen;
  for (const auto& r : records) {
    auto id = r.Header("id");
    ASSERT_TRUE(id.has_value());
    ASSERT_TRUE(seen.insert(*id).second) << "duplicate " << *id;
    auto it = rows.find(*id);
    ASSERT_NE(it, rows.end()) << *id;
    const Row& row = it->second;
    EXPECT_EQ(r.key, *row[2]);
    EXPECT_EQ(r.value, row[4]);  // NULL payload: tombstone
    EXPECT_EQ(r.timestamp_ms, std::stoll(*row[7]));
    ASSERT_EQ(r.headers.size(), 6u);
    EXPECT_EQ(r.headers[0], std::make_pair(std::string("id"), *row[0]));
    EXPECT_EQ(r.headers[1], std::make_pair(std::string("eventType"), *row[3]));
    EXPECT_EQ(r.headers[2], std::make_pair(std::string("tx"), *row[5]));
    EXPECT_EQ(r.headers[3], std::make_pair(std::string("outbox.seq"), *row[6]));
    // The source: the database and the table (README "Polling and push
    // publishers").
    EXPECT_EQ(r.headers[4],
              std::make_pair(std::string("outbox.source"), source_id));
    EXPECT_EQ(r.headers[5], std::make_pair(std::string("outbox.table"),
                                           std::string("public.outbox")));
  }
  ExpectSeqOrderPerKey(records);
  EXPECT_TRUE(
      WaitFor("SELECT count(*) = 0 FROM outbox WHERE published_at IS "
              "NULL",
              absl::Seconds(10)));
  EXPECT_EQ(QueryInt("SELECT count(*) FROM outbox WHERE published_at < "
                     "created_at"),
            0);

  p->Signal(SIGTERM);
  EXPECT_EQ(p->Wait(absl::Seconds(15)), 0) << ReadFile(LogPath(0));
}

TEST_F(PollTest, DeleteCleanupEmptiesTheTable) {
  InsertRows(300, 30, 10, "invoice");
  StartOutboxd(
      {"--poll-cleanup=delete", "--batch-size=64", "--poll-interval=200ms"});
  auto records = Read(prefix_ + "invoice", 300);
  EXPECT_EQ(records.size(), 300u);
  ExpectSeqOrderPerKey(records);
  EXPECT_TRUE(WaitFor("SELECT count(*) = 0 FROM outbox", absl::Seconds(10)));
}

// Two pollers on one table while rows keep coming: every row published
// exactly once (no failure, so no redelivery either), each aggregate still
// in seq order (a poller holds back rows behind an older row another poller
// has in flight), and both pollers did some of the work.
TEST_F(PollTest, TwoPollersNeverPublishARowTwice) {
  const int kRows = 3000;
  StartOutboxd({"--batch-size=50", "--poll-interval=50ms"});
  StartOutboxd({"--batch-size=50", "--poll-interval=50ms"});
  for (int i = 0; i < 30; ++i) {
    InsertRows(kRows / 30, 20, 40, "customer", i * 1000);
    absl::SleepFor(absl::Milliseconds(20));
  }
  auto records = Read(prefix_ + "customer", kRows);
  std::set<std::string> ids;
  for (const auto& r : records) {
    EXPECT_TRUE(ids.insert(*r.Header("id")).second)
        << "published twice: " << *r.Header("id");
  }
  EXPECT_EQ(records.size(), static_cast<size_t>(kRows));
  EXPECT_EQ(ids.size(), static_cast<size_t>(kRows));
  ExpectSeqOrderPerKey(records);
  EXPECT_TRUE(
      WaitFor("SELECT count(*) = 0 FROM outbox WHERE published_at IS "
              "NULL",
              absl::Seconds(10)));

  // Each poller's last progress line: "rows completed N".
  for (int n = 0; n < 2; ++n) {
    outboxd_[n]->Signal(SIGTERM);
    EXPECT_EQ(outboxd_[n]->Wait(absl::Seconds(15)), 0);
    std::string log = ReadFile(LogPath(n));
    size_t at = log.rfind("rows completed ");
    ASSERT_NE(at, std::string::npos) << log;
    int64_t completed = std::atoll(log.c_str() + at + 15);
    std::printf("[ measure ] poller %d completed %lld rows\n", n,
                static_cast<long long>(completed));
    EXPECT_GT(completed, 0) << "poller " << n << " did nothing";
  }
}

// SIGKILL while a large batch waits for slow acknowledgements: nothing is
// marked; after a restart every row is published (duplicates allowed) and
// marked.
TEST_F(PollTest, KilledMidBatchLosesNothing) {
  const int kRows = 3000;
  InsertRows(kRows, 100, 30, "shipment");
  for (int id = 1; id <= 3; ++id) ASSERT_TRUE(broker_->SetRtt(id, 2000).ok());
  ChildProcess* p = StartOutboxd(
      {"--batch-size=5000", "--poll-interval=200ms", "--log-level=debug"});
  ASSERT_TRUE(WaitForLog(0, "rows in flight", absl::Seconds(30)))
      << ReadFile(LogPath(0));
  absl::SleepFor(absl::Milliseconds(500));
  p->Signal(SIGKILL);
  EXPECT_TRUE(p->Wait(absl::Seconds(10)).has_value());
  EXPECT_EQ(QueryInt("SELECT count(*) FROM outbox WHERE published_at IS NOT "
                     "NULL"),
            0)
      << "rows marked before their acknowledgement";
  for (int id = 1; id <= 3; ++id) ASSERT_TRUE(broker_->SetRtt(id, 0).ok());

  StartOutboxd({"--batch-size=1000", "--poll-interval=200ms"});
  EXPECT_TRUE(
      WaitFor("SELECT count(*) = 0 FROM outbox WHERE published_at IS "
              "NULL",
              absl::Seconds(60)))
      << ReadFile(LogPath(1));
  auto records = Read(prefix_ + "shipment", kRows);
  std::set<std::string> ids;
  for (const auto& r : records) ids.insert(*r.Header("id"));
  std::set<std::string> expected;
  for (auto& row : QueryRows(ConnInfo(), "SELECT id::text FROM outbox")) {
    expected.insert(*row[0]);
  }
  EXPECT_EQ(ids, expected);
  std::printf("[ measure ] %zu records for %d rows (%zu duplicates)\n",
              records.size(), kRows, records.size() - ids.size());
}

// The poller's connection is terminated mid-batch, then the server restarts
// mid-stream: outboxd reconnects with the --reconnect-* backoff (as CDC),
// rolls the open batch back and sends its rows again; every row arrives and
// is marked. With the server down, it exits 1 only after
// --reconnect-give-up.
TEST_F(PollTest, LostConnectionAndRestartReconnectLosingNothing) {
  const int kRows = 2000;
  InsertRows(kRows, 100, 30, "invoice");
  // A slow broker keeps batches in flight while the connection goes.
  for (int id = 1; id <= 3; ++id) ASSERT_TRUE(broker_->SetRtt(id, 300).ok());
  const std::vector<std::string> reconnect = {
      "--reconnect-backoff-initial=50ms", "--reconnect-backoff-max=500ms"};
  std::vector<std::string> args = {"--batch-size=300", "--poll-interval=100ms",
                                   "--log-level=debug"};
  args.insert(args.end(), reconnect.begin(), reconnect.end());
  ChildProcess* p = StartOutboxd(args);
  ASSERT_NE(p, nullptr);
  ASSERT_TRUE(WaitForLog(0, "rows in flight", absl::Seconds(30))) << Log(0);
  ASSERT_EQ(Query("SELECT count(pg_terminate_backend(pid)) > 0 FROM "
                  "pg_stat_activity WHERE application_name = 'outboxd'"),
            "t");
  ASSERT_TRUE(WaitForLog(0, "reconnecting", absl::Seconds(30))) << Log(0);
  // Mid-stream server restart, then more rows.
  ASSERT_TRUE(
      WaitFor("SELECT count(*) > 0 FROM outbox WHERE published_at IS "
              "NOT NULL",
              absl::Seconds(60)))
      << Log(0);
  ASSERT_TRUE(cluster_->Restart().ok());
  InsertRows(500, 50, 30, "invoice", /*tx_base=*/1000);
  for (int id = 1; id <= 3; ++id) ASSERT_TRUE(broker_->SetRtt(id, 0).ok());
  EXPECT_TRUE(
      WaitFor("SELECT count(*) = 0 FROM outbox WHERE published_at IS "
              "NULL",
              absl::Seconds(90)))
      << Log(0);
  EXPECT_TRUE(p->Running()) << Log(0);
  auto records = Read(prefix_ + "invoice", kRows + 500);
  std::set<std::string> ids;
  for (const auto& r : records) ids.insert(*r.Header("id"));
  std::set<std::string> expected;
  for (auto& row : QueryRows(ConnInfo(), "SELECT id::text FROM outbox")) {
    expected.insert(*row[0]);
  }
  EXPECT_EQ(expected.size(), static_cast<size_t>(kRows + 500));
  EXPECT_EQ(ids, expected);
  std::string log = Log(0);
  size_t reconnects = 0;
  for (size_t at = log.find("reconnecting"); at != std::string::npos;
       at = log.find("reconnecting", at + 1)) {
    ++reconnects;
  }
  EXPECT_GE(reconnects, 2u) << log;
  std::printf(
      "[ measure ] %zu records for %d rows (%zu duplicates), %zu "
      "reconnects\n",
      records.size(), kRows + 500, records.size() - ids.size(), reconnects);

  // Server down: retried for --reconnect-give-up, then exit 1.
  p->Signal(SIGTERM);
  EXPECT_EQ(p->Wait(absl::Seconds(20)), 0);
  args = {"--poll-interval=100ms", "--reconnect-give-up=3s"};
  args.insert(args.end(), reconnect.begin(), reconnect.end());
  ChildProcess* q = StartOutboxd(args);
  ASSERT_NE(q, nullptr);
  // outboxd may see the connection go before Stop() returns: measured from
  // the start of the stop.
  const absl::Time stopping = absl::Now();
  ASSERT_TRUE(cluster_->Stop().ok());
  std::optional<int> code = q->Wait(absl::Seconds(60));
  const absl::Duration took = absl::Now() - stopping;
  ASSERT_TRUE(cluster_->StartAgain().ok());
  EXPECT_EQ(code, 1) << Log(1);
  EXPECT_GE(took, absl::Seconds(3)) << Log(1);
  EXPECT_NE(Log(1).find("gave up after 3s"), std::string::npos) << Log(1);
}

// LISTEN/NOTIFY wakes the publisher at once: a row is published well within
// half the poll interval (asserted loosely to stay stable).
TEST_F(PollTest, NotifyPublishesWellBeforeThePollInterval) {
  const absl::Duration kInterval = absl::Seconds(4);
  StartOutboxd({"--source=notify", "--poll-interval=4s"});
  absl::SleepFor(absl::Milliseconds(300));  // into the first wait
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(Exec(absl::StrCat("SELECT outbox_emit('payment', 'pay-", i,
                                  "', 'Paid', '{\"i\": ", i, "}')"))
                    .ok());
    ASSERT_TRUE(WaitFor(absl::StrCat("SELECT count(*) = ", i + 1,
                                     " FROM outbox WHERE published_at IS NOT "
                                     "NULL"),
                        absl::Seconds(10)));
    absl::SleepFor(absl::Milliseconds(100));
  }
  double worst_ms = std::stod(
      Query("SELECT max(extract(epoch FROM published_at - created_at) * 1000) "
            "FROM outbox"));
  std::printf(
      "[ measure ] notify: worst commit-to-marked latency %.1f ms "
      "(poll interval %s)\n",
      worst_ms, absl::FormatDuration(kInterval).c_str());
  EXPECT_LT(worst_ms, absl::ToDoubleMilliseconds(kInterval) / 2);
  auto records = Read(prefix_ + "payment", 5);
  EXPECT_EQ(records.size(), 5u);
}

// A row that is not an event is dead-lettered (reason, the row, its seq)
// by the same row decoding as CDC mode, and the rows around it are
// published; a depends_on column reaches the record as outbox.depends-on.
TEST_F(PollTest, BadRowIsDeadLetteredAndDependsOnIsPublished) {
  const std::string first = "00000000-0000-4000-8000-000000000001";
  ASSERT_TRUE(Exec("ALTER TABLE outbox ADD COLUMN depends_on uuid[]").ok());
  ASSERT_TRUE(Exec(absl::StrCat("INSERT INTO outbox (id, aggregatetype, "
                                "aggregateid, type, payload) VALUES ('",
                                first, "', 'cart', 'c1', 'A', '{}')"))
                  .ok());
  ASSERT_TRUE(Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, "
                   "payload, headers) VALUES ('cart', 'c1', 'B', '{}', "
                   "'{\"n\": 1}')")
                  .ok());
  ASSERT_TRUE(Exec(absl::StrCat("INSERT INTO outbox (aggregatetype, "
                                "aggregateid, type, payload, depends_on) "
                                "VALUES ('cart', 'c1', 'C', '{}', ARRAY['",
                                first, "']::uuid[])"))
                  .ok());
  const std::string bad_seq = Query("SELECT seq FROM outbox WHERE type = 'B'");
  const std::string bad_id = Query("SELECT id FROM outbox WHERE type = 'B'");
  StartOutboxd({"--poll-interval=200ms", "--dlq-topic=" + prefix_ + "dlq"});

  auto records = Read(prefix_ + "cart", 2);
  ASSERT_EQ(records.size(), 2u) << Log(0);
  EXPECT_EQ(records[0].Header("eventType"), "A");
  EXPECT_FALSE(records[0].Header("outbox.depends-on").has_value());
  EXPECT_EQ(records[1].Header("eventType"), "C");
  EXPECT_EQ(records[1].Header("outbox.depends-on"), first);
  auto dlq = Read(prefix_ + "dlq", 1);
  ASSERT_EQ(dlq.size(), 1u) << Log(0);
  EXPECT_EQ(dlq[0].key, "c1");
  EXPECT_EQ(dlq[0].Header("outbox.error"), "header 'n' is not a string");
  EXPECT_EQ(dlq[0].Header("outbox.seq"), bad_seq);
  ASSERT_TRUE(dlq[0].value.has_value());
  EXPECT_NE(dlq[0].value->find(bad_id), std::string::npos) << *dlq[0].value;
  EXPECT_TRUE(
      WaitFor("SELECT count(*) = 0 FROM outbox WHERE published_at IS NULL",
              absl::Seconds(10)));
}

TEST_F(PollTest, MissingPublishedAtColumnIsAClearFailure) {
  ASSERT_TRUE(Exec("ALTER TABLE outbox DROP COLUMN published_at").ok());
  auto r = RunCommand({OUTBOXD_BINARY, "--pg=" + ConnInfo(),
                       "--brokers=" + broker_->bootstrap(), "--source=poll",
                       "--metrics-address="},
                      absl::Seconds(30));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->exit_code, 1) << r->output;
  EXPECT_NE(r->output.find("published_at"), std::string::npos) << r->output;
}

TEST_F(PollTest, BadPollFlagsAreExit2) {
  for (const std::vector<std::string>& flags :
       {std::vector<std::string>{"--source=poll", "--poll-cleanup=archive"},
        {"--source=poll", "--batch-size=0"},
        {"--source=notify", "--poll-grace=-1s"},
        {"--source=poll", "--table="}}) {
    std::vector<std::string> argv = {OUTBOXD_BINARY, "--pg=" + ConnInfo(),
                                     "--brokers=127.0.0.1:9"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    auto r = RunCommand(argv, absl::Seconds(10));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->exit_code, 2) << absl::StrJoin(flags, " ") << r->output;
  }
}

}  // namespace
}  // namespace outboxd::testing
