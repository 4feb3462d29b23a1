// Integration tests of src/pg against a throwaway PostgreSQL 15 cluster:
// connection errors, replication setup (wal_level, publication, slot) and
// the CopyBoth replication stream (XLogData, keepalives, status updates,
// clean stop, active slot, terminated walsender); and the CDC source on top
// of it (sources/cdc_source.h): when its Read says "nothing".
#include "pg/replication_stream.h"

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <variant>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "metrics/outboxd_metrics.h"
#include "pg/connection.h"
#include "pg/replication_setup.h"
#include "sources/cdc_source.h"
#include "tests/harness/pg_cluster.h"

namespace outboxd {
namespace {

using ::outboxd::testing::PgCluster;
using ::outboxd::testing::PgClusterOptions;

class ReplicationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto cluster = PgCluster::Start();
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = cluster->release();
    ASSERT_TRUE(cluster_
                    ->Exec("postgres",
                           "CREATE TABLE public.outbox (id uuid PRIMARY KEY "
                           "DEFAULT gen_random_uuid(), aggregatetype text NOT "
                           "NULL, aggregateid text NOT NULL, type text NOT "
                           "NULL, payload jsonb)")
                    .ok());
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }

  static std::unique_ptr<PgConnection> Connect(
      PgConnection::Mode mode = PgConnection::Mode::kNormal) {
    auto conn = PgConnection::Connect(cluster_->ConnInfo(), mode);
    EXPECT_TRUE(conn.ok()) << conn.status();
    return conn.ok() ? std::move(*conn) : nullptr;
  }

  static std::string Query(const std::string& sql) {
    auto value = cluster_->Query("postgres", sql);
    EXPECT_TRUE(value.ok()) << value.status();
    return value.ok() ? *value : "";
  }

  // A publication on public.outbox plus a fresh pgoutput slot.
  static ReplicationSetupOptions SetUpSlot(const std::string& slot) {
    ReplicationSetupOptions options;
    options.tables = {QualifiedName{"public", "outbox"}};
    options.publication = "outbox_pub";
    options.slot = slot;
    auto conn = Connect();
    EXPECT_TRUE(EnsurePublication(*conn, options).ok());
    auto state = EnsureSlot(*conn, options);
    EXPECT_TRUE(state.ok()) << state.status();
    return options;
  }

  static ReplicationStreamOptions StreamOptions(
      const ReplicationSetupOptions& setup) {
    ReplicationStreamOptions options;
    options.conninfo = cluster_->ConnInfo();
    options.slot = setup.slot;
    options.publication = setup.publication;
    return options;
  }

  static Lsn ConfirmedFlush(const std::string& slot) {
    auto lsn = Lsn::Parse(Query(absl::StrCat(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE "
        "slot_name = '",
        slot, "'")));
    EXPECT_TRUE(lsn.ok()) << lsn.status();
    return lsn.ok() ? *lsn : Lsn();
  }

  static void InsertEvents(int count) {
    ASSERT_TRUE(cluster_
                    ->Exec("postgres",
                           absl::StrCat("INSERT INTO public.outbox "
                                        "(aggregatetype, aggregateid, type, "
                                        "payload) SELECT 'order', 'o' || i, "
                                        "'Created', '{}' FROM "
                                        "generate_series(1, ",
                                        count, ") i"))
                    .ok());
  }

  static PgCluster* cluster_;
};

PgCluster* ReplicationTest::cluster_ = nullptr;

// --- connection ------------------------------------------------------------

TEST_F(ReplicationTest, ConnectsWithKeyValueAndUriAndSetsApplicationName) {
  auto conn = Connect();
  ASSERT_NE(conn, nullptr);
  auto result = conn->Exec("SELECT current_setting('application_name')");
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_STREQ(PQgetvalue(result->get(), 0, 0), "outboxd");

  auto uri = PgConnection::Connect(
      absl::StrCat("postgresql://postgres@127.0.0.1:", cluster_->port(),
                   "/postgres?application_name=mine"),
      PgConnection::Mode::kNormal);
  ASSERT_TRUE(uri.ok()) << uri.status();
  result = (*uri)->Exec("SELECT current_setting('application_name')");
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_STREQ(PQgetvalue(result->get(), 0, 0), "mine");
}

