// OutboxMapper: the outbox stage. Turns decoded pgoutput messages into
// transaction boundaries and OutboxEvents.
//
// Owns the relation cache (relation id -> columns, replaced whenever a new
// Relation message arrives, e.g. after ALTER TABLE) and the state of the
// transaction being decoded. Inserts into any of the outbox tables and
// transactional logical decoding messages with the configured prefix become
// events (an insert's event names its table: OutboxEvent::table);
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
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "outbox/event.h"
#include "outbox/row_to_event.h"
#include "pg/identifier.h"
#include "pg/pgoutput.h"

namespace outboxd {

struct OutboxMapperOptions {
  // The outbox tables, each mapped the same way (same columns, same
  // routing); empty: no table, logical decoding messages only.
  std::vector<QualifiedName> tables;
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

class OutboxMapper {
 public:
  explicit OutboxMapper(OutboxMapperOptions options);

  absl::StatusOr<MappedMessage> Apply(const pgoutput::PgOutputMessage& msg);

  const MapperCounters& counters() const { return counters_; }
  bool in_transaction() const { return in_transaction_; }

 private:
  struct CachedRelation {
    std::string nspname;
    std::string relname;
    size_t column_count = 0;
    std::vector<std::string> column_names;
    std::optional<OutboxRowLayout> outbox;  // set when this is an outbox table
    std::string table;  // "schema.table" of an outbox table (outbox.table)
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
  std::vector<RowCell> cells_;  // scratch for OnInsert
};

}  // namespace outboxd

#endif  // OUTBOXD_OUTBOX_OUTBOX_MAPPER_H_
