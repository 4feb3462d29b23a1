#include "pg/connection.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
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

// A server that takes the TCP connection and never answers (a hung
// PostgreSQL, or the listen backlog of a stopped one): the listening socket
// never accepts, the kernel completes the handshake, and libpq waits for
// the reply to its startup packet.
class SilentServer {
 public:
  SilentServer() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (fd_ < 0 || bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        listen(fd_, 8) != 0 ||
        getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      return;
    }
    port_ = ntohs(addr.sin_port);
  }
  ~SilentServer() {
    if (fd_ >= 0) close(fd_);
  }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// Connects on another thread; nullopt when it has not returned in `limit`
// (the test then fails instead of hanging; the thread is left to finish).
std::optional<absl::Status> ConnectWithin(const std::string& conninfo,
                                          absl::Duration limit) {
  auto result = std::make_shared<std::promise<absl::Status>>();
  std::future<absl::Status> done = result->get_future();
  std::thread([conninfo, result] {
    result->set_value(
        PgConnection::Connect(conninfo, PgConnection::Mode::kNormal).status());
  }).detach();
  if (done.wait_for(absl::ToChronoSeconds(limit)) !=
      std::future_status::ready) {
    return std::nullopt;
  }
  return done.get();
}

TEST(PgConnectionTest, ASilentServerTimesOutByDefault) {
  ASSERT_EQ(std::getenv("PGCONNECT_TIMEOUT"), nullptr);
  SilentServer server;
  ASSERT_GT(server.port(), 0);
  // libpq alone would wait for ever; the default connect_timeout is 10 s.
  std::optional<absl::Status> s = ConnectWithin(
      absl::StrCat("host=127.0.0.1 port=", server.port(), " user=u"),
      absl::Seconds(60));
  ASSERT_TRUE(s.has_value()) << "still connecting after 60 s";
  EXPECT_EQ(s->code(), absl::StatusCode::kUnavailable) << *s;
  EXPECT_NE(s->message().find("timeout"), absl::string_view::npos) << *s;
}

TEST(PgConnectionTest, TheConninfosConnectTimeoutWins) {
  SilentServer server;
  ASSERT_GT(server.port(), 0);
  const absl::Time start = absl::Now();
  std::optional<absl::Status> s =
      ConnectWithin(absl::StrCat("postgresql://u@127.0.0.1:", server.port(),
                                 "/db?connect_timeout=2"),
                    absl::Seconds(60));
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->code(), absl::StatusCode::kUnavailable) << *s;
  // Its own 2 s, not the 10 s default (a wide margin either way).
  EXPECT_LT(absl::Now() - start, absl::Seconds(9)) << *s;
}

// A PostgreSQL server for one connection, speaking just enough of the
// protocol for libpq (no SSL, trust): after the startup it either answers
// the first query with an ErrorResponse carrying `sqlstate`, or, when
// `sqlstate` is empty, does what a backend does when the postmaster ends
// it for a crash-restart: a WARNING (57P02), then the socket is closed,
// before any query.
class OneQueryServer {
 public:
  // Over TCP on 127.0.0.1, or (`unix_socket`) a Unix socket in a directory
  // of its own, as PostgreSQL's .s.PGSQL.<port>.
  explicit OneQueryServer(std::string sqlstate, bool unix_socket = false)
      : sqlstate_(std::move(sqlstate)) {
    if (unix_socket) {
      char dir[] = "/tmp/outboxd-fakepg-XXXXXX";
      if (mkdtemp(dir) == nullptr) return;
      dir_ = dir;
      port_ = 5432;
      fd_ = socket(AF_UNIX, SOCK_STREAM, 0);
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      const std::string path = absl::StrCat(dir_, "/.s.PGSQL.", port_);
      std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
      if (fd_ < 0 ||
          bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
          listen(fd_, 8) != 0) {
        port_ = 0;
        return;
      }
    } else {
      fd_ = socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      socklen_t len = sizeof(addr);
      if (fd_ < 0 || bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
          listen(fd_, 8) != 0 ||
          getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        return;
      }
      port_ = ntohs(addr.sin_port);
    }
    thread_ = std::thread([this] { Serve(); });
  }
  ~OneQueryServer() {
    if (thread_.joinable()) thread_.join();
    if (fd_ >= 0) close(fd_);
    if (!dir_.empty()) {
      unlink(absl::StrCat(dir_, "/.s.PGSQL.", port_).c_str());
      rmdir(dir_.c_str());
    }
  }
  std::string ConnInfo() const {
    return absl::StrCat("host=", dir_.empty() ? "127.0.0.1" : dir_,
                        " port=", port_,
                        " user=u dbname=d sslmode=disable gssencmode=disable "
                        "connect_timeout=5");
  }
  // Once the server closed the connection (the crash case).
  void WaitClosed() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  static void Put32(std::string* out, uint32_t v) {
    v = htonl(v);
    out->append(reinterpret_cast<const char*>(&v), 4);
  }
  static std::string Message(char type, const std::string& body) {
    std::string m(1, type);
    Put32(&m, static_cast<uint32_t>(body.size() + 4));
    return m + body;
  }
  // Severity, SQLSTATE and message fields of an ErrorResponse or notice.
  static std::string Fields(const std::string& severity,
                            const std::string& sqlstate,
                            const std::string& message) {
    return absl::StrCat("S", severity, std::string(1, '\0'), "V", severity,
                        std::string(1, '\0'), "C", sqlstate,
                        std::string(1, '\0'), "M", message,
                        std::string(2, '\0'));
  }
  static bool ReadFull(int fd, char* buf, size_t n) {
    while (n > 0) {
      ssize_t got = read(fd, buf, n);
      if (got <= 0) return false;
      buf += got;
      n -= static_cast<size_t>(got);
    }
    return true;
  }
  static void Send(int fd, const std::string& bytes) {
    (void)send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  }
  // The startup packet (after answering 'N' to SSL and GSS requests).
  static bool ReadStartup(int fd) {
    while (true) {
      uint32_t len = 0;
      if (!ReadFull(fd, reinterpret_cast<char*>(&len), 4)) return false;
      std::string body(ntohl(len) - 4, '\0');
      if (!ReadFull(fd, body.data(), body.size()) || body.size() < 4) {
        return false;
      }
      uint32_t code = 0;
      std::memcpy(&code, body.data(), 4);
      code = ntohl(code);
      if (code != 80877103 && code != 80877104) return true;
      Send(fd, "N");
    }
  }
  void Serve() {
    int c = accept(fd_, nullptr, nullptr);
    if (c < 0) return;
    if (ReadStartup(c)) {
      std::string auth_ok;
      Put32(&auth_ok, 0);
      std::string key;
      Put32(&key, 4242);
      Put32(&key, 1);
      Send(c, Message('R', auth_ok) +
                  Message('S', std::string("server_version\0"
                                           "15.0\0",
                                           20)) +
                  Message('K', key) + Message('Z', "I"));
      if (sqlstate_.empty()) {
        Send(c, Message('N', Fields("WARNING", "57P02",
                                    "terminating connection because of "
                                    "crash of another server process")));
      } else {
        char type = 0;
        uint32_t len = 0;
        if (ReadFull(c, &type, 1) &&
            ReadFull(c, reinterpret_cast<char*>(&len), 4)) {
          std::string body(ntohl(len) - 4, '\0');
          if (ReadFull(c, body.data(), body.size())) {
            Send(c, Message('E', Fields("ERROR", sqlstate_, "boom")) +
                        Message('Z', "I"));
            // Until the client goes (PQfinish sends Terminate).
            char rest[64];
            while (read(c, rest, sizeof(rest)) > 0) {
            }
          }
        }
      }
    }
    close(c);
  }