TEST_F(ReplicationTest, ReplicationModeConnection) {
  auto conn = Connect(PgConnection::Mode::kReplication);
  ASSERT_NE(conn, nullptr);
  auto result = conn->Exec("IDENTIFY_SYSTEM");
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(PQntuples(result->get()), 1);
  EXPECT_STREQ(PQgetvalue(result->get(), 0, 3), "postgres");  // dbname
}

TEST_F(ReplicationTest, ConnectErrorsMapAndNeverShowThePassword) {
  auto missing_role = PgConnection::Connect(
      absl::StrCat("host=127.0.0.1 port=", cluster_->port(),
                   " user=nobody password=hunter2 dbname=postgres"),
      PgConnection::Mode::kNormal);
  ASSERT_FALSE(missing_role.ok());
  EXPECT_EQ(missing_role.status().code(), absl::StatusCode::kPermissionDenied)
      << missing_role.status();
  EXPECT_FALSE(absl::StrContains(missing_role.status().message(), "hunter2"));

  auto missing_db = PgConnection::Connect(
      absl::StrCat("postgresql://postgres:hunter2@127.0.0.1:", cluster_->port(),
                   "/nosuchdb"),
      PgConnection::Mode::kNormal);
  ASSERT_FALSE(missing_db.ok());
  EXPECT_EQ(missing_db.status().code(), absl::StatusCode::kFailedPrecondition)
      << missing_db.status();
  EXPECT_FALSE(absl::StrContains(missing_db.status().message(), "hunter2"));
}

TEST_F(ReplicationTest, StatementErrorsKeepSqlstateMeaning) {
  auto conn = Connect();
  auto undefined = conn->Exec("SELECT * FROM no_such_table");
  EXPECT_EQ(undefined.status().code(), absl::StatusCode::kFailedPrecondition)
      << undefined.status();
  EXPECT_TRUE(absl::StrContains(undefined.status().message(), "42P01"));
  auto params = conn->ExecParams("SELECT $1::int + 1", {std::string("41")});
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_STREQ(PQgetvalue(params->get(), 0, 0), "42");
  auto null_param = conn->ExecParams("SELECT $1::text IS NULL", {std::nullopt});
  ASSERT_TRUE(null_param.ok()) << null_param.status();
  EXPECT_STREQ(PQgetvalue(null_param->get(), 0, 0), "t");
}

// --- wal_level -----------------------------------------------------------

TEST_F(ReplicationTest, WalLevelLogicalPasses) {
  auto conn = Connect();
  EXPECT_TRUE(CheckWalLevel(*conn).ok());
}

TEST_F(ReplicationTest, WalLevelReplicaIsFailedPrecondition) {
  PgClusterOptions options;
  options.wal_level = "replica";
  auto replica = PgCluster::Start(options);
  ASSERT_TRUE(replica.ok()) << replica.status();
  auto conn = PgConnection::Connect((*replica)->ConnInfo(),
                                    PgConnection::Mode::kNormal);
  ASSERT_TRUE(conn.ok()) << conn.status();
  absl::Status status = CheckWalLevel(**conn);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "wal_level is 'replica'"))
      << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "wal_level=logical"))
      << status;
}

// --- publication -----------------------------------------------------------

TEST_F(ReplicationTest, EnsurePublicationCreatesItOnceForTheTable) {
  auto conn = Connect();
  ReplicationSetupOptions options;
  options.tables = {QualifiedName{"public", "outbox"}};
  options.publication = "pub_create";
  ASSERT_TRUE(EnsurePublication(*conn, options).ok());
  EXPECT_EQ(Query("SELECT count(*) FROM pg_publication_tables WHERE pubname = "
                  "'pub_create' AND schemaname = 'public' AND tablename = "
                  "'outbox'"),
            "1");
  EXPECT_EQ(Query("SELECT pubinsert::text || pubupdate::text || "
                  "pubdelete::text FROM pg_publication WHERE pubname = "
                  "'pub_create'"),
            "truefalsefalse");
  // Idempotent.
  EXPECT_TRUE(EnsurePublication(*conn, options).ok());
}

