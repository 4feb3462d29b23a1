// pgoutput: decodes the logical replication protocol messages that the
// pgoutput plugin sends inside XLogData (proto_version 1, with messages).
//
// Pure: bytes in, typed message out, no I/O and no state. Every read is
// bounds-checked; truncated input, an unknown message kind, an unknown tuple
// column kind or trailing bytes are kDataLoss errors, never a crash and never
// a silent skip. Thread-safe (no shared state).
//
// Lifetime: string_views inside a decoded message point into the input
// bytes, which must remain live while the message is in use. Relation and
// Type own their strings because they are cached beyond one message.
#ifndef OUTBOXD_PG_PGOUTPUT_H_
#define OUTBOXD_PG_PGOUTPUT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/lsn.h"

namespace outboxd::pgoutput {

// 'B'
struct Begin {
  Lsn final_lsn;        // LSN of the commit record
  int64_t commit_time;  // microseconds since 2000-01-01 UTC
  uint32_t xid;
};

// 'C'
struct Commit {
  uint8_t flags;   // currently always 0
  Lsn commit_lsn;  // LSN of the commit record
  Lsn end_lsn;     // end LSN of the transaction: what to confirm
  int64_t commit_time;
};

// 'O'
struct Origin {
  Lsn commit_lsn;
  std::string name;
};

struct RelationColumn {
  bool part_of_key;  // flags bit 1
  std::string name;
  uint32_t type_oid;
  int32_t type_modifier;
};

// 'R'
struct Relation {
  uint32_t relation_id;
  std::string nspname;  // "" is pg_catalog in PostgreSQL's encoding
  std::string relname;
  char replica_identity;  // 'd', 'n', 'f' or 'i'
  std::vector<RelationColumn> columns;
};

// 'Y'
struct Type {
  uint32_t type_oid;
  std::string nspname;
  std::string typname;
};

struct TupleValue {
  enum class Kind : char {
    kNull = 'n',
    kUnchangedToast = 'u',
    kText = 't',
    kBinary = 'b',
  };
  Kind kind;
  absl::string_view data;  // empty unless kText / kBinary
};

struct TupleData {
  std::vector<TupleValue> values;
};

// 'I'
struct Insert {
  uint32_t relation_id;
  TupleData new_tuple;
};

// 'U'
struct Update {
  uint32_t relation_id;
  // 'K' (key columns) or 'O' (whole old row) when present, 0 otherwise.
  char old_kind = 0;
  std::optional<TupleData> old_tuple;
  TupleData new_tuple;
};

// 'D'
struct Delete {
  uint32_t relation_id;
  char old_kind;  // 'K' or 'O'
  TupleData old_tuple;
};

// 'T'
struct Truncate {
  uint8_t options;  // 1 = CASCADE, 2 = RESTART IDENTITY
  std::vector<uint32_t> relation_ids;
};

// 'M': a logical decoding message (pg_logical_emit_message).
struct Message {
  bool transactional;  // flags bit 1
  Lsn lsn;
  absl::string_view prefix;
  absl::string_view content;
};

using PgOutputMessage = std::variant<Begin, Commit, Origin, Relation, Type,
                                     Insert, Update, Delete, Truncate, Message>;

// Decodes one pgoutput message (the payload of one XLogData).
absl::StatusOr<PgOutputMessage> Decode(absl::string_view bytes);

}  // namespace outboxd::pgoutput

#endif  // OUTBOXD_PG_PGOUTPUT_H_
