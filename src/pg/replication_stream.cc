#include "pg/replication_stream.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/pg_time.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"

namespace outboxd {
namespace {

// How long Stop() waits for the walsender to finish the copy, and
// SendStatus() for a full socket buffer to drain.
constexpr absl::Duration kStopTimeout = absl::Seconds(10);
constexpr absl::Duration kFlushTimeout = absl::Seconds(10);

std::string TrimmedError(const PGconn* conn) {
  return std::string(absl::StripTrailingAsciiWhitespace(PQerrorMessage(conn)));
}

// A string literal for the replication command grammar (repl_scanner.l):
// single quotes doubled, backslashes literal. PQescapeLiteral is not usable
// here: it may emit E'' syntax, which that grammar does not know.
absl::StatusOr<std::string> ReplicationLiteral(absl::string_view text) {
  if (text.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError("option value contains a NUL byte");
  }
  std::string out = "'";
  for (char c : text) {
    if (c == '\'') out.push_back('\'');
    out.push_back(c);
  }
  out.push_back('\'');
  return out;
}

// Milliseconds for poll(): rounded up so a short wait does not spin.
int PollTimeoutMs(absl::Duration remaining) {
  if (remaining == absl::InfiniteDuration()) return -1;
  if (remaining <= absl::ZeroDuration()) return 0;
  int64_t ms = absl::ToInt64Milliseconds(remaining + absl::Microseconds(999));
  return static_cast<int>(std::min<int64_t>(ms, 1 << 30));
}

// Waits for `events` on `fd` until `deadline`. Returns the revents (0 on
// timeout or signal interruption) or an error.
absl::StatusOr<short> WaitSocket(int fd, short events, absl::Time deadline) {
  if (fd < 0)
    return absl::UnavailableError("replication connection has no socket");
  pollfd pfd{};
  pfd.fd = fd;
  pfd.events = events;
  int rc = poll(&pfd, 1, PollTimeoutMs(deadline - absl::Now()));
  if (rc < 0) {
    if (errno == EINTR) return static_cast<short>(0);
    return absl::UnavailableError(
        absl::StrCat("poll on replication socket: ", std::strerror(errno)));
  }
  return rc == 0 ? static_cast<short>(0) : pfd.revents;
}

// Reads every pending result after the copy ended; returns the first error
// (kUnavailable unless the SQLSTATE says the system must be fixed first).
absl::Status CollectResults(PGconn* conn, absl::string_view context) {
  absl::Status status;
  bool saw_result = false;
  while (PGresult* raw = PQgetResult(conn)) {
    PgResult result(raw);
    saw_result = true;
    ExecStatusType st = PQresultStatus(result.get());
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ||
        st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
      continue;
    }
    if (status.ok()) {
      status = StatusFromPgResult(context, result.get(), conn);
    }
  }
  if (!saw_result && status.ok() && PQstatus(conn) == CONNECTION_BAD) {
    status =
        absl::UnavailableError(absl::StrCat(context, ": ", TrimmedError(conn)));
  }
  return status;
}

}  // namespace

ReplicationStream::ReplicationStream(std::unique_ptr<PgConnection> conn)
    : conn_(std::move(conn)) {}

ReplicationStream::~ReplicationStream() {
  if (buffer_ != nullptr) PQfreemem(buffer_);
  // Closing the connection ends the walsender; a clean CopyDone is Stop()'s.
}

absl::StatusOr<std::unique_ptr<ReplicationStream>> ReplicationStream::Start(
    const ReplicationStreamOptions& options, Lsn start) {
  ASSIGN_OR_RETURN(std::unique_ptr<PgConnection> conn,
                   PgConnection::Connect(options.conninfo,
                                         PgConnection::Mode::kReplication));
  return Start(options, start, std::move(conn));
}

