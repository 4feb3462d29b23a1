// OutboxMapper: the outbox stage. Turns decoded pgoutput messages into
// transaction boundaries and OutboxEvents.
//
// Owns the relation cache (relation id -> columns, replaced whenever a new
// Relation message arrives, e.g. after ALTER TABLE) and the state of the
// transaction being decoded. Inserts into the outbox table and transactional
// logical decoding messages with the configured prefix become events;
// updates, deletes, truncates, other tables and non-transactional messages
// are counted and ignored. A row or message that cannot be an event (NULL
// aggregate id, headers that are not an object of strings, ...) becomes an
// InvalidEvent, which the pipeline dead-letters or fails on. A stream that
// breaks the protocol (Insert for an unknown relation, Commit without Begin)
// is kDataLoss.
//
// Pure: no I/O. Not thread-safe; one pipeline thread owns it.
#ifndef OUTBOXD_OUTBOX_OUTBOX_MAPPER_H_
#define OUTBOXD_OUTBOX_OUTBOX_MAPPER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <variant>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "outbox/event.h"
#include "pg/pgoutput.h"
#include "pg/replication_setup.h"

namespace outboxd {

// Column names of the outbox table (DESIGN.md section 1), Debezium's names
// by default; each is configurable by flag.
struct OutboxColumns {
  std::string id = "id";
  std::string aggregate_type = "aggregatetype";
  std::string aggregate_id = "aggregateid";
  std::string type = "type";
  std::string payload = "payload";
  std::string headers = "headers";  // optional column
  // Optional uuid[] (or text[]) column of event ids this event depends on;
  // header outbox.depends-on. "" to ignore.
  std::string depends_on = "depends_on";
};

struct OutboxMapperOptions {
  // nullopt: no table, logical decoding messages only.
  std::optional<QualifiedName> table;
  OutboxColumns columns;
  // Transactional logical decoding messages with exactly this prefix are
  // events; "" disables them.
  std::string message_prefix = "outbox";
};

struct TransactionBegin {
  Lsn commit_lsn;
  int64_t commit_time_unix_ms = 0;
  int64_t commit_time_unix_us = 0;  // the same, to the microsecond
};

struct TransactionCommit {
  Lsn end_lsn;  // what to confirm once the transaction is acknowledged
};

// A row or message that is not a valid event; `content` is a JSON rendering
// of what was received, for the dead-letter topic.
struct InvalidEvent {
  EventPosition position;
  int64_t commit_time_unix_ms = 0;
  std::string reason;
  std::string content;
  std::string aggregate_id;  // best effort, "" when unknown
};

using MappedMessage =
    std::variant<std::monostate, TransactionBegin, OutboxEvent, InvalidEvent,
                 TransactionCommit>;

struct MapperCounters {
  uint64_t events = 0;
  uint64_t invalid_events = 0;
  uint64_t transactions = 0;
  uint64_t ignored_updates = 0;
  uint64_t ignored_deletes = 0;
  uint64_t ignored_truncates = 0;
  uint64_t ignored_other_tables = 0;
  uint64_t ignored_nontransactional_messages = 0;
  uint64_t ignored_other_prefix_messages = 0;
  uint64_t relations = 0;
};

// Parses the text of a `headers` value (a JSON object of string values, or
// null) into event->headers, in the object's order. Reserved names
// (IsReservedHeader: id, eventType, outbox.*) do not reach event->headers:
// they are listed in event->dropped_headers. kInvalidArgumentError with the
// reason for anything else than an object of strings.
absl::Status ParseHeadersText(absl::string_view text, OutboxEvent* event);

// Parses the JSON content of a logical decoding message into `event`'s
// fields (id, aggregatetype, aggregateid, type, payload, headers); the
// position and commit time are left alone. kInvalidArgument with the reason
// when the content is not such an object.
absl::Status ParseMessageEvent(absl::string_view content, OutboxEvent* event);

// Parses an array of ids as PostgreSQL prints it ('{a,b}', elements
// optionally double-quoted) into its elements. kInvalidArgument for a NULL
// element, an empty element or text that is not a one-dimensional array.
absl::StatusOr<std::vector<std::string>> ParseIdArrayText(
    absl::string_view text);

// Decodes a bytea value as PostgreSQL prints it (hex `\x...` or escape
// format) into raw bytes.
absl::StatusOr<std::string> DecodeByteaText(absl::string_view text);

class OutboxMapper {
 public:
  explicit OutboxMapper(OutboxMapperOptions options);

  absl::StatusOr<MappedMessage> Apply(const pgoutput::PgOutputMessage& msg);

  const MapperCounters& counters() const { return counters_; }
  bool in_transaction() const { return in_transaction_; }

 private:
  // Where the outbox columns are in a relation's tuples; -1 when absent.
  struct OutboxLayout {
    int id = -1;
    int aggregate_type = -1;
    int aggregate_id = -1;
    int type = -1;
    int payload = -1;
    int headers = -1;
    int depends_on = -1;
    uint32_t payload_type_oid = 0;
  };
  struct CachedRelation {
    std::string nspname;
    std::string relname;
    size_t column_count = 0;
    std::vector<std::string> column_names;
    std::optional<OutboxLayout> outbox;  // set when this is the outbox table
  };

  absl::StatusOr<MappedMessage> OnRelation(const pgoutput::Relation& rel);
  absl::StatusOr<MappedMessage> OnInsert(const pgoutput::Insert& insert);
  absl::StatusOr<MappedMessage> OnMessage(const pgoutput::Message& message);
  absl::StatusOr<const CachedRelation*> FindRelation(uint32_t relation_id);
  absl::Status RequireTransaction(absl::string_view what) const;
  EventPosition NextPosition() {
    return EventPosition{commit_lsn_, next_index_++};
  }

  OutboxMapperOptions options_;
  absl::flat_hash_map<uint32_t, CachedRelation> relations_;
  MapperCounters counters_;
  bool in_transaction_ = false;
  Lsn commit_lsn_;
  int64_t commit_time_unix_ms_ = 0;
  uint32_t next_index_ = 0;
};

}  // namespace outboxd

#endif  // OUTBOXD_OUTBOX_OUTBOX_MAPPER_H_
