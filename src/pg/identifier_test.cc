#include "pg/identifier.h"

#include "gtest/gtest.h"

namespace outboxd {
namespace {

TEST(ParseQualifiedNameTest, BareNameDefaultsToPublicAndFolds) {
  auto name = ParseQualifiedName("Outbox");
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_EQ(name->schema, "public");
  EXPECT_EQ(name->name, "outbox");
}

TEST(ParseQualifiedNameTest, SchemaQualified) {
  auto name = ParseQualifiedName("App.Events_2");
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_EQ(name->schema, "app");
  EXPECT_EQ(name->name, "events_2");
}

TEST(ParseQualifiedNameTest, QuotedPartsKeepCaseSpacesAndEscapedQuotes) {
  auto name = ParseQualifiedName(R"("My Schema"."a""b.c")");
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_EQ(name->schema, "My Schema");
  EXPECT_EQ(name->name, "a\"b.c");
}

TEST(ParseQualifiedNameTest, WhitespaceAroundPartsIsAllowed) {
  auto name = ParseQualifiedName("  app . outbox ");
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_EQ(name->schema, "app");
  EXPECT_EQ(name->name, "outbox");
}

TEST(ParseQualifiedNameTest, Rejects) {
  for (const char* bad :
       {"", "   ", ".", "a.", ".a", "a..b", "a.b.c", "\"\"", "\"abc", "a b",
        "a;drop table x", "1abc", "a.\"b", "a.b junk", "\"a\"b", "$a"}) {
    auto name = ParseQualifiedName(bad);
    EXPECT_FALSE(name.ok())
        << "'" << bad << "' parsed as " << name->schema << "." << name->name;
    if (!name.ok()) {
      EXPECT_EQ(name.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST(ParseQualifiedNameTest, RejectsOverlongIdentifier) {
  EXPECT_TRUE(ParseQualifiedName(std::string(63, 'a')).ok());
  EXPECT_FALSE(ParseQualifiedName(std::string(64, 'a')).ok());
}

TEST(QualifiedNameTest, ToStringQuotesWhereNeeded) {
  EXPECT_EQ((QualifiedName{"public", "outbox"}).ToString(), "public.outbox");
  EXPECT_EQ((QualifiedName{"My Schema", "a\"b"}).ToString(),
            R"("My Schema"."a""b")");
  EXPECT_EQ((QualifiedName{"public", "Outbox"}).ToString(),
            R"(public."Outbox")");
  EXPECT_EQ((QualifiedName{"public", "user"}).ToString(), R"(public."user")");
}

TEST(QualifiedNameTest, RoundTrips) {
  for (const char* text : {"public.outbox", R"("My Schema"."a""b")",
                           R"(public."user")", R"(x."Table 1")"}) {
    auto name = ParseQualifiedName(text);
    ASSERT_TRUE(name.ok()) << name.status();
    EXPECT_EQ(name->ToString(), text);
  }
}

TEST(ParseQualifiedNameListTest, SplitsOnCommasOutsideQuotes) {
  auto names = ParseQualifiedNameList(R"(outbox, App.Orders ,"a,b"."c"", d")");
  ASSERT_TRUE(names.ok()) << names.status();
  ASSERT_EQ(names->size(), 3u);
  EXPECT_EQ((*names)[0], (QualifiedName{"public", "outbox"}));
  EXPECT_EQ((*names)[1], (QualifiedName{"app", "orders"}));
  EXPECT_EQ((*names)[2], (QualifiedName{"a,b", "c\", d"}));
}

TEST(ParseQualifiedNameListTest, OneNameIsAListOfOne) {
  auto names = ParseQualifiedNameList("app.outbox");
  ASSERT_TRUE(names.ok()) << names.status();
  ASSERT_EQ(names->size(), 1u);
  EXPECT_EQ((*names)[0], (QualifiedName{"app", "outbox"}));
}

TEST(ParseQualifiedNameListTest, RejectsEmptyElementsBadNamesAndDuplicates) {
  for (const char* bad : {"", " ", "a,", ",a", "a,,b", "a, ,b", "a,b.c.d",
                          "a,\"b", "outbox,public.outbox", "A,a"}) {
    auto names = ParseQualifiedNameList(bad);
    EXPECT_EQ(names.status().code(), absl::StatusCode::kInvalidArgument)
        << "'" << bad << "'";
  }
  auto twice = ParseQualifiedNameList("outbox,public.outbox");
  EXPECT_NE(twice.status().message().find("public.outbox twice"),
            std::string::npos)
      << twice.status();
}

TEST(TextArrayLiteralTest, QuotesEveryElementAndEscapes) {
  EXPECT_EQ(TextArrayLiteral({}), "{}");
  EXPECT_EQ(TextArrayLiteral({"a", "b c"}), "{\"a\",\"b c\"}");
  EXPECT_EQ(TextArrayLiteral({"x\"y", "back\\slash", "{,}", "NULL"}),
            "{\"x\\\"y\",\"back\\\\slash\",\"{,}\",\"NULL\"}");
}

}  // namespace
}  // namespace outboxd