absl::StatusOr<std::unique_ptr<ReplicationStream>> ReplicationStream::Start(
    const ReplicationStreamOptions& options, Lsn start,
    std::unique_ptr<PgConnection> conn) {
  ASSIGN_OR_RETURN(std::string slot, conn->QuoteIdentifier(options.slot));
  // publication_names is a list of identifiers inside a string option.
  ASSIGN_OR_RETURN(std::string publication,
                   conn->QuoteIdentifier(options.publication));
  ASSIGN_OR_RETURN(std::string publication_names,
                   ReplicationLiteral(publication));
  std::string command = absl::StrCat(
      "START_REPLICATION SLOT ", slot, " LOGICAL ", start.ToString(),
      " (proto_version '1', publication_names ", publication_names);
  if (options.messages) absl::StrAppend(&command, ", messages 'true'");
  command.push_back(')');

  PgResult result(PQexec(conn->raw(), command.c_str()));
  if (result == nullptr || PQresultStatus(result.get()) != PGRES_COPY_BOTH) {
    absl::Status status = StatusFromPgResult(
        absl::StrCat("cannot start replication from slot ", options.slot),
        result.get(), conn->raw());
    spdlog::debug("{}", std::string(status.message()));
    return status;
  }
  spdlog::info("streaming from replication slot {} (publication {}) at {}",
               options.slot, options.publication,
               start.valid() ? start.ToString()
                             : std::string("the slot's confirmed position"));
  return std::unique_ptr<ReplicationStream>(
      new ReplicationStream(std::move(conn)));
}

absl::StatusOr<int> ReplicationStream::ConsumeAndGet() {
  PGconn* conn = conn_->raw();
  const bool alive = PQconsumeInput(conn) != 0;
  // When the socket died, an ErrorResponse read before that (the server's
  // reason) may still be buffered, and PQgetCopyData reports it (-1).
  const int length = PQgetCopyData(conn, &buffer_, /*async=*/1);
  if (length == 0 && !alive) {
    stopped_ = true;
    return absl::UnavailableError(
        absl::StrCat("replication connection lost: ", TrimmedError(conn)));
  }
  return length;
}

absl::StatusOr<std::optional<ServerCopyMessage>> ReplicationStream::Read(
    absl::Duration timeout) {
  if (buffer_ != nullptr) {
    PQfreemem(buffer_);
    buffer_ = nullptr;
  }
  if (stopped_) {
    return absl::FailedPreconditionError("replication stream is stopped");
  }
  PGconn* conn = conn_->raw();
  input_may_be_buffered_ = false;
  int length = PQgetCopyData(conn, &buffer_, /*async=*/1);
  if (length == 0 && timeout <= absl::ZeroDuration()) {
    // Without waiting: what the socket holds now (libpq's socket is
    // non-blocking), then nothing.
    ASSIGN_OR_RETURN(length, ConsumeAndGet());
    if (length == 0) return std::nullopt;
  }
  const absl::Time deadline =
      length == 0 ? absl::Now() + timeout : absl::InfinitePast();
  while (length == 0) {
    ASSIGN_OR_RETURN(short revents,
                     WaitSocket(PQsocket(conn), POLLIN, deadline));
    if (revents == 0) {
      if (absl::Now() >= deadline) return std::nullopt;
      continue;  // interrupted by a signal
    }
    ASSIGN_OR_RETURN(length, ConsumeAndGet());
    if (length == 0 && absl::Now() >= deadline) return std::nullopt;
  }
  if (length == -1) {
    // The server ended the copy: an ErrorResponse (terminated walsender,
    // missing publication) or, rarely, a clean end of streaming.
    stopped_ = true;
    absl::Status status = CollectResults(conn, "replication stream ended");
    if (status.ok()) {
      status = absl::UnavailableError(
          "replication stream ended: the server finished streaming");
    } else if (!absl::IsFailedPrecondition(status) &&
               !absl::IsPermissionDenied(status)) {
      absl::Status unavailable = absl::UnavailableError(status.message());
      if (std::optional<std::string> state = SqlState(status)) {
        unavailable.SetPayload(kSqlStatePayload, absl::Cord(*state));
      }
      status = unavailable;
    }
    spdlog::warn("{}", std::string(status.message()));
    return status;
  }
  if (length < 0) {
    stopped_ = true;
    return absl::UnavailableError(
        absl::StrCat("replication connection failed: ", TrimmedError(conn)));
  }
  return DecodeServerCopyMessage(
      absl::string_view(buffer_, static_cast<size_t>(length)));
}

int ReplicationStream::socket() const { return PQsocket(conn_->raw()); }