TEST_F(ReplicationTest, EnsurePublicationWithoutTableIsEmpty) {
  auto conn = Connect();
  ReplicationSetupOptions options;
  options.tables.clear();
  options.publication = "pub_messages_only";
  ASSERT_TRUE(EnsurePublication(*conn, options).ok());
  EXPECT_EQ(Query("SELECT count(*) FROM pg_publication WHERE pubname = "
                  "'pub_messages_only'"),
            "1");
  EXPECT_EQ(Query("SELECT count(*) FROM pg_publication_tables WHERE pubname = "
                  "'pub_messages_only'"),
            "0");
}

TEST_F(ReplicationTest, EnsurePublicationForMissingTableNamesIt) {
  auto conn = Connect();
  ReplicationSetupOptions options;
  options.tables = {QualifiedName{"app", "no_such_outbox"}};
  options.publication = "pub_missing";
  absl::Status status = EnsurePublication(*conn, options);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "app.no_such_outbox"))
      << status;
  EXPECT_EQ(Query("SELECT count(*) FROM pg_publication WHERE pubname = "
                  "'pub_missing'"),
            "0");
}

TEST_F(ReplicationTest, EnsurePublicationCreatesItForEveryTable) {
  ASSERT_TRUE(cluster_
                  ->Exec("postgres",
                         "CREATE SCHEMA IF NOT EXISTS billing; "
                         "CREATE TABLE billing.events (LIKE public.outbox)")
                  .ok());
  auto conn = Connect();
  ReplicationSetupOptions options;
  options.tables = {QualifiedName{"public", "outbox"},
                    QualifiedName{"billing", "events"}};
  options.publication = "pub_two";
  ASSERT_TRUE(EnsurePublication(*conn, options).ok());
  EXPECT_EQ(Query("SELECT string_agg(schemaname || '.' || tablename, ',' "
                  "ORDER BY schemaname) FROM pg_publication_tables WHERE "
                  "pubname = 'pub_two'"),
            "billing.events,public.outbox");
  EXPECT_TRUE(EnsurePublication(*conn, options).ok());  // idempotent

  // A missing table among several: named, nothing created.
  options.tables.push_back(QualifiedName{"billing", "no_such"});
  options.publication = "pub_three";
  absl::Status status = EnsurePublication(*conn, options);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "billing.no_such")) << status;
  EXPECT_EQ(Query("SELECT count(*) FROM pg_publication WHERE pubname = "
                  "'pub_three'"),
            "0");
}

TEST_F(ReplicationTest, EnsurePublicationExistingWithoutATableNamesTheFix) {
  ASSERT_TRUE(cluster_
                  ->Exec("postgres",
                         "CREATE SCHEMA IF NOT EXISTS billing; "
                         "CREATE TABLE IF NOT EXISTS billing.events "
                         "(LIKE public.outbox); "
                         "CREATE PUBLICATION pub_other; "
                         "CREATE PUBLICATION pub_partial FOR TABLE "
                         "public.outbox WITH (publish = 'insert'); "
                         "CREATE PUBLICATION pub_schema FOR TABLES IN SCHEMA "
                         "billing, public WITH (publish = 'insert'); "
                         "CREATE PUBLICATION pub_no_insert FOR TABLE "
                         "public.outbox, billing.events "
                         "WITH (publish = 'delete')")
                  .ok());
  auto conn = Connect();
  ReplicationSetupOptions options;
  options.tables = {QualifiedName{"public", "outbox"},
                    QualifiedName{"billing", "events"}};
  // The publication is the user's: never altered, but one that would not
  // carry a table's events is an error naming the missing tables.
  options.publication = "pub_other";
  absl::Status status = EnsurePublication(*conn, options);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_TRUE(absl::StrContains(
      status.message(), "does not include public.outbox, billing.events"))
      << status;
  options.publication = "pub_partial";
  status = EnsurePublication(*conn, options);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_TRUE(
      absl::StrContains(status.message(), "does not include billing.events,"))
      << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "ADD TABLE billing.events"))
      << status;
  options.publication = "pub_no_insert";
  status = EnsurePublication(*conn, options);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "does not publish inserts"))
      << status;
  // Covered through their schemas: fine; so is a table subset.
  options.publication = "pub_schema";
  EXPECT_TRUE(EnsurePublication(*conn, options).ok());
  options.publication = "pub_partial";
  options.tables = {QualifiedName{"public", "outbox"}};
  EXPECT_TRUE(EnsurePublication(*conn, options).ok());
  EXPECT_EQ(Query("SELECT count(*) FROM pg_publication_tables WHERE "
                  "pubname = 'pub_partial'"),
            "1");
}

