// ReplicationStream: START_REPLICATION ... LOGICAL on a replication
// connection, and the CopyBoth loop's I/O: reading XLogData / keepalives and
// sending standby status updates. Never parses pgoutput (see pgoutput.h).
//
// Not thread-safe: one pipeline thread owns it.
#ifndef OUTBOXD_PG_REPLICATION_STREAM_H_
#define OUTBOXD_PG_REPLICATION_STREAM_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/lsn.h"
#include "pg/connection.h"
#include "pg/replication_protocol.h"

namespace outboxd {

struct ReplicationStreamOptions {
  std::string conninfo;
  std::string slot = "outbox_slot";
  std::string publication = "outbox_pub";
  bool messages = true;  // pgoutput option `messages`
};

class ReplicationStream {
 public:
  // Connects (replication=database) and starts streaming from `start`
  // (Lsn() = the slot's confirmed position). kFailedPrecondition when the
  // slot is missing; kUnavailable when it is active in another process or
  // the server cannot be reached.
  static absl::StatusOr<std::unique_ptr<ReplicationStream>> Start(
      const ReplicationStreamOptions& options, Lsn start = Lsn());
  // The same on `conn`, a replication connection opened beforehand (e.g.
  // while other setup ran); options.conninfo is not used.
  static absl::StatusOr<std::unique_ptr<ReplicationStream>> Start(
      const ReplicationStreamOptions& options, Lsn start,
      std::unique_ptr<PgConnection> conn);
  ~ReplicationStream();

  // Waits at most `timeout` for one CopyData message. nullopt when none
  // arrived in time. A zero timeout never blocks: it returns what libpq
  // holds already or reads from the socket without waiting (one recv), so a
  // caller drains everything received with Read(0) and then waits for
  // socket() to become readable. The returned message (and XLogData::data)
  // stays valid until the next Read or Stop. kUnavailable when the server ended
  // the stream or the connection broke (with the server's error message).
  absl::StatusOr<std::optional<ServerCopyMessage>> Read(absl::Duration timeout);

  // The connection's notices go through LogNotice and then to `handler`
  // (PgConnection::SetNoticeHandler), on the thread that calls Read.
  void SetNoticeHandler(std::function<void(const PgNotice&)> handler) {
    if (conn_ != nullptr) conn_->SetNoticeHandler(std::move(handler));
  }

  // The connection's socket (to poll() for POLLIN), -1 when there is none.
  int socket() const;
  // libpq may hold input that the socket no longer signals: a SendStatus
  // that had to wait read while it waited (so did libpq's own flush).
  // Cleared by the next Read.
  bool input_may_be_buffered() const { return input_may_be_buffered_; }

  // Sends a standby status update (write = flush = apply = `flushed`, except
  // that `written` may be ahead) and flushes it to the socket.
  absl::Status SendStatus(Lsn written, Lsn flushed, bool reply_requested);

  // Sends CopyDone and drains the stream so a last ErrorResponse is seen.
  absl::Status Stop();

 private:
  ReplicationStream(std::unique_ptr<PgConnection> conn);
  // Takes in what the socket holds (without waiting) and returns
  // PQgetCopyData's length of the next message: 0 none complete yet, -1
  // the copy ended. kUnavailable when the connection is lost.
  absl::StatusOr<int> ConsumeAndGet();
  std::unique_ptr<PgConnection> conn_;
  char* buffer_ = nullptr;  // owned libpq copy buffer (PQfreemem)
  bool stopped_ = false;
  bool input_may_be_buffered_ = false;
};

}  // namespace outboxd

#endif  // OUTBOXD_PG_REPLICATION_STREAM_H_
