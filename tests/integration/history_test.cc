// What outboxd checks against the database so that no committed event is
// silently passed over (ctest label fault): a partitioned outbox table, a
// publication that filters, a republish that could not read the table, and
// a server whose WAL went back (a promoted standby from before outboxd's
// first run: neither the slot nor outboxd's record is there).
#include <libpq-fe.h>

#include <csignal>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "tests/integration/fault_fixture.h"

namespace outboxd::testing {
namespace {

class HistoryTest : public FaultTest {
 protected:
  std::string Topic() const { return prefix_ + "h"; }

  // Waits for outboxd `o` to exit; its code (-1 when it did not).
  int ExitCodeOf(size_t o) {
    std::optional<int> code = Outboxd(o).Wait(absl::Seconds(60));
    return code.value_or(-1);
  }
  // The lines of log `o` that contain `text`.
  std::vector<std::string> LinesWith(size_t o, const std::string& text) {
    std::vector<std::string> lines;
    for (absl::string_view line : absl::StrSplit(Log(o), '\n')) {
      if (absl::StrContains(line, text)) lines.emplace_back(line);
    }
    return lines;
  }
};

// A partitioned outbox (sql/outbox_partitioned.sql) with a publication
// outboxd creates: published through the root, every event arrives. An
// existing publication without publish_via_partition_root is refused.
TEST_F(HistoryTest, PartitionedOutboxPublishesEveryEvent) {
  std::string install =
      ReadFile(absl::StrCat(OUTBOXD_SOURCE_DIR, "/sql/outbox_partitioned.sql"));
  ASSERT_FALSE(install.empty());
  ASSERT_TRUE(Exec(install).ok());
  ASSERT_TRUE(Exec("SELECT * FROM outbox.maintain_partitions()").ok());
  const std::string table = "--table=public.outbox_partitioned";

  // A publication of the user's without via-root: refused, naming the fix.
  ASSERT_TRUE(Exec("CREATE PUBLICATION leafpub FOR TABLE outbox_partitioned "
                   "WITH (publish = 'insert')")
                  .ok());
  size_t refused = StartOutboxd(
      {"--topic=" + Topic(), table, "--publication=leafpub"}, false);
  EXPECT_EQ(ExitCodeOf(refused), 1) << Log(refused);
  std::vector<std::string> lines =
      LinesWith(refused, "SET (publish_via_partition_root = true)");
  ASSERT_EQ(lines.size(), 1u) << Log(refused);
  EXPECT_TRUE(absl::StrContains(lines[0], "ALTER PUBLICATION \"leafpub\""))
      << lines[0];

  // One outboxd creates: every event arrives.
  size_t o = StartOutboxd({"--topic=" + Topic(), table, "--publication=mypub"});
  EXPECT_EQ(Query("SELECT pubviaroot FROM pg_publication WHERE pubname = "
                  "'mypub'"),
            "t");
  ASSERT_TRUE(Exec("INSERT INTO outbox_partitioned (aggregatetype, "
                   "aggregateid, type, payload) SELECT 'h', 'agg-' || (g % 7), "
                   "'Evt', jsonb_build_object('g', g) FROM "
                   "generate_series(1, 200) g")
                  .ok());
  std::vector<ConsumedRecord> records = Read(Topic(), 200);
  std::set<std::string> ids;
  for (const Row& row : QueryRows(ConnInfo(),
                                  "SELECT id::text FROM "
                                  "outbox_partitioned")) {
    ids.insert(row[0].value_or(""));
  }
  Tally t = CountIn(ids, records);
  std::printf("[ measure ] partitioned: %zu written, %zu delivered, %zu lost\n",
              t.expected, t.received, t.lost);
  EXPECT_EQ(t.expected, 200u);
  EXPECT_EQ(t.lost, 0u) << Log(o);

  // The publication stops publishing via the root while outboxd streams:
  // the next insert arrives under its partition's name and stops outboxd
  // without confirming it, instead of being ignored as another table's.
  ASSERT_TRUE(
      Exec("ALTER PUBLICATION mypub SET (publish_via_partition_root = false)")
          .ok());
  const Lsn before = CurrentWalLsn();
  ASSERT_TRUE(Exec("INSERT INTO outbox_partitioned (aggregatetype, "
                   "aggregateid, type, payload) VALUES ('h', 'agg-late', "
                   "'Evt', '{}')")
                  .ok());
  EXPECT_EQ(ExitCodeOf(o), 1) << Log(o);
  EXPECT_EQ(LinesWith(o, "a partition of public.outbox_partitioned").size(), 1u)
      << Log(o);
  EXPECT_LE(ConfirmedFlush(), before) << "confirmed past the ignored insert";
}

// A publication that filters rows or columns of an outbox table is
// refused at start, naming the publication and the filter.
TEST_F(HistoryTest, APublicationWithARowFilterIsRefused) {
  ASSERT_TRUE(Exec("CREATE PUBLICATION filtered FOR TABLE outbox "
                   "WHERE (aggregatetype <> 'internal') "
                   "WITH (publish = 'insert')")
                  .ok());
  size_t o =
      StartOutboxd({"--topic=" + Topic(), "--publication=filtered"}, false);
  EXPECT_EQ(ExitCodeOf(o), 1) << Log(o);
  std::vector<std::string> lines = LinesWith(o, "row filter");
  ASSERT_EQ(lines.size(), 1u) << Log(o);
  EXPECT_TRUE(absl::StrContains(lines[0], "publication filtered")) << lines[0];
  EXPECT_TRUE(absl::StrContains(lines[0], "aggregatetype <> 'internal'"))
      << lines[0];
  EXPECT_EQ(ConfirmedFlush(), Lsn()) << "no slot for a refused publication";

  ASSERT_TRUE(Exec("CREATE PUBLICATION colpub FOR TABLE outbox "
                   "(id, aggregatetype, aggregateid, type) "
                   "WITH (publish = 'insert')")
                  .ok());
  size_t c =
      StartOutboxd({"--topic=" + Topic(), "--publication=colpub"}, false);
  EXPECT_EQ(ExitCodeOf(c), 1) << Log(c);
  lines = LinesWith(c, "column list");
  ASSERT_EQ(lines.size(), 1u) << Log(c);
  EXPECT_TRUE(absl::StrContains(lines[0], "publication colpub")) << lines[0];
}

// --on-slot-loss=republish on a table without created_at (Debezium's
// default table): exit 2 at start, naming the column.
TEST_F(HistoryTest, RepublishWithoutCreatedAtExitsTwoAtStart) {
  ASSERT_TRUE(Exec("CREATE TABLE dbz_outbox (id uuid PRIMARY KEY, "
                   "aggregatetype text NOT NULL, aggregateid text NOT NULL, "
                   "type text NOT NULL, payload jsonb)")
                  .ok());
  size_t o = StartOutboxd({"--topic=" + Topic(), "--table=public.dbz_outbox",
                           "--publication=dbzpub", "--on-slot-loss=republish"},
                          false);
  EXPECT_EQ(ExitCodeOf(o), 2) << Log(o);
  EXPECT_EQ(LinesWith(o, "created_at").size(), 1u) << Log(o);
  EXPECT_EQ(ConfirmedFlush(), Lsn()) << "nothing streamed";
}

// A standby frozen before outboxd's first run (a restore from an older
// backup) is promoted when the primary dies: it has neither the slot nor
// outboxd's record, and its WAL is behind what outboxd streamed. The
// running outboxd creates a new slot there and streams from it: every new
// event arrives, and nothing is confirmed beyond the server's WAL.
TEST_F(HistoryTest, APromotedStandbyFromBeforeTheFirstRunLosesNothing) {
  auto primary = PgCluster::Start({});
  ASSERT_TRUE(primary.ok()) << primary.status();
  std::string install =
      ReadFile(absl::StrCat(OUTBOXD_SOURCE_DIR, "/sql/outbox.sql"));
  ASSERT_TRUE((*primary)->Exec("postgres", install).ok());
  StandbyOptions so;
  so.slot = "frozen";
  auto standby = (*primary)->StartStandby(so);
  ASSERT_TRUE(standby.ok()) << standby.status();
  ASSERT_TRUE((*primary)->WaitForReplay(**standby).ok());
  ASSERT_TRUE((*standby)->Stop().ok());  // the "older backup"

  const std::string both = MultiHostConnInfo({primary->get(), standby->get()});
  std::vector<std::string> argv = BaseArgs();
  for (auto& a : argv) {
    if (a.rfind("--pg=", 0) == 0) a = "--pg=" + both;
  }
  argv.push_back("--topic=" + Topic());
  size_t o = StartOutboxd({}, true, {}, argv);
  // Events with some bulk, so that the primary's WAL runs well ahead of
  // the frozen standby's.
  ASSERT_TRUE((*primary)
                  ->Exec("postgres",
                         "INSERT INTO outbox (aggregatetype, aggregateid, "
                         "type, payload) SELECT 'h', 'agg-' || (g % 7), "
                         "'before', jsonb_build_object('pad', repeat('x', "
                         "2000)) FROM generate_series(1, 200) g")
                  .ok());
  ASSERT_EQ(Read(Topic(), 200).size(), 200u) << Log(o);
  const std::string primary_wal =
      (*primary)->Query("postgres", "SELECT pg_current_wal_lsn()").value_or("");
  const std::string slot_where =
      absl::StrCat("FROM pg_replication_slots WHERE slot_name = '", slot_, "'");
  absl::Time deadline = absl::Now() + absl::Seconds(60);
  while ((*primary)
                 ->Query("postgres",
                         absl::StrCat("SELECT confirmed_flush_lsn >= '",
                                      primary_wal, "' ", slot_where))
                 .value_or("") != "t" &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }

  ASSERT_TRUE((*primary)->Crash().ok());
  ASSERT_TRUE((*standby)->StartAgain().ok());
  ASSERT_TRUE((*standby)->Promote().ok());
  deadline = absl::Now() + absl::Seconds(60);
  while (LinesWith(o, "streaming from slot").size() < 2 &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_EQ(LinesWith(o, "streaming from slot").size(), 2u) << Log(o);
  const std::string standby_wal =
      (*standby)->Query("postgres", "SELECT pg_current_wal_lsn()").value_or("");
  EXPECT_LT(Lsn::Parse(standby_wal).value_or(Lsn()),
            Lsn::Parse(primary_wal).value_or(Lsn()))
      << "the standby's WAL must be behind what outboxd streamed";

  ASSERT_TRUE((*standby)
                  ->Exec("postgres",
                         "INSERT INTO outbox (aggregatetype, aggregateid, "
                         "type, payload) SELECT 'h', 'agg-' || (g % 7), "
                         "'after', jsonb_build_object('g', g) FROM "
                         "generate_series(1, 20) g")
                  .ok());
  std::vector<ConsumedRecord> records =
      Read(Topic(), 220, absl::Seconds(20), absl::Seconds(2));
  size_t after = 0;
  for (const auto& r : records) after += r.Header("eventType") == "after";
  std::printf(
      "[ measure ] promoted standby from before the first run: 20 written, "
      "%zu delivered, %zu lost\n",
      after, after >= 20 ? 0 : 20 - after);
  EXPECT_EQ(after, 20u) << Log(o);
  // Never confirmed, nor recorded, beyond the server's WAL.
  absl::SleepFor(absl::Seconds(1));
  EXPECT_EQ(
      (*standby)
          ->Query("postgres", absl::StrCat("SELECT confirmed_flush_lsn <= "
                                           "pg_current_wal_lsn() ",
                                           slot_where))
          .value_or(""),
      "t");
  EXPECT_EQ((*standby)
                ->Query("postgres",
                        "SELECT bool_and(last_ack_lsn <= pg_current_wal_lsn()) "
                        "FROM outbox.publisher_state")
                .value_or(""),
            "t");
  EXPECT_TRUE(Outboxd(o).Running()) << Log(o);
  Outboxd(o).Signal(SIGTERM);
  EXPECT_EQ(Outboxd(o).Wait(absl::Seconds(30)), 0) << Log(o);
}

}  // namespace
}  // namespace outboxd::testing
