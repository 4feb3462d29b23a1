#include "pg/connection.h"

#include <cstring>
#include <string>

#include "gtest/gtest.h"

namespace outboxd {
namespace {

TEST(ConninfoWithDatabaseTest, ReplacesTheDbnameAndKeepsTheRest) {
  auto kv = ConninfoWithDatabase(
      "host=/tmp port=5433 dbname=template user=u password='p w\\'x'",
      "shop_1");
  ASSERT_TRUE(kv.ok()) << kv.status();
  EXPECT_EQ(*kv,
            "user='u' password='p w\\'x' host='/tmp' port='5433' "
            "dbname='shop_1'");
  auto uri = ConninfoWithDatabase(
      "postgresql://u@db.example:5432/template?sslmode=disable", "crm");
  ASSERT_TRUE(uri.ok()) << uri.status();
  EXPECT_NE(uri->find("host='db.example'"), std::string::npos) << *uri;
  EXPECT_NE(uri->find("sslmode='disable'"), std::string::npos) << *uri;
  EXPECT_EQ(uri->find("template"), std::string::npos) << *uri;
  EXPECT_TRUE(uri->ends_with("dbname='crm'")) << *uri;
  // No dbname at all: one is added.
  auto none = ConninfoWithDatabase("host=h", "a");
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, "host='h' dbname='a'");
  EXPECT_EQ(ConninfoWithDatabase("host='unterminated", "a").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ConninfoServerAndDatabaseTest, HostPortAndDbnameAsWritten) {
  auto kv = ConninfoServerAndDatabase("host=db1 port=5433 dbname=shop");
  ASSERT_TRUE(kv.ok()) << kv.status();
  EXPECT_EQ(kv->server, "db1:5433");
  EXPECT_EQ(kv->database, "shop");
  auto uri = ConninfoServerAndDatabase("postgresql://u:pw@db.example/crm");
  ASSERT_TRUE(uri.ok()) << uri.status();
  EXPECT_EQ(uri->server, "db.example");
  EXPECT_EQ(uri->database, "crm");
  auto addr = ConninfoServerAndDatabase("hostaddr=10.0.0.7 user=u");
  ASSERT_TRUE(addr.ok());
  EXPECT_EQ(addr->server, "10.0.0.7");
  EXPECT_EQ(addr->database, "");  // libpq would take the user name
  auto socket = ConninfoServerAndDatabase("dbname=app");
  ASSERT_TRUE(socket.ok());
  EXPECT_EQ(socket->server, "local");
  EXPECT_EQ(ConninfoServerAndDatabase("host='unterminated").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RedactConninfoTest, KeyValuePassword) {
  EXPECT_EQ(RedactConninfo("host=db password=s3cret user=app"),
            "host=db password=******** user=app");
}

TEST(RedactConninfoTest, KeyValueQuotedPasswordWithSpacesAndEscapes) {
  std::string redacted =
      RedactConninfo(R"(host=db password = 'se cr\'et\\' dbname=x)");
  EXPECT_EQ(redacted, "host=db password = ******** dbname=x");
}

TEST(RedactConninfoTest, KeyValueWithoutPasswordIsUnchanged) {
  EXPECT_EQ(RedactConninfo("host=127.0.0.1 port=5432 dbname=app"),
            "host=127.0.0.1 port=5432 dbname=app");
}

TEST(RedactConninfoTest, KeyValueUnterminatedQuoteRedactsTheRest) {
  std::string redacted = RedactConninfo("host=db password='abc def");
  EXPECT_EQ(redacted.find("abc"), std::string::npos) << redacted;
  EXPECT_EQ(redacted.find("def"), std::string::npos) << redacted;
}

TEST(RedactConninfoTest, KeyValueMalformedRedactsTheRest) {
  std::string redacted = RedactConninfo("host=db junk password=s3cret");
  EXPECT_EQ(redacted.find("s3cret"), std::string::npos) << redacted;
  EXPECT_EQ(redacted.rfind("host=db", 0), 0u) << redacted;
}

TEST(RedactConninfoTest, KeyValueDbnameHoldingUri) {
  std::string redacted =
      RedactConninfo("dbname=postgresql://u:s3cret@h/db port=1");
  EXPECT_EQ(redacted.find("s3cret"), std::string::npos) << redacted;
  EXPECT_NE(redacted.find("port=1"), std::string::npos) << redacted;
}

TEST(RedactConninfoTest, UriUserInfoPassword) {
  EXPECT_EQ(RedactConninfo("postgresql://user:secret@host/db"),
            "postgresql://user:********@host/db");
  EXPECT_EQ(RedactConninfo("postgres://user:secret@h1:5432,h2:5433/db"),
            "postgres://user:********@h1:5432,h2:5433/db");
}

TEST(RedactConninfoTest, UriPasswordWithAtAndSlash) {
  std::string redacted = RedactConninfo("postgresql://user:se@c/ret@host/db");
  EXPECT_EQ(redacted, "postgresql://user:********@host/db");
}

TEST(RedactConninfoTest, UriQueryPassword) {
  EXPECT_EQ(RedactConninfo(
                "postgresql://host/db?sslmode=require&password=secret&user=u"),
            "postgresql://host/db?sslmode=require&password=********&user=u");
  EXPECT_EQ(RedactConninfo("postgresql://host/db?pass%77ord=secret"),
            "postgresql://host/db?pass%77ord=********");
}

// Every keyword libpq marks secret, not only password.
TEST(RedactConninfoTest, SslPasswordInEveryForm) {
  EXPECT_EQ(RedactConninfo("host=db sslpassword=k3yPa55 user=app"),
            "host=db sslpassword=******** user=app");
  EXPECT_EQ(RedactConninfo("host=db SSLPassword = 'k3y Pa55' user=app"),
            "host=db SSLPassword = ******** user=app");
  EXPECT_EQ(RedactConninfo("postgresql://u@h/db?sslpassword=k3yPa55&x=1"),
            "postgresql://u@h/db?sslpassword=********&x=1");
  EXPECT_EQ(RedactConninfo("postgresql://u@h/db?ssl%70assword=k3yPa55"),
            "postgresql://u@h/db?ssl%70assword=********");
  std::string nested =
      RedactConninfo("dbname='host=h sslpassword=k3yPa55' port=1");
  EXPECT_EQ(nested.find("k3yPa55"), std::string::npos) << nested;
}

TEST(RedactConninfoTest, EveryKeywordLibpqMarksSecretIsRedacted) {
  PQconninfoOption* defaults = PQconndefaults();
  ASSERT_NE(defaults, nullptr);
  int secret_keywords = 0;
  for (PQconninfoOption* opt = defaults; opt->keyword != nullptr; ++opt) {
    if (opt->dispchar == nullptr ||
        std::strchr(opt->dispchar, '*') == nullptr) {
      continue;
    }
    ++secret_keywords;
    std::string kv =
        RedactConninfo(std::string("host=h ") + opt->keyword + "=Zq9secretZq9");
    EXPECT_EQ(kv.find("Zq9secretZq9"), std::string::npos) << kv;
    std::string uri = RedactConninfo(std::string("postgresql://h/db?") +
                                     opt->keyword + "=Zq9secretZq9");
    EXPECT_EQ(uri.find("Zq9secretZq9"), std::string::npos) << uri;
  }
  PQconninfoFree(defaults);
  EXPECT_GE(secret_keywords, 2);  // password and sslpassword (PostgreSQL 13+)
}

TEST(RedactConninfoTest, UriWithoutPasswordIsUnchanged) {
  EXPECT_EQ(RedactConninfo("postgresql://user@host:5432/db?sslmode=disable"),
            "postgresql://user@host:5432/db?sslmode=disable");
}

TEST(PgConnectionTest, InvalidConninfoIsInvalidArgumentWithoutPassword) {
  auto conn = PgConnection::Connect("host=db password='s3cret",
                                    PgConnection::Mode::kNormal);
  ASSERT_FALSE(conn.ok());
  EXPECT_EQ(conn.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(conn.status().message().find("s3cret"), absl::string_view::npos)
      << conn.status();
}

TEST(PgConnectionTest, RefusedConnectionIsUnavailableWithoutPassword) {
  for (const char* conninfo :
       {"host=127.0.0.1 port=1 user=u password=s3cret connect_timeout=2",
        "postgresql://u:s3cret@127.0.0.1:1/db?connect_timeout=2"}) {
    auto conn = PgConnection::Connect(conninfo, PgConnection::Mode::kNormal);
    ASSERT_FALSE(conn.ok());
    EXPECT_EQ(conn.status().code(), absl::StatusCode::kUnavailable)
        << conn.status();
    EXPECT_EQ(conn.status().message().find("s3cret"), absl::string_view::npos)
        << conn.status();
  }
}

// libpq's own messages may echo a value (here: the invalid sslpassword is
// not echoed, but a malformed conninfo is); neither the error nor its
// redacted conninfo may carry the secret.
TEST(PgConnectionTest, ErrorsNeverCarryTheSslPassword) {
  for (const char* conninfo :
       {"host=127.0.0.1 port=1 user=u sslpassword=k3yPa55 connect_timeout=2",
        "postgresql://u@127.0.0.1:1/db?sslpassword=k3yPa55&connect_timeout=2",
        "host=127.0.0.1 sslpassword=k3yPa55 bogus_keyword=1",
        "postgresql://u@127.0.0.1:1/db?sslpassword=k3yPa55&bogus=1"}) {
    auto conn = PgConnection::Connect(conninfo, PgConnection::Mode::kNormal);
    ASSERT_FALSE(conn.ok());
    EXPECT_EQ(conn.status().message().find("k3yPa55"), absl::string_view::npos)
        << conn.status();
  }
}

}  // namespace
}  // namespace outboxd
