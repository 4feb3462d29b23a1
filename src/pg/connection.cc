#include "pg/connection.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"

namespace outboxd {
namespace {

constexpr absl::string_view kRedacted = "********";
// connect_timeout when neither the conninfo nor PGCONNECT_TIMEOUT sets one
// (seconds; pgJDBC's default connectTimeout is 10 s too).
constexpr char kDefaultConnectTimeoutSeconds[] = "10";

// The conninfo keywords whose values are secrets: those libpq marks with
// dispchar "*" (password, sslpassword, ... in the linked libpq) plus the two
// known ones, in case a libpq marks them otherwise. Lower case.
const std::vector<std::string>& SecretKeywords() {
  static const std::vector<std::string>* const keywords = [] {
    auto* out = new std::vector<std::string>{"password", "sslpassword"};
    PQconninfoOption* defaults = PQconndefaults();
    for (PQconninfoOption* opt = defaults;
         opt != nullptr && opt->keyword != nullptr; ++opt) {
      if (opt->dispchar != nullptr && std::strchr(opt->dispchar, '*') &&
          std::find(out->begin(), out->end(), opt->keyword) == out->end()) {
        out->emplace_back(absl::AsciiStrToLower(opt->keyword));
      }
    }
    if (defaults != nullptr) PQconninfoFree(defaults);
    return out;
  }();
  return *keywords;
}

bool IsSecretKeyword(absl::string_view key) {
  const std::string lower = absl::AsciiStrToLower(key);
  const auto& secret = SecretKeywords();
  return std::find(secret.begin(), secret.end(), lower) != secret.end();
}

bool IsConninfoSpace(char c) {
  return std::isspace(static_cast<unsigned char>(c)) != 0;
}

bool IsUri(absl::string_view conninfo) {
  return absl::StartsWith(conninfo, "postgresql://") ||
         absl::StartsWith(conninfo, "postgres://");
}

// Percent-decodes `text`, leaving malformed escapes as they are (redaction
// only needs to recognise the keyword, not to validate the URI).
std::string PercentDecode(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() &&
        std::isxdigit(static_cast<unsigned char>(text[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(text[i + 2]))) {
      out.push_back(static_cast<char>(
          std::stoi(std::string(text.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

// URI form: postgresql://[user[:password]@][hosts][/dbname][?key=value&...]
// `secrets` collects the raw password texts found.
std::string RedactUri(absl::string_view uri,
                      std::vector<std::string>* secrets) {
  size_t scheme_end = uri.find("://") + 3;
  absl::string_view rest = uri.substr(scheme_end);
  absl::string_view query;
  size_t question = rest.find('?');
  if (question != absl::string_view::npos) {
    query = rest.substr(question + 1);
    rest = rest.substr(0, question);
  }
  std::string out(uri.substr(0, scheme_end));
  // The last '@' before the query ends the user info, so that a password
  // containing an unencoded '@' or '/' is still covered.
  size_t at = rest.rfind('@');
  if (at != absl::string_view::npos) {
    absl::string_view userinfo = rest.substr(0, at);
    size_t colon = userinfo.find(':');
    if (colon != absl::string_view::npos) {
      secrets->emplace_back(userinfo.substr(colon + 1));
      secrets->push_back(PercentDecode(userinfo.substr(colon + 1)));
      absl::StrAppend(&out, userinfo.substr(0, colon + 1), kRedacted);
    } else {
      absl::StrAppend(&out, userinfo);
    }
    absl::StrAppend(&out, rest.substr(at));
  } else {
    absl::StrAppend(&out, rest);
  }
  if (question != absl::string_view::npos) {
    out.push_back('?');
    bool first = true;
    for (absl::string_view param : absl::StrSplit(query, '&')) {
      if (!first) out.push_back('&');
      first = false;
      size_t eq = param.find('=');
      absl::string_view key = param.substr(0, eq);
      if (eq != absl::string_view::npos &&
          IsSecretKeyword(PercentDecode(key))) {
        secrets->emplace_back(param.substr(eq + 1));
        secrets->push_back(PercentDecode(param.substr(eq + 1)));
        absl::StrAppend(&out, key, "=", kRedacted);
      } else {
        absl::StrAppend(&out, param);
      }
    }
  }
  return out;
}

std::string RedactConninfoImpl(absl::string_view conninfo,
                               std::vector<std::string>* secrets);

// key=value form, tokenised as libpq's conninfo_parse does: values are bare
// words (a backslash escapes the next character) or single-quoted strings
// with backslash escapes. Anything malformed is redacted to the end, since
// we cannot tell where a password would end.
std::string RedactKeyValue(absl::string_view text,
                           std::vector<std::string>* secrets) {
  std::string out;
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    size_t ws_start = i;
    while (i < n && IsConninfoSpace(text[i])) ++i;
    absl::StrAppend(&out, text.substr(ws_start, i - ws_start));
    if (i >= n) break;
    size_t key_start = i;
    while (i < n && text[i] != '=' && !IsConninfoSpace(text[i])) ++i;
    absl::string_view key = text.substr(key_start, i - key_start);
    size_t eq_start = i;
    while (i < n && IsConninfoSpace(text[i])) ++i;
    if (i >= n || text[i] != '=') {
      absl::StrAppend(&out, key, " ", kRedacted);
      return out;
    }
    ++i;
    while (i < n && IsConninfoSpace(text[i])) ++i;
    absl::string_view separator = text.substr(eq_start, i - eq_start);
    // Value.
    size_t value_start = i;
    std::string value;
    bool terminated = true;
    if (i < n && text[i] == '\'') {
      ++i;
      terminated = false;
      while (i < n) {
        if (text[i] == '\\' && i + 1 < n) {
          value.push_back(text[i + 1]);
          i += 2;
        } else if (text[i] == '\'') {
          ++i;
          terminated = true;
          break;
        } else {
          value.push_back(text[i++]);
        }
      }
    } else {
      while (i < n && !IsConninfoSpace(text[i])) {
        if (text[i] == '\\' && i + 1 < n) {
          value.push_back(text[i + 1]);
          i += 2;
        } else {
          value.push_back(text[i++]);
        }
      }
    }
    absl::string_view raw_value = text.substr(value_start, i - value_start);
    std::string lower_key = absl::AsciiStrToLower(key);
    const bool secret = IsSecretKeyword(lower_key);
    if (!terminated) {
      if (secret) secrets->push_back(value);
      absl::StrAppend(&out, key, separator, kRedacted);
      return out;
    }
    if (secret) {
      secrets->push_back(value);
      if (raw_value != value) secrets->emplace_back(raw_value);
      absl::StrAppend(&out, key, separator, kRedacted);
    } else if (lower_key == "dbname" &&
               (IsUri(value) || value.find('=') != std::string::npos)) {
      std::string redacted = RedactConninfoImpl(value, secrets);
      if (redacted == value) {
        absl::StrAppend(&out, key, separator, raw_value);
      } else {
        std::string quoted =
            absl::StrReplaceAll(redacted, {{"\\", "\\\\"}, {"'", "\\'"}});
        absl::StrAppend(&out, key, separator, "'", quoted, "'");
      }
    } else {
      absl::StrAppend(&out, key, separator, raw_value);
    }
  }
  return out;
}

std::string RedactConninfoImpl(absl::string_view conninfo,
                               std::vector<std::string>* secrets) {
  if (IsUri(conninfo)) return RedactUri(conninfo, secrets);
  return RedactKeyValue(conninfo, secrets);
}

// Replaces every occurrence of a known secret in `message`.
std::string Scrub(std::string message,
                  const std::vector<std::string>& secrets) {
  for (const std::string& secret : secrets) {
    if (secret.empty()) continue;
    absl::StrReplaceAll({{secret, std::string(kRedacted)}}, &message);
  }
  return message;
}

std::string TrimMessage(absl::string_view message) {
  return std::string(absl::StripTrailingAsciiWhitespace(
      absl::StripLeadingAsciiWhitespace(message)));
}

// libpq reports a failed connection attempt only as text; the server's
// FATAL SQLSTATE is not exposed. Pick the code from the well-known messages
// whose remedy is not "retry".
absl::StatusCode CodeForConnectFailure(absl::string_view message) {
  if ((absl::StrContains(message, "role \"") &&
       absl::StrContains(message, "does not exist")) ||
      absl::StrContains(message, "authentication failed") ||
      absl::StrContains(message, "no password supplied") ||
      absl::StrContains(message, "no pg_hba.conf entry") ||
      absl::StrContains(message, "permission denied") ||
      absl::StrContains(message, "must be superuser or replication role")) {
    return absl::StatusCode::kPermissionDenied;
  }
  if (absl::StrContains(message, "does not exist")) {
    return absl::StatusCode::kFailedPrecondition;
  }
  return absl::StatusCode::kUnavailable;
}

absl::StatusCode CodeForSqlState(absl::string_view sqlstate) {
  if (sqlstate.size() != 5) return absl::StatusCode::kInternal;
  absl::string_view cls = sqlstate.substr(0, 2);
  if (cls == "08") return absl::StatusCode::kUnavailable;
  if (sqlstate == "57014") return absl::StatusCode::kCancelled;
  if (cls == "57") return absl::StatusCode::kUnavailable;  // shutdown, startup
  if (sqlstate == "53300") return absl::StatusCode::kUnavailable;  // too many
  if (cls == "53") return absl::StatusCode::kResourceExhausted;
  if (sqlstate == "55006") return absl::StatusCode::kUnavailable;  // in use
  if (cls == "55") return absl::StatusCode::kFailedPrecondition;
  if (cls == "28") return absl::StatusCode::kPermissionDenied;
  if (sqlstate == "42501") return absl::StatusCode::kPermissionDenied;
  if (sqlstate == "42710" || sqlstate == "42P07") {
    return absl::StatusCode::kAlreadyExists;
  }
  if (cls == "42") return absl::StatusCode::kFailedPrecondition;
  if (cls == "3D" || cls == "3F") return absl::StatusCode::kFailedPrecondition;
  if (cls == "0A") return absl::StatusCode::kFailedPrecondition;
  if (cls == "25") return absl::StatusCode::kFailedPrecondition;
  if (sqlstate == "23505") return absl::StatusCode::kAlreadyExists;
  if (cls == "23") return absl::StatusCode::kFailedPrecondition;
  if (cls == "22") return absl::StatusCode::kInvalidArgument;
  if (cls == "40") return absl::StatusCode::kAborted;
  if (sqlstate == "58P01") return absl::StatusCode::kFailedPrecondition;
  return absl::StatusCode::kInternal;
}

}  // namespace

std::string RedactConninfo(absl::string_view conninfo) {
  std::vector<std::string> secrets;
  return RedactConninfoImpl(conninfo, &secrets);
}

std::optional<std::string> SqlState(const absl::Status& status) {
  auto payload = status.GetPayload(kSqlStatePayload);
  if (!payload.has_value()) return std::nullopt;
  return std::string(*payload);
}

bool HasSqlState(const absl::Status& status, absl::string_view code) {
  auto payload = status.GetPayload(kSqlStatePayload);
  return payload.has_value() && *payload == code;
}

absl::Status WithContext(absl::string_view context,
                         const absl::Status& status) {
  if (status.ok()) return status;
  absl::Status out(status.code(),
                   absl::StrCat(context, ": ", status.message()));
  status.ForEachPayload(
      [&out](absl::string_view type_url, const absl::Cord& payload) {
        out.SetPayload(type_url, payload);
      });
  return out;
}

namespace {

// Whether the connection is gone: marked bad, or found closed when its
// socket is read (non-blocking; what is read stays buffered in libpq).
bool ConnectionLost(PGconn* conn) {
  if (conn == nullptr || PQstatus(conn) == CONNECTION_BAD) return true;
  if (PQsocket(conn) < 0) return true;
  return PQconsumeInput(conn) == 0 || PQstatus(conn) == CONNECTION_BAD;
}

}  // namespace

absl::Status StatusFromPgResult(absl::string_view context,
                                const PGresult* result, PGconn* conn) {
  if (result == nullptr) {
    std::string message =
        conn != nullptr ? TrimMessage(PQerrorMessage(conn)) : "no connection";
    if (message.empty()) message = "unknown libpq error";
    return absl::Status(ConnectionLost(conn) ? absl::StatusCode::kUnavailable
                                             : absl::StatusCode::kInternal,
                        absl::StrCat(context, ": ", message));
  }
  const char* sqlstate = PQresultErrorField(result, PG_DIAG_SQLSTATE);
  const char* primary = PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY);
  const char* detail = PQresultErrorField(result, PG_DIAG_MESSAGE_DETAIL);
  const char* hint = PQresultErrorField(result, PG_DIAG_MESSAGE_HINT);
  std::string message;
  if (primary != nullptr) {
    message = primary;
    if (detail != nullptr) absl::StrAppend(&message, " (", detail, ")");
    if (hint != nullptr) absl::StrAppend(&message, "; hint: ", hint);
  } else {
    message = TrimMessage(PQresultErrorMessage(result));
    if (message.empty() && conn != nullptr) {
      message = TrimMessage(PQerrorMessage(conn));
    }
    if (message.empty()) {
      message = absl::StrCat("unexpected result ",
                             PQresStatus(PQresultStatus(result)));
    }
  }
  absl::StatusCode code = absl::StatusCode::kInternal;
  if (sqlstate != nullptr) {
    absl::StrAppend(&message, " [SQLSTATE ", sqlstate, "]");
    code = CodeForSqlState(sqlstate);
  }
  // With a SQLSTATE the server answered: only a connection already marked
  // bad is lost. Without one libpq made the error; the socket tells.
  const bool lost = sqlstate != nullptr
                        ? conn == nullptr || PQstatus(conn) == CONNECTION_BAD
                        : ConnectionLost(conn);
  if (lost) code = absl::StatusCode::kUnavailable;
  absl::Status status(code, absl::StrCat(context, ": ", message));
  if (sqlstate != nullptr)
    status.SetPayload(kSqlStatePayload, absl::Cord(sqlstate));
  return status;
}

absl::StatusOr<std::unique_ptr<PgConnection>> PgConnection::Connect(
    absl::string_view conninfo, Mode mode) {
  std::vector<std::string> secrets;
  const std::string redacted = RedactConninfoImpl(conninfo, &secrets);
  const std::string conninfo_str(conninfo);

  // Validate first: a parse error is the user's to fix, not a retry, and
  // the parsed password lets us scrub it from any libpq message.
  char* parse_error = nullptr;
  PQconninfoOption* options =
      PQconninfoParse(conninfo_str.c_str(), &parse_error);
  if (options == nullptr) {
    std::string message =
        parse_error != nullptr ? TrimMessage(parse_error) : "out of memory";
    if (parse_error != nullptr) PQfreemem(parse_error);
    return absl::InvalidArgumentError(
        absl::StrCat("invalid PostgreSQL connection string '", redacted,
                     "': ", Scrub(message, secrets)));
  }
  for (PQconninfoOption* opt = options; opt->keyword != nullptr; ++opt) {
    if (opt->val != nullptr && IsSecretKeyword(opt->keyword)) {
      secrets.emplace_back(opt->val);
    }
  }
  PQconninfoFree(options);

  // Later entries override what the expanded conninfo sets, so replication
  // goes last; fallback_application_name applies only when none is given.
  // connect_timeout comes first, a default that the conninfo (or
  // PGCONNECT_TIMEOUT) overrides: libpq's own is none, so an unreachable
  // server (packets dropped) would hold the caller, and with several
  // servers every other stream on the same thread, for the kernel's TCP
  // timeout (minutes).
  std::vector<const char*> keywords;
  std::vector<const char*> values;
  if (std::getenv("PGCONNECT_TIMEOUT") == nullptr) {
    keywords.push_back("connect_timeout");
    values.push_back(kDefaultConnectTimeoutSeconds);
  }
  keywords.insert(keywords.end(), {"dbname", "fallback_application_name"});
  values.insert(values.end(), {conninfo_str.c_str(), "outboxd"});
  if (mode == Mode::kReplication) {
    keywords.push_back("replication");
    values.push_back("database");
  }
  keywords.push_back(nullptr);
  values.push_back(nullptr);

  PGconn* conn = PQconnectdbParams(keywords.data(), values.data(),
                                   /*expand_dbname=*/1);
  if (conn == nullptr) {
    return absl::ResourceExhaustedError(
        "libpq could not allocate a connection");
  }
  // The password libpq used may come from PGPASSWORD or a password file.
  if (const char* used = PQpass(conn); used != nullptr) {
    secrets.emplace_back(used);
  }
  if (PQstatus(conn) != CONNECTION_OK) {
    std::string message = Scrub(TrimMessage(PQerrorMessage(conn)), secrets);
    PQfinish(conn);
    return absl::Status(CodeForConnectFailure(message),
                        absl::StrCat("cannot connect to PostgreSQL (", redacted,
                                     "): ", message));
  }
  SPDLOG_DEBUG("connected to PostgreSQL {} ({}, server {})", redacted,
               mode == Mode::kReplication ? "replication" : "normal",
               PQserverVersion(conn));
  std::unique_ptr<PgConnection> out(new PgConnection(conn));
  PQsetNoticeReceiver(conn, &PgConnection::OnNotice, out.get());
  return out;
}

void LogNotice(const PgNotice& notice) {
  const std::string line =
      absl::StrCat("PostgreSQL ", notice.severity, ": ", notice.message);
  if (notice.severity == "WARNING") {
    spdlog::warn("{}", line);
  } else if (absl::StartsWith(notice.severity, "DEBUG")) {
    spdlog::debug("{}", line);
  } else {
    spdlog::info("{}", line);
  }
}

void PgConnection::OnNotice(void* self, const PGresult* result) {
  auto field = [result](int code) {
    const char* v = PQresultErrorField(result, code);
    return v != nullptr ? std::string(v) : std::string();
  };
  PgNotice notice;
  notice.severity = field(PG_DIAG_SEVERITY_NONLOCALIZED);
  if (notice.severity.empty()) notice.severity = field(PG_DIAG_SEVERITY);
  notice.sqlstate = field(PG_DIAG_SQLSTATE);
  notice.message = field(PG_DIAG_MESSAGE_PRIMARY);
  if (notice.message.empty()) {
    notice.message =
        std::string(absl::StripAsciiWhitespace(PQresultErrorMessage(result)));
  }
  // One line: the server's messages may hold newlines.
  absl::StrReplaceAll({{"\n", " "}}, &notice.message);
  LogNotice(notice);
  auto* conn = static_cast<PgConnection*>(self);
  if (conn->notice_handler_) conn->notice_handler_(notice);
}

PgConnection::~PgConnection() {
  if (conn_ != nullptr) PQfinish(conn_);
}

absl::StatusOr<PgResult> PgConnection::Exec(absl::string_view sql) {
  const std::string query(sql);
  PgResult result(PQexec(conn_, query.c_str()));
  if (result == nullptr) return Error("query failed");
  ExecStatusType status = PQresultStatus(result.get());
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    return StatusFromPgResult("query failed", result.get(), conn_);
  }
  return result;
}

absl::StatusOr<PgResult> PgConnection::ExecParams(
    absl::string_view sql,
    const std::vector<std::optional<std::string>>& params) {
  const std::string query(sql);
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const std::optional<std::string>& p : params) {
    if (p.has_value() && p->find('\0') != std::string::npos) {
      return absl::InvalidArgumentError("query parameter contains a NUL byte");
    }
    values.push_back(p.has_value() ? p->c_str() : nullptr);
  }
  PgResult result(PQexecParams(conn_, query.c_str(),
                               static_cast<int>(values.size()),
                               /*paramTypes=*/nullptr, values.data(),
                               /*paramLengths=*/nullptr,
                               /*paramFormats=*/nullptr, /*resultFormat=*/0));
  if (result == nullptr) return Error("query failed");
  ExecStatusType status = PQresultStatus(result.get());
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    return StatusFromPgResult("query failed", result.get(), conn_);
  }
  return result;
}

absl::StatusOr<std::string> PgConnection::QuoteIdentifier(
    absl::string_view ident) {
  if (ident.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError("identifier contains a NUL byte");
  }
  char* quoted = PQescapeIdentifier(conn_, ident.data(), ident.size());
  if (quoted == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot quote identifier: ", TrimMessage(PQerrorMessage(conn_))));
  }
  std::string out(quoted);
  PQfreemem(quoted);
  return out;
}

absl::Status PgConnection::Error(absl::string_view context) const {
  return StatusFromPgResult(context, nullptr, conn_);
}

namespace {

// The settings of a conninfo, in libpq's keyword order, only those given.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseConninfo(
    absl::string_view conninfo) {
  const std::string text(conninfo);
  char* parse_error = nullptr;
  PQconninfoOption* options = PQconninfoParse(text.c_str(), &parse_error);
  if (options == nullptr) {
    if (parse_error != nullptr) PQfreemem(parse_error);
    return absl::InvalidArgumentError(
        absl::StrCat("invalid PostgreSQL connection string '",
                     RedactConninfo(conninfo), "'"));
  }
  std::vector<std::pair<std::string, std::string>> out;
  for (PQconninfoOption* opt = options; opt->keyword != nullptr; ++opt) {
    if (opt->val != nullptr) out.emplace_back(opt->keyword, opt->val);
  }
  PQconninfoFree(options);
  return out;
}

}  // namespace

absl::StatusOr<std::string> ConninfoWithDatabase(absl::string_view conninfo,
                                                 absl::string_view database) {
  ASSIGN_OR_RETURN(auto settings, ParseConninfo(conninfo));
  auto quoted = [](absl::string_view v) {
    return absl::StrCat(
        "'", absl::StrReplaceAll(v, {{"\\", "\\\\"}, {"'", "\\'"}}), "'");
  };
  std::string out;
  for (const auto& [keyword, value] : settings) {
    if (keyword == "dbname") continue;
    absl::StrAppend(&out, keyword, "=", quoted(value), " ");
  }
  absl::StrAppend(&out, "dbname=", quoted(database));
  return out;
}

absl::StatusOr<ConninfoTarget> ConninfoServerAndDatabase(
    absl::string_view conninfo) {
  ASSIGN_OR_RETURN(auto settings, ParseConninfo(conninfo));
  std::string host, hostaddr, port;
  ConninfoTarget target;
  for (const auto& [keyword, value] : settings) {
    if (keyword == "host") host = value;
    if (keyword == "hostaddr") hostaddr = value;
    if (keyword == "port") port = value;
    if (keyword == "dbname") target.database = value;
  }
  target.server = !host.empty()       ? host
                  : !hostaddr.empty() ? hostaddr
                                      : std::string("local");
  if (!port.empty()) absl::StrAppend(&target.server, ":", port);
  return target;
}

}  // namespace outboxd
