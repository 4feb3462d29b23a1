// PgConnection: an owned libpq connection, normal or replication
// (replication=database), with libpq errors turned into absl::Status.
//
// Not thread-safe: one thread uses a connection at a time.
// Status codes: a lost or refused connection is kUnavailable (retry), a
// failed statement keeps its SQLSTATE class meaning where it matters
// (kFailedPrecondition for configuration problems), kInternal otherwise.
#ifndef OUTBOXD_PG_CONNECTION_H_
#define OUTBOXD_PG_CONNECTION_H_

#include <libpq-fe.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace outboxd {

// Owns a PGresult.
struct PgResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using PgResult = std::unique_ptr<PGresult, PgResultDeleter>;

// A conninfo (key=value or URI) with the value of every secret keyword
// (password, sslpassword, and any other libpq marks secret with dispchar
// "*") replaced by "********", safe for logs.
std::string RedactConninfo(absl::string_view conninfo);

// `conninfo` (key=value or URI) as key=value with its dbname replaced by
// `database`, every other setting kept (--databases). kInvalidArgument,
// with the conninfo redacted, when libpq cannot parse it.
absl::StatusOr<std::string> ConninfoWithDatabase(absl::string_view conninfo,
                                                 absl::string_view database);

// Where a conninfo (key=value or URI) points, as written in it.
struct ConninfoTarget {
  // host (else hostaddr, else "local": libpq's default Unix socket), with
  // ":" + port when a port is given.
  std::string server;
  // "" when absent (libpq would take the user name).
  std::string database;
};
// kInvalidArgument, with the conninfo redacted, when libpq cannot parse it.
absl::StatusOr<ConninfoTarget> ConninfoServerAndDatabase(
    absl::string_view conninfo);

// The SQLSTATEs outboxd acts on (PostgreSQL's errcodes.txt). Decide on
// these, never on a message's text: messages are translated (lc_messages)
// and reworded between releases.
namespace sqlstate {
inline constexpr absl::string_view kUndefinedObject = "42704";
inline constexpr absl::string_view kDuplicateObject = "42710";
// START_REPLICATION of an invalidated slot ("can no longer get changes"),
// among other states an object must be in first.
inline constexpr absl::string_view kObjectNotInPrerequisiteState = "55000";
// A slot active in another process ("is active for PID").
inline constexpr absl::string_view kObjectInUse = "55006";
inline constexpr absl::string_view kAdminShutdown = "57P01";
inline constexpr absl::string_view kCrashShutdown = "57P02";
inline constexpr absl::string_view kCannotConnectNow = "57P03";
}  // namespace sqlstate

// The type URL of the payload that carries the SQLSTATE (5 characters) of
// every Status made from a server error (StatusFromPgResult).
inline constexpr absl::string_view kSqlStatePayload = "type.outboxd/sqlstate";

// The SQLSTATE `status` carries; nullopt when it has none (OK, not from
// PostgreSQL, or an error libpq made itself, such as a lost connection).
std::optional<std::string> SqlState(const absl::Status& status);
// Whether `status` carries SQLSTATE `code`.
bool HasSqlState(const absl::Status& status, absl::string_view code);

// `status` with `context` and ": " before its message, its code and
// payloads (the SQLSTATE) kept. OK stays OK.
absl::Status WithContext(absl::string_view context, const absl::Status& status);

// The one place a libpq error becomes a Status. The error carried by
// `result` (or by `conn` when `result` is null), prefixed with `context`,
// with the SQLSTATE as the kSqlStatePayload payload and the code chosen
// from it: class 08 and 57P0x (connection, shutdown) and 55006 (object in
// use, e.g. an active slot) are kUnavailable, 28 kPermissionDenied, 42 and
// 55 kFailedPrecondition (42501 kPermissionDenied), XX kInternal. A lost
// connection is kUnavailable whatever the SQLSTATE or the text: one whose
// PQstatus is CONNECTION_BAD, or an error libpq made itself (no SQLSTATE)
// after which reading the socket finds it closed (a server that
// crash-restarted; libpq then says "server closed the connection
// unexpectedly" and may not have marked the connection bad yet). `conn`
// may be read from (PQconsumeInput) for that.
absl::Status StatusFromPgResult(absl::string_view context,
                                const PGresult* result, PGconn* conn);

// A NOTICE, WARNING or other non-error message the server sent.
struct PgNotice {
  std::string severity;  // non-localized: WARNING, NOTICE, INFO, LOG, DEBUG
  std::string sqlstate;
  std::string message;  // the primary message, one line
};

// How outboxd's log shows a notice: the severity mapped to a log level
// (WARNING -> warn, NOTICE/INFO/LOG -> info, DEBUG -> debug), one line.
void LogNotice(const PgNotice& notice);

class PgConnection {
 public:
  enum class Mode { kNormal, kReplication };

  // Connects with `conninfo` (libpq key=value string or URI); kReplication
  // adds replication=database. Errors never contain the password. Unless
  // the conninfo or PGCONNECT_TIMEOUT sets connect_timeout, it is 10 s.
  static absl::StatusOr<std::unique_ptr<PgConnection>> Connect(
      absl::string_view conninfo, Mode mode);
  ~PgConnection();
  PgConnection(const PgConnection&) = delete;
  PgConnection& operator=(const PgConnection&) = delete;

  // Simple-query protocol (the only one a replication connection speaks).
  // Succeeds on PGRES_COMMAND_OK / PGRES_TUPLES_OK.
  absl::StatusOr<PgResult> Exec(absl::string_view sql);
  // Extended protocol with text parameters (normal connections only);
  // std::nullopt is SQL NULL.
  absl::StatusOr<PgResult> ExecParams(
      absl::string_view sql,
      const std::vector<std::optional<std::string>>& params);

  // Quoting for identifiers built into simple queries (values go through
  // ExecParams).
  absl::StatusOr<std::string> QuoteIdentifier(absl::string_view ident);

  // The libpq error as a Status, prefixed with `context`.
  absl::Status Error(absl::string_view context) const;

  PGconn* raw() { return conn_; }
  int server_version() const { return PQserverVersion(conn_); }

  // Every notice of the connection goes through LogNotice (never libpq's
  // default, raw stderr, which would break --log-format=json) and then to
  // `handler`, when set. Called on the thread that reads the connection.
  void SetNoticeHandler(std::function<void(const PgNotice&)> handler) {
    notice_handler_ = std::move(handler);
  }

 private:
  explicit PgConnection(PGconn* conn) : conn_(conn) {}
  static void OnNotice(void* self, const PGresult* result);
  PGconn* conn_;
  std::function<void(const PgNotice&)> notice_handler_;
};

}  // namespace outboxd

#endif  // OUTBOXD_PG_CONNECTION_H_