TEST_F(ReplicationTest, OddTableAndPublicationNamesAreQuoted) {
  ASSERT_TRUE(cluster_
                  ->Exec("postgres",
                         R"(CREATE SCHEMA "My Schema"; )"
                         R"(CREATE TABLE "My Schema"."out ""box"" 1" )"
                         R"((id int primary key))")
                  .ok());
  auto name = ParseQualifiedName(R"("My Schema"."out ""box"" 1")");
  ASSERT_TRUE(name.ok()) << name.status();
  auto conn = Connect();
  ReplicationSetupOptions options;
  options.tables = {*name};
  options.publication = "pub \"odd\" 'name'";
  ASSERT_TRUE(EnsurePublication(*conn, options).ok());
  EXPECT_EQ(Query(R"(SELECT tablename FROM pg_publication_tables WHERE )"
                  R"(pubname = 'pub "odd" ''name''' AND )"
                  R"(schemaname = 'My Schema')"),
            "out \"box\" 1");
}

TEST_F(ReplicationTest, InjectionThroughNamesFailsCleanly) {
  auto conn = Connect();
  ReplicationSetupOptions options;
  options.tables = {
      QualifiedName{"public", "outbox\"; DROP TABLE public.outbox; --"}};
  options.publication = "pub_inject";
  absl::Status status = EnsurePublication(*conn, options);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;

  options.tables = {QualifiedName{"public", "outbox"}};
  options.publication = "x\" FOR ALL TABLES; DROP TABLE public.outbox; --";
  EXPECT_TRUE(EnsurePublication(*conn, options).ok());
  EXPECT_EQ(Query("SELECT count(*) FROM pg_publication WHERE pubname = "
                  "'x\" FOR ALL TABLES; DROP TABLE public.outbox; --'"),
            "1");

  options.slot = "s', 'test_decoding') --";
  auto slot = EnsureSlot(*conn, options);
  EXPECT_EQ(slot.status().code(), absl::StatusCode::kInvalidArgument)
      << slot.status();

  EXPECT_EQ(Query("SELECT count(*) FROM pg_class WHERE relname = 'outbox'"),
            "1");
  EXPECT_FALSE(ParseQualifiedName("outbox; DROP TABLE outbox").ok());
}

// --- slot ------------------------------------------------------------------

TEST_F(ReplicationTest, EnsureSlotCreatesPgoutputSlotOnce) {
  auto conn = Connect();
  ReplicationSetupOptions options;
  options.slot = "slot_create";
  auto created = EnsureSlot(*conn, options);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_TRUE(created->created);
  EXPECT_TRUE(created->confirmed_flush.valid());
  EXPECT_EQ(Query("SELECT plugin || '/' || slot_type FROM "
                  "pg_replication_slots WHERE slot_name = 'slot_create'"),
            "pgoutput/logical");

  auto again = EnsureSlot(*conn, options);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->confirmed_flush, created->confirmed_flush);
}

TEST_F(ReplicationTest, EnsureSlotRefusesTestDecodingSlot) {
  ASSERT_TRUE(cluster_
                  ->Exec("postgres",
                         "SELECT pg_create_logical_replication_slot("
                         "'slot_td', 'test_decoding')")
                  .ok());
  auto conn = Connect();
  ReplicationSetupOptions options;
  options.slot = "slot_td";
  auto state = EnsureSlot(*conn, options);
  EXPECT_EQ(state.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(
      state.status().message(),
      "replication slot slot_td uses plugin 'test_decoding', outboxd needs "
      "'pgoutput'"))
      << state.status();
}

TEST_F(ReplicationTest, EnsureSlotRefusesPhysicalSlot) {
  ASSERT_TRUE(cluster_
                  ->Exec("postgres",
                         "SELECT pg_create_physical_replication_slot("
                         "'slot_phys')")
                  .ok());
  auto conn = Connect();
  ReplicationSetupOptions options;
  options.slot = "slot_phys";
  auto state = EnsureSlot(*conn, options);
  EXPECT_EQ(state.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(state.status().message(), "physical"))
      << state.status();
}

