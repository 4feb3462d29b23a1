// The publication monitor's judging, without a server: which tables are
// missing, one warning when a table goes missing (naming the publication,
// the table and the fix), one info line when it is back, nothing before the
// publication was seen once; and a database it cannot reach: retried,
// never fatal.
#include "upkeep/publication_monitor.h"

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace outboxd {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

TableCoverage Carried(const std::string& table) {
  TableCoverage c;
  c.table = {"public", table};
  c.table_exists = true;
  c.publication_exists = true;
  c.publishes_inserts = true;
  c.listed = true;
  return c;
}

TEST(PublicationMonitorTest, WhyNotCarriedNamesTheFix) {
  TableCoverage c = Carried("outbox");
  EXPECT_EQ(WhyNotCarried(c, "outbox_pub"), std::nullopt);
  c.listed = false;
  EXPECT_THAT(WhyNotCarried(c, "Pub"),
              ::testing::Optional(HasSubstr(
                  "ALTER PUBLICATION \"Pub\" ADD TABLE public.outbox")));
  c.listed = true;
  c.publishes_inserts = false;
  EXPECT_THAT(WhyNotCarried(c, "p"),
              ::testing::Optional(HasSubstr("SET (publish = 'insert')")));
  c.publishes_inserts = true;
  c.partitioned = true;
  EXPECT_THAT(WhyNotCarried(c, "p"),
              ::testing::Optional(HasSubstr("publish_via_partition_root")));
  c.via_root = true;
  EXPECT_EQ(WhyNotCarried(c, "p"), std::nullopt);
  c.publication_exists = false;
  EXPECT_THAT(WhyNotCarried(c, "p"),
              ::testing::Optional(HasSubstr("no longer exists")));
}

TEST(PublicationMonitorTest, OneWarningWhenMissingOneInfoWhenBack) {
  PublicationWatch watch("outbox_pub", /*reconciler=*/true, "[shop] ");
  TableCoverage a = Carried("outbox");
  TableCoverage b = Carried("audit");
  PublicationWatch::Round r = watch.Update({a, b});
  EXPECT_EQ(r.missing, 0);
  EXPECT_THAT(r.warnings, IsEmpty());
  EXPECT_THAT(r.infos, IsEmpty());

  a.listed = false;  // ALTER PUBLICATION ... DROP TABLE outbox
  r = watch.Update({a, b});
  EXPECT_EQ(r.missing, 1);
  ASSERT_THAT(r.warnings, SizeIs(1));
  EXPECT_THAT(r.warnings[0], HasSubstr("[shop] publication outbox_pub"));
  EXPECT_THAT(r.warnings[0], HasSubstr("ALTER PUBLICATION outbox_pub ADD TABLE "
                                       "public.outbox"));
  EXPECT_THAT(r.warnings[0], HasSubstr("reconciler publishes"));
  // Still missing: no second line.
  r = watch.Update({a, b});
  EXPECT_EQ(r.missing, 1);
  EXPECT_THAT(r.warnings, IsEmpty());

  b.listed = false;
  r = watch.Update({a, b});
  EXPECT_EQ(r.missing, 2);
  ASSERT_THAT(r.warnings, SizeIs(1));
  EXPECT_THAT(r.warnings[0], HasSubstr("public.audit"));

  a.listed = true;  // ADD TABLE outbox
  r = watch.Update({a, b});
  EXPECT_EQ(r.missing, 1);
  EXPECT_THAT(r.warnings, IsEmpty());
  ASSERT_THAT(r.infos, SizeIs(1));
  EXPECT_THAT(r.infos[0], HasSubstr("carries public.outbox again"));
}

TEST(PublicationMonitorTest, WithoutReconcilerTheEventsAreSaidLost) {
  PublicationWatch watch("outbox_pub", /*reconciler=*/false, "");
  TableCoverage a = Carried("outbox");
  PublicationWatch::Round r = watch.Update({a});
  a.listed = false;
  r = watch.Update({a});
  ASSERT_THAT(r.warnings, SizeIs(1));
  EXPECT_THAT(r.warnings[0], HasSubstr("never published"));
}

// A table the publication never carried is the start check's (it refuses
// the publication with its own line): counted, not warned about.
TEST(PublicationMonitorTest, ATableNeverCarriedIsCountedNotWarnedAbout) {
  PublicationWatch watch("leafpub", true, "");
  TableCoverage a = Carried("outbox");
  a.partitioned = true;  // without publish_via_partition_root
  PublicationWatch::Round r = watch.Update({a});
  EXPECT_EQ(r.missing, 1);
  EXPECT_THAT(r.warnings, IsEmpty());
  a.via_root = true;  // fixed
  r = watch.Update({a});
  EXPECT_EQ(r.missing, 0);
  EXPECT_THAT(r.infos, IsEmpty());
  a.via_root = false;  // and broken again: now it is no longer carried
  r = watch.Update({a});
  ASSERT_THAT(r.warnings, SizeIs(1));
  EXPECT_THAT(r.warnings[0], HasSubstr("publish_via_partition_root"));
}

// outboxd creates its publication at the first connect, which may come
// after the monitor's first round.
TEST(PublicationMonitorTest, APublicationNotSeenYetIsNotJudged) {
  PublicationWatch watch("outbox_pub", true, "");
  TableCoverage a = Carried("outbox");
  a.publication_exists = false;
  a.listed = false;
  PublicationWatch::Round r = watch.Update({a});
  EXPECT_EQ(r.missing, 0);
  EXPECT_THAT(r.warnings, IsEmpty());
  r = watch.Update({Carried("outbox")});
  EXPECT_EQ(r.missing, 0);
  // Dropped once seen: every table is missing.
  r = watch.Update({a});
  EXPECT_EQ(r.missing, 1);
  ASSERT_THAT(r.warnings, SizeIs(1));
  EXPECT_THAT(r.warnings[0], HasSubstr("no longer exists"));
}

TEST(PublicationMonitorTest, AnUnreachableDatabaseIsRetried) {
  metrics::OutboxdMetrics process;
  metrics::SourceMetrics& m = process.ForSource();
  m.publication_missing_tables->Set(0);
  auto monitor =
      PublicationMonitor::Start({"host=127.0.0.1 port=1 connect_timeout=1",
                                 "outbox_pub",
                                 {{"public", "outbox"}},
                                 absl::Milliseconds(20),
                                 false,
                                 "",
                                 m.publication_missing_tables});
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (monitor->rounds() < 2 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_GE(monitor->rounds(), 2u);
  EXPECT_EQ(m.publication_missing_tables->Value(), 0);
}

}  // namespace
}  // namespace outboxd
