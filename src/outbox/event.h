// OutboxEvent: one event decoded from the outbox table or from a
// transactional logical decoding message, before routing to Kafka.
//
// A plain value; owns its strings.
#ifndef OUTBOXD_OUTBOX_EVENT_H_
#define OUTBOXD_OUTBOX_EVENT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "common/lsn.h"

namespace outboxd {

// The global sequence number of an event: (commit LSN of its transaction,
// 0-based index inside the transaction). Strictly increasing over a stream.
struct EventPosition {
  Lsn commit_lsn;
  uint32_t index = 0;

  friend auto operator<=>(const EventPosition&, const EventPosition&) = default;
};

struct OutboxEvent {
  // CDC events: the position (docs/ARCHITECTURE.md, "The record contract").
  EventPosition position;
  // Polled events (--source=poll|notify) have no commit LSN: the row's
  // `seq` identity value instead. When set, the router emits `outbox.seq`
  // in place of `outbox.lsn` / `outbox.index`.
  std::optional<int64_t> table_seq;
  int64_t commit_time_unix_ms = 0;  // Kafka CreateTime
  std::string id;
  std::string aggregate_type;
  std::string aggregate_id;
  std::string type;
  std::optional<std::string> payload;  // nullopt: tombstone
  // The payload's media type (CloudEvents datacontenttype) is content_type,
  // the row's content_type column, or when that is empty
  // default_content_type, what the payload column's type implies
  // (PayloadContentType; application/json for a logical decoding message).
  // The default is a view of static storage: no copy per event.
  std::string content_type;
  absl::string_view default_content_type = "application/json";
  // From the optional `headers` column, in the object's order. Never a
  // reserved name (IsReservedHeader): those are in dropped_headers.
  std::vector<std::pair<std::string, std::string>> headers;
  // Reserved names (id, eventType, outbox.*) the `headers` column tried to
  // set; dropped, so they cannot forge the record's own headers. The
  // pipeline counts and logs them.
  std::vector<std::string> dropped_headers;
  // Event ids this event causally depends on (optional depends-on column,
  // uuid[]); header outbox.depends-on.
  std::vector<std::string> depends_on;
  // Republished from the outbox table after a lost slot
  // (--on-slot-loss=republish): the last position acknowledged before the
  // loss; header outbox.republished. `position` is then not a commit
  // position but (start of the new slot - 1, rank in the republish).
  std::optional<Lsn> republished_after;
  // Published late by the reconciler (pipeline/reconciler.h): the position
  // outboxd had confirmed when it found the row never acknowledged; header
  // outbox.reconciled. `position` is then (that position, rank).
  std::optional<Lsn> reconciled_before;
  // The outbox table the row was inserted into, "schema.table" as
  // PostgreSQL names them (unquoted); header outbox.table. Empty for a
  // logical decoding message, which has no table.
  std::string table;
};

// A row or message that is not a valid event; `content` is a JSON rendering
// of what was received, for the dead-letter topic. Its position fields mean
// what OutboxEvent's do.
struct InvalidEvent {
  EventPosition position;
  std::optional<int64_t> table_seq;  // polled rows: the row's seq
  int64_t commit_time_unix_ms = 0;
  std::string reason;
  std::string content;
  std::string aggregate_id;  // best effort, "" when unknown
  std::string id;            // the event's id; "" when it has none
  std::string table;         // as OutboxEvent::table
  // As OutboxEvent::republished_after (header outbox.republished).
  std::optional<Lsn> republished_after;
  // As OutboxEvent::reconciled_before (header outbox.reconciled).
  std::optional<Lsn> reconciled_before;
};

}  // namespace outboxd

#endif  // OUTBOXD_OUTBOX_EVENT_H_