TEST_F(ReplicationTest, EnsureSlotRefusesSlotOfAnotherDatabase) {
  ASSERT_TRUE(cluster_->CreateDatabase("otherdb").ok());
  ASSERT_TRUE(cluster_
                  ->Exec("otherdb",
                         "SELECT pg_create_logical_replication_slot("
                         "'slot_other_db', 'pgoutput')")
                  .ok());
  auto conn = Connect();
  ReplicationSetupOptions options;
  options.slot = "slot_other_db";
  auto state = EnsureSlot(*conn, options);
  EXPECT_EQ(state.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(state.status().message(), "otherdb"))
      << state.status();
}

// --- stream ----------------------------------------------------------------

TEST_F(ReplicationTest, StreamDeliversXLogDataKeepalivesAndConfirms) {
  ReplicationSetupOptions setup = SetUpSlot("slot_stream");
  const Lsn initial = ConfirmedFlush("slot_stream");
  InsertEvents(3);

  auto stream = ReplicationStream::Start(StreamOptions(setup));
  ASSERT_TRUE(stream.ok()) << stream.status();

  int begins = 0, inserts = 0, commits = 0, keepalives = 0;
  Lsn last_wal_end;
  bool asked_for_reply = false;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while ((commits < 1 || inserts < 3 || keepalives < 1) &&
         absl::Now() < deadline) {
    auto message = (*stream)->Read(absl::Milliseconds(500));
    ASSERT_TRUE(message.ok()) << message.status();
    if (!message->has_value()) {
      if (commits >= 1 && !asked_for_reply) {
        // A status update asking for a reply makes the walsender answer with
        // a keepalive straight away.
        ASSERT_TRUE(
            (*stream)->SendStatus(Lsn(), Lsn(), /*reply_requested=*/true).ok());
        asked_for_reply = true;
      }
      continue;
    }
    if (auto* data = std::get_if<XLogData>(&**message)) {
      ASSERT_FALSE(data->data.empty());
      switch (data->data[0]) {
        case 'B':
          ++begins;
          break;
        case 'I':
          ++inserts;
          break;
        case 'C':
          ++commits;
          break;
        default:
          break;
      }
      last_wal_end = Lsn::Max(last_wal_end, data->wal_end);
    } else {
      auto& keepalive = std::get<PrimaryKeepalive>(**message);
      ++keepalives;
      last_wal_end = Lsn::Max(last_wal_end, keepalive.wal_end);
    }
  }
  EXPECT_EQ(begins, 1);
  EXPECT_EQ(inserts, 3);
  EXPECT_EQ(commits, 1);
  EXPECT_GE(keepalives, 1);
  ASSERT_TRUE(last_wal_end.valid());
  ASSERT_GT(last_wal_end, initial);

  ASSERT_TRUE((*stream)->SendStatus(last_wal_end, last_wal_end, false).ok());
  Lsn confirmed;
  const absl::Time confirm_deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < confirm_deadline) {
    auto message = (*stream)->Read(absl::Milliseconds(100));
    ASSERT_TRUE(message.ok()) << message.status();
    confirmed = ConfirmedFlush("slot_stream");
    if (confirmed >= last_wal_end) break;
  }
  EXPECT_EQ(confirmed, last_wal_end);

  EXPECT_TRUE((*stream)->Stop().ok());
  EXPECT_TRUE((*stream)->Stop().ok());  // idempotent
  auto after_stop = (*stream)->Read(absl::Milliseconds(10));
  EXPECT_EQ(after_stop.status().code(), absl::StatusCode::kFailedPrecondition);

  // The slot is released: a new stream resumes after the confirmed
  // position and sees only the new transaction.
  const absl::Time inactive_deadline = absl::Now() + absl::Seconds(10);
  while (Query("SELECT active::text FROM pg_replication_slots WHERE "
               "slot_name = 'slot_stream'") != "false" &&
         absl::Now() < inactive_deadline) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  InsertEvents(1);
  auto resumed = ReplicationStream::Start(StreamOptions(setup));
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  int resumed_inserts = 0;
  int resumed_commits = 0;
  const absl::Time resume_deadline = absl::Now() + absl::Seconds(20);
  while (resumed_commits < 1 && absl::Now() < resume_deadline) {
    auto message = (*resumed)->Read(absl::Milliseconds(200));
    ASSERT_TRUE(message.ok()) << message.status();
    if (!message->has_value()) continue;
    if (auto* data = std::get_if<XLogData>(&**message)) {
      if (data->data[0] == 'I') ++resumed_inserts;
      if (data->data[0] == 'C') ++resumed_commits;
    }
  }
  EXPECT_EQ(resumed_inserts, 1);
  EXPECT_TRUE((*resumed)->Stop().ok());
}

