// The store's SQL, built from table names: quoting, qualification, bad
// names. (The statements run against PostgreSQL in inbox_test.)
#include "consumer/inbox_store.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace outboxd {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(InboxStatementsTest, DefaultNamesAreQualifiedWithPublic) {
  auto sql = InboxStatements::ForTables("inbox_processed", "inbox_offsets",
                                        "inbox_sources");
  ASSERT_TRUE(sql.ok()) << sql.status();
  EXPECT_THAT(sql->ddl,
              HasSubstr("CREATE TABLE IF NOT EXISTS public.inbox_processed ("));
  EXPECT_THAT(sql->ddl,
              HasSubstr("CREATE TABLE IF NOT EXISTS public.inbox_offsets ("));
  EXPECT_THAT(sql->ddl,
              HasSubstr("CREATE TABLE IF NOT EXISTS public.inbox_sources ("));
  EXPECT_THAT(sql->insert_processed,
              HasSubstr("INSERT INTO public.inbox_processed "));
  EXPECT_THAT(sql->insert_processed,
              HasSubstr("ON CONFLICT (consumer_group, event_id) DO NOTHING"));
  EXPECT_THAT(sql->store_offset,
              HasSubstr("INSERT INTO public.inbox_offsets "));
  EXPECT_THAT(sql->load_offset, HasSubstr("FROM public.inbox_offsets "));
  EXPECT_THAT(sql->store_source,
              HasSubstr("INSERT INTO public.inbox_sources "));
  EXPECT_THAT(sql->dependencies, HasSubstr("FROM public.inbox_processed "));
  // Only applied events satisfy a dependency, not dead-lettered ones.
  EXPECT_THAT(sql->dependencies, HasSubstr("status = 'applied'"));
}

TEST(InboxStatementsTest, EachStatementUsesItsOwnTable) {
  auto sql = InboxStatements::ForTables("app.p", "ops.o", "s");
  ASSERT_TRUE(sql.ok()) << sql.status();
  EXPECT_THAT(sql->insert_processed, HasSubstr("INSERT INTO app.p "));
  EXPECT_THAT(sql->dependencies, HasSubstr("FROM app.p "));
  EXPECT_THAT(sql->store_offset, HasSubstr("INSERT INTO ops.o "));
  EXPECT_THAT(sql->load_offset, HasSubstr("FROM ops.o "));
  EXPECT_THAT(sql->store_source, HasSubstr("INSERT INTO public.s "));
  for (const std::string* s : {&sql->insert_processed, &sql->dependencies}) {
    EXPECT_THAT(*s, Not(HasSubstr("ops.o")));
  }
}

TEST(InboxStatementsTest, NamesThatNeedQuotesAreQuoted) {
  auto sql = InboxStatements::ForTables("\"My Schema\".\"Processed\"",
                                        "offsets", "sources");
  ASSERT_TRUE(sql.ok()) << sql.status();
  EXPECT_THAT(sql->insert_processed,
              HasSubstr("INSERT INTO \"My Schema\".\"Processed\" "));
  EXPECT_THAT(sql->ddl,
              HasSubstr("IF NOT EXISTS \"My Schema\".\"Processed\" ("));
}

TEST(InboxStatementsTest, BadNameIsInvalidArgumentNamingTheTable) {
  for (const char* bad : {"", "a.b.c", "x; DROP TABLE y"}) {
    auto sql = InboxStatements::ForTables("p", bad, "s");
    EXPECT_TRUE(absl::IsInvalidArgument(sql.status()))
        << bad << ": " << sql.status();
    EXPECT_THAT(sql.status().message(),
                HasSubstr(absl::StrCat("table '", bad, "'")));
  }
}

TEST(InboxStatementsTest, SourcePositionOnlyMovesForward) {
  auto sql = InboxStatements::ForTables("p", "o", "s");
  ASSERT_TRUE(sql.ok());
  EXPECT_THAT(sql->store_source,
              HasSubstr("WHERE (cur.lsn, cur.event_index) < "
                        "(EXCLUDED.lsn, EXCLUDED.event_index)"));
}

}  // namespace
}  // namespace outboxd