absl::Status ReplicationStream::SendStatus(Lsn written, Lsn flushed,
                                           bool reply_requested) {
  if (stopped_) {
    return absl::FailedPreconditionError("replication stream is stopped");
  }
  StandbyStatusUpdate update;
  update.written = Lsn::Max(written, flushed);
  update.flushed = flushed;
  update.applied = flushed;
  update.client_time = PgTimestampNow();
  update.reply_requested = reply_requested;
  const std::string bytes = EncodeStandbyStatusUpdate(update);
  PGconn* conn = conn_->raw();
  if (PQputCopyData(conn, bytes.data(), static_cast<int>(bytes.size())) <= 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot send standby status update: ", TrimmedError(conn)));
  }
  const absl::Time deadline = absl::Now() + kFlushTimeout;
  while (true) {
    int rc = PQflush(conn);
    if (rc == 0) break;
    // A flush that cannot write everything reads what the server sends.
    input_may_be_buffered_ = true;
    if (rc < 0) {
      return absl::UnavailableError(absl::StrCat(
          "cannot flush standby status update: ", TrimmedError(conn)));
    }
    if (absl::Now() >= deadline) {
      return absl::UnavailableError(
          "timed out flushing standby status update: the server is not "
          "reading");
    }
    // Read while waiting so a server blocked on its own send cannot
    // deadlock us.
    ASSIGN_OR_RETURN(short revents,
                     WaitSocket(PQsocket(conn), POLLOUT | POLLIN, deadline));
    if ((revents & POLLIN) != 0 && PQconsumeInput(conn) == 0) {
      return absl::UnavailableError(
          absl::StrCat("replication connection lost: ", TrimmedError(conn)));
    }
  }
  SPDLOG_TRACE("sent status update write={} flush={} reply={}",
               update.written.ToString(), flushed.ToString(), reply_requested);
  return absl::OkStatus();
}

absl::Status ReplicationStream::Stop() {
  if (buffer_ != nullptr) {
    PQfreemem(buffer_);
    buffer_ = nullptr;
  }
  if (stopped_) return absl::OkStatus();
  stopped_ = true;
  PGconn* conn = conn_->raw();
  if (PQputCopyEnd(conn, nullptr) <= 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot end replication copy: ", TrimmedError(conn)));
  }
  const absl::Time deadline = absl::Now() + kStopTimeout;
  while (PQflush(conn) > 0) {
    if (absl::Now() >= deadline) {
      return absl::UnavailableError("timed out sending CopyDone");
    }
    ASSIGN_OR_RETURN(short revents,
                     WaitSocket(PQsocket(conn), POLLOUT | POLLIN, deadline));
    if ((revents & POLLIN) != 0) PQconsumeInput(conn);
  }
  // Discard what the walsender still sends until its own CopyDone.
  while (true) {
    char* data = nullptr;
    int length = PQgetCopyData(conn, &data, /*async=*/1);
    if (length > 0) {
      PQfreemem(data);
      continue;
    }
    if (length == -1) break;
    if (length == -2) {
      return absl::UnavailableError(
          absl::StrCat("replication connection failed while stopping: ",
                       TrimmedError(conn)));
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("the server did not end the replication stream within ",
                       absl::FormatDuration(kStopTimeout)));
    }
    ASSIGN_OR_RETURN(short revents,
                     WaitSocket(PQsocket(conn), POLLIN, deadline));
    if (revents != 0 && PQconsumeInput(conn) == 0) {
      return absl::UnavailableError(absl::StrCat(
          "replication connection lost while stopping: ", TrimmedError(conn)));
    }
  }
  // Wait (bounded) until the final results are in, so PQgetResult won't
  // block.
  while (PQisBusy(conn)) {
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          "the server did not complete START_REPLICATION after CopyDone");
    }
    ASSIGN_OR_RETURN(short revents,
                     WaitSocket(PQsocket(conn), POLLIN, deadline));
    if (revents != 0 && PQconsumeInput(conn) == 0) break;
  }
  absl::Status status = CollectResults(conn, "replication stream stopped");
  if (status.ok()) {
    spdlog::info("replication stream stopped");
  } else {
    spdlog::warn("{}", std::string(status.message()));
  }
  return status;
}

}  // namespace outboxd