TEST_F(ReplicationTest, ReadTimesOutWithNothingToSay) {
  ReplicationSetupOptions setup = SetUpSlot("slot_idle");
  auto stream = ReplicationStream::Start(StreamOptions(setup));
  ASSERT_TRUE(stream.ok()) << stream.status();
  // Drain whatever the walsender says first (keepalives), then expect a
  // timeout to come back as nullopt about on time.
  int idle_reads = 0;
  for (int i = 0; i < 50 && idle_reads == 0; ++i) {
    const absl::Time before = absl::Now();
    auto message = (*stream)->Read(absl::Milliseconds(200));
    ASSERT_TRUE(message.ok()) << message.status();
    if (!message->has_value()) {
      ++idle_reads;
      EXPECT_GE(absl::Now() - before, absl::Milliseconds(150));
      EXPECT_LT(absl::Now() - before, absl::Seconds(2));
    }
  }
  EXPECT_EQ(idle_reads, 1);
  EXPECT_TRUE((*stream)->Stop().ok());
}

TEST_F(ReplicationTest, MissingSlotIsFailedPrecondition) {
  ReplicationStreamOptions options;
  options.conninfo = cluster_->ConnInfo();
  options.slot = "no_such_slot";
  auto stream = ReplicationStream::Start(options);
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kFailedPrecondition)
      << stream.status();
}

TEST_F(ReplicationTest, MissingPublicationEndsTheStreamWithItsName) {
  ReplicationSetupOptions setup = SetUpSlot("slot_nopub");
  ReplicationStreamOptions options = StreamOptions(setup);
  options.publication = "no_such_pub";
  auto stream = ReplicationStream::Start(options);
  ASSERT_TRUE(stream.ok()) << stream.status();
  InsertEvents(1);
  absl::Status status;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (status.ok() && absl::Now() < deadline) {
    auto message = (*stream)->Read(absl::Milliseconds(200));
    status = message.status();
  }
  EXPECT_FALSE(status.ok());
  EXPECT_TRUE(absl::StrContains(status.message(), "no_such_pub")) << status;
}

TEST_F(ReplicationTest, SecondStreamOnActiveSlotIsUnavailable) {
  ReplicationSetupOptions setup = SetUpSlot("slot_active");
  auto first = ReplicationStream::Start(StreamOptions(setup));
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = ReplicationStream::Start(StreamOptions(setup));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable)
      << second.status();
  EXPECT_TRUE(absl::StrContains(second.status().message(), "is active"))
      << second.status();
  EXPECT_TRUE((*first)->Stop().ok());
}

TEST_F(ReplicationTest, TerminatedWalsenderMakesReadUnavailable) {
  ReplicationSetupOptions setup = SetUpSlot("slot_terminate");
  auto stream = ReplicationStream::Start(StreamOptions(setup));
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::string pid;
  const absl::Time active_deadline = absl::Now() + absl::Seconds(10);
  while (pid.empty() && absl::Now() < active_deadline) {
    pid = Query(
        "SELECT coalesce(active_pid::text, '') FROM pg_replication_slots "
        "WHERE slot_name = 'slot_terminate'");
    if (pid.empty()) absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_FALSE(pid.empty());
  EXPECT_EQ(Query(absl::StrCat("SELECT pg_terminate_backend(", pid, ")")), "t");

  absl::Status status;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (status.ok() && absl::Now() < deadline) {
    auto message = (*stream)->Read(absl::Milliseconds(200));
    status = message.status();
  }
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "terminating connection"))
      << status;
  // Further calls keep failing without touching the dead connection.
  EXPECT_FALSE((*stream)->Read(absl::Milliseconds(10)).ok());
  EXPECT_FALSE((*stream)->SendStatus(Lsn(), Lsn(), false).ok());
}

