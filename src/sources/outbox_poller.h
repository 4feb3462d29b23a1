// OutboxPoller: where polled events come from and how their publication is
// made durable, for --source=poll and --source=notify (sources/poll_source.h
// wraps it as an EventSource; docs/ARCHITECTURE.md, "The data path").
//
// One batch is one PostgreSQL transaction on the poller's own connection:
//
//   FetchBatch     BEGIN; SELECT unpublished rows ORDER BY seq
//                  LIMIT batch_size FOR UPDATE SKIP LOCKED; hold back rows
//                  that would overtake an older row of their aggregate
//   CompleteBatch  UPDATE ... SET published_at / DELETE the given rows;
//                  COMMIT (called only once Kafka acknowledged them)
//   AbortBatch     ROLLBACK: every row stays unpublished
//
// The row locks held by an open batch keep a second poller (SKIP LOCKED)
// away from its rows, so two pollers never publish one row twice; a crash
// rolls the transaction back, so nothing is marked that was not
// acknowledged. With notify_channel set the connection LISTENs and
// WaitForWork returns as soon as a notification arrives.
//
// Not thread-safe: one pipeline thread owns a poller.
#ifndef OUTBOXD_SOURCES_OUTBOX_POLLER_H_
#define OUTBOXD_SOURCES_OUTBOX_POLLER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "outbox/event.h"
#include "outbox/row_to_event.h"
#include "pg/connection.h"
#include "pg/identifier.h"
#include "sources/outbox_table.h"

namespace outboxd {

enum class PollCleanup {
  kMark,    // SET published_at = clock_timestamp()
  kDelete,  // DELETE the row
};

struct OutboxPollerOptions {
  std::string conninfo;
  QualifiedName table;
  OutboxColumns columns;
  // Order of publication; an identity or sequence-backed bigint.
  std::string seq_column = "seq";
  // Nullable timestamptz; required for kMark, used as a filter when present.
  std::string published_column = "published_at";
  // Optional timestamptz: the Kafka timestamp, and the age for `grace`.
  std::string created_column = "created_at";
  int batch_size = 500;
  PollCleanup cleanup = PollCleanup::kMark;
  // Only rows whose created_at is at least this old are taken (0: all).
  // Needs the created_at column. See README "Polling and push publishers".
  absl::Duration grace = absl::ZeroDuration();
  // LISTEN channel for --source=notify; "" polls on the interval only.
  std::string notify_channel;
};

// One selected row: its seq and its event, or why it is not one.
struct PolledRow {
  int64_t seq = 0;
  RowEvent event;  // InvalidEvent: dead-letter it (or fail, by policy)
};

struct PolledBatch {
  std::vector<PolledRow> rows;  // to publish, in seq order
  size_t selected = 0;          // rows the SELECT returned (locked)
  size_t held_back = 0;         // selected but left for a later batch
  bool full = false;            // selected == batch_size: poll again at once
};

class OutboxPoller {
 public:
  // Connects, checks the table's columns (kFailedPrecondition when the
  // table or a needed column is missing) and LISTENs when asked.
  static absl::StatusOr<std::unique_ptr<OutboxPoller>> Connect(
      const OutboxPollerOptions& options);
  OutboxPoller(const OutboxPoller&) = delete;
  OutboxPoller& operator=(const OutboxPoller&) = delete;

  // Opens a batch (a transaction). Every batch must end with CompleteBatch
  // or AbortBatch, also an empty one.
  absl::StatusOr<PolledBatch> FetchBatch();
  // Marks or deletes the rows with these seqs and commits.
  absl::Status CompleteBatch(const std::vector<int64_t>& seqs);
  // Rolls the batch back. Safe to call when no batch is open.
  absl::Status AbortBatch();

  // Waits until `deadline`, a notification (notify mode) or `stop`.
  // Returns true when woken by a notification.
  absl::StatusOr<bool> WaitForWork(absl::Time deadline,
                                   const std::atomic<bool>& stop);

  bool has_created_column() const { return !created_.empty(); }

 private:
  OutboxPoller(const OutboxPollerOptions& options,
               std::unique_ptr<PgConnection> conn)
      : options_(options),
        conn_(std::move(conn)),
        table_name_(
            absl::StrCat(options.table.schema, ".", options.table.name)) {}
  absl::Status Prepare();
  // Serves pending notifications; true when at least one arrived.
  absl::StatusOr<bool> DrainNotifications();

  const OutboxPollerOptions options_;
  std::unique_ptr<PgConnection> conn_;
  bool in_batch_ = false;
  std::optional<OutboxTable> table_;  // set by Prepare
  const std::string table_name_;      // "schema.table": header outbox.table
  // Quoted identifiers ("" when the optional column is absent).
  std::string seq_, published_, created_, aggregate_id_;
  std::string select_sql_, blockers_sql_, complete_sql_;
};

}  // namespace outboxd

#endif  // OUTBOXD_SOURCES_OUTBOX_POLLER_H_