  std::string sqlstate_;
  std::string dir_;  // of the Unix socket
  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
};

TEST(StatusFromPgResultTest, TheSqlStateIsAPayload) {
  OneQueryServer server("42704");
  auto conn =
      PgConnection::Connect(server.ConnInfo(), PgConnection::Mode::kNormal);
  ASSERT_TRUE(conn.ok()) << conn.status();
  absl::Status s = (*conn)->Exec("SELECT 1").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_EQ(SqlState(s), std::optional<std::string>("42704")) << s;
  EXPECT_TRUE(HasSqlState(s, sqlstate::kUndefinedObject));
  EXPECT_FALSE(HasSqlState(s, sqlstate::kDuplicateObject));
  // Context added on the way up keeps it, and the code.
  absl::Status wrapped = WithContext("cannot drop replication slot s", s);
  EXPECT_EQ(wrapped.code(), s.code());
  EXPECT_TRUE(HasSqlState(wrapped, sqlstate::kUndefinedObject));
  EXPECT_TRUE(absl::StartsWith(wrapped.message(),
                               "cannot drop replication slot s: query failed"))
      << wrapped;
  EXPECT_TRUE(WithContext("x", absl::OkStatus()).ok());
  EXPECT_EQ(SqlState(absl::UnavailableError("no payload")), std::nullopt);
}

TEST(StatusFromPgResultTest, ObjectInUseIsUnavailableWithItsSqlState) {
  OneQueryServer server("55006");
  auto conn =
      PgConnection::Connect(server.ConnInfo(), PgConnection::Mode::kNormal);
  ASSERT_TRUE(conn.ok()) << conn.status();
  absl::Status s = (*conn)->Exec("START_REPLICATION").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_TRUE(HasSqlState(s, sqlstate::kObjectInUse)) << s;
}

// The backend was ended by a crash-restart while the connection was idle:
// the next query fails with libpq's own "server closed the connection
// unexpectedly" (no SQLSTATE). A lost connection: kUnavailable (retry),
// whatever libpq's text, not kInternal. Against this fake server libpq has
// marked the connection bad by then, so this checks the mapping; the case
// where it has not yet (a real server's crash-restart, over the Unix
// socket) is fault_test's BackendKilledCrashRestartOverUnixSocket...
TEST(StatusFromPgResultTest, ServerClosedTheConnectionIsUnavailable) {
  for (bool unix_socket : {false, true}) {
    SCOPED_TRACE(unix_socket ? "unix socket" : "tcp");
    OneQueryServer server("", unix_socket);
    auto conn =
        PgConnection::Connect(server.ConnInfo(), PgConnection::Mode::kNormal);
    ASSERT_TRUE(conn.ok()) << conn.status();
    server.WaitClosed();
    // As the publisher state store asks: the extended protocol.
    absl::Status s = (*conn)->ExecParams("SELECT $1", {"1"}).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    EXPECT_EQ(SqlState(s), std::nullopt) << s;
  }
}

}  // namespace
}  // namespace outboxd