// Runs last: it takes the shared server down and brings it back.
TEST_F(ReplicationTest, ServerRestartEndsStreamAndStreamingResumes) {
  ReplicationSetupOptions setup = SetUpSlot("slot_restart");
  auto stream = ReplicationStream::Start(StreamOptions(setup));
  ASSERT_TRUE(stream.ok()) << stream.status();

  // A shutting-down walsender waits until the client confirms all it sent,
  // so keep answering keepalives (as the pipeline does) while it restarts.
  absl::Status restart_status;
  std::thread restarter([&] { restart_status = cluster_->Restart(); });
  absl::Status status;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (status.ok() && absl::Now() < deadline) {
    auto message = (*stream)->Read(absl::Milliseconds(200));
    status = message.status();
    if (!message.ok() || !message->has_value()) continue;
    if (auto* keepalive = std::get_if<PrimaryKeepalive>(&**message)) {
      if (keepalive->reply_requested) {
        status = (*stream)->SendStatus(keepalive->wal_end, keepalive->wal_end,
                                       false);
      }
    }
  }
  restarter.join();
  ASSERT_TRUE(restart_status.ok()) << restart_status;
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;

  // While the server is down, connecting is a retryable kUnavailable.
  ASSERT_TRUE(cluster_->Stop().ok());
  auto refused = ReplicationStream::Start(StreamOptions(setup));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable)
      << refused.status();
  ASSERT_TRUE(cluster_->StartAgain().ok());

  InsertEvents(2);
  auto resumed = ReplicationStream::Start(StreamOptions(setup));
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  int inserts = 0;
  const absl::Time resume_deadline = absl::Now() + absl::Seconds(20);
  while (inserts < 2 && absl::Now() < resume_deadline) {
    auto message = (*resumed)->Read(absl::Milliseconds(200));
    ASSERT_TRUE(message.ok()) << message.status();
    if (!message->has_value()) continue;
    if (auto* data = std::get_if<XLogData>(&**message)) {
      if (data->data[0] == 'I') ++inserts;
    }
  }
  EXPECT_EQ(inserts, 2);
  EXPECT_TRUE((*resumed)->Stop().ok());
}

// --- the CDC source ----------------------------------------------------------

// The walsender sends a Relation message before a table's first row in a
// session; it maps to no item. When the whole transaction is already in
// the socket, libpq takes all of it in with one recv: a Read that said
// "nothing" at the Relation message would leave Begin's transaction half
// read, and a caller sleeping on the socket would wait for the next
// keepalive (seconds) to see the rest.
TEST_F(ReplicationTest, CdcSourceSaysNothingOnlyWhenNothingIsThere) {
  CdcSourceOptions options;
  options.conninfo = cluster_->ConnInfo();
  options.setup = SetUpSlot("slot_relation");
  options.mapper.tables = options.setup.tables;
  metrics::OutboxdMetrics metrics;
  std::unique_ptr<EventSource> source =
      NewCdcSource(std::move(options), metrics.ForSource());
  ASSERT_TRUE(source->Connect(ConnectContext{}).ok());
  InsertEvents(1);
  // The whole transaction reaches the socket before the first Read.
  absl::SleepFor(absl::Milliseconds(500));
  int begins = 0, events = 0, commits = 0;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (commits == 0 && absl::Now() < deadline) {
    absl::StatusOr<SourceRead> read = source->Read(absl::ZeroDuration());
    ASSERT_TRUE(read.ok()) << read.status();
    if (read->nothing()) {
      // Only before the transaction started: once Begin was read, the rest
      // was taken in with it.
      ASSERT_EQ(begins, 0) << "said nothing with the transaction half read";
      absl::SleepFor(absl::Milliseconds(20));
      continue;
    }
    if (std::holds_alternative<SourceBegin>(read->item)) ++begins;
    if (std::holds_alternative<OutboxEvent>(read->item)) ++events;
    if (std::holds_alternative<SourceCommit>(read->item)) ++commits;
  }
  EXPECT_EQ(begins, 1);
  EXPECT_EQ(events, 1);
  EXPECT_EQ(commits, 1);
  EXPECT_TRUE(source->Finish(SourcePosition(0), /*clean=*/true).ok());
}

}  // namespace
}  // namespace outboxd
