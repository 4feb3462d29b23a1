// pgoutput decoding (proto_version 1, messages on): one XLogData payload in,
// one typed message out. Owns the wire layout of every message kind listed in
// pgoutput.h and the policy that anything unexpected is kDataLoss.
//
// Layout reference: PostgreSQL docs, "Logical Replication Message Formats",
// and src/backend/replication/logical/proto.c (the writer side). In proto
// version 1 no message carries a streaming xid.
//
// Why so strict: the decoded stream decides which WAL position we confirm to
// PostgreSQL. A message we misread could confirm past an event that never
// reached Kafka, so we stop on the first byte we do not understand instead of
// guessing (no "skip unknown kind", no "ignore leftover bytes").
//
// Speed: the decoder sits on the hot path (one call per replicated row).
// Values are string_views into the input, each tuple makes exactly one
// allocation (its value vector, reserved up front) and every count is checked
// against the bytes left before anything is reserved, so corrupt counts can
// neither over-allocate nor loop long.
#include "pg/pgoutput.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/byte_reader.h"
#include "common/status_macros.h"

namespace outboxd::pgoutput {
namespace {

// Byte1 at offset 0 of every message (PostgreSQL's LOGICAL_REP_MSG_*).
constexpr uint8_t kKindBegin = 'B';
constexpr uint8_t kKindCommit = 'C';
constexpr uint8_t kKindOrigin = 'O';
constexpr uint8_t kKindRelation = 'R';
constexpr uint8_t kKindType = 'Y';
constexpr uint8_t kKindInsert = 'I';
constexpr uint8_t kKindUpdate = 'U';
constexpr uint8_t kKindDelete = 'D';
constexpr uint8_t kKindTruncate = 'T';
constexpr uint8_t kKindMessage = 'M';

// Tuple markers inside Insert / Update / Delete.
constexpr uint8_t kTupleNew = 'N';
constexpr uint8_t kTupleOldKey = 'K';
constexpr uint8_t kTupleOldRow = 'O';

// Flag bits. Every bit not defined here is rejected: a future protocol
// change we do not understand must stop us, not be read as something else.
constexpr uint8_t kColumnFlagPartOfKey = 1;       // Relation column flags
constexpr uint8_t kMessageFlagTransactional = 1;  // Message flags
constexpr uint8_t kTruncateCascade = 1;           // Truncate options
constexpr uint8_t kTruncateRestartIdentity = 2;

// Smallest encoding of one Relation column: Int8 flags, an empty String
// (just its NUL), Int32 type oid, Int32 type modifier.
constexpr size_t kMinRelationColumnSize = 1 + 1 + 4 + 4;
// Smallest encoding of one tuple value: its Byte1 kind ('n' or 'u').
constexpr size_t kMinTupleValueSize = 1;
// One Truncate relation id: Int32.
constexpr size_t kTruncateRelationIdSize = 4;

// "'I' (0x49)" for printable bytes, "0x05" otherwise: error messages must be
// readable whatever garbage arrived.
std::string DescribeByte(uint8_t b) {
  if (b >= 0x20 && b < 0x7f) {
    return absl::StrFormat("'%c' (0x%02x)", static_cast<char>(b), b);
  }
  return absl::StrFormat("0x%02x", b);
}

absl::Status Corrupt(absl::string_view message, absl::string_view detail) {
  return absl::DataLossError(absl::StrCat("pgoutput ", message, ": ", detail));
}

// A count read from the wire, checked before it sizes anything: it must not
// be negative and `count` items of at least `min_item_size` bytes each must
// fit in what is left of the message.
absl::Status CheckCount(int64_t count, size_t min_item_size,
                        const ByteReader& reader, absl::string_view message,
                        absl::string_view what) {
  if (count < 0) {
    return Corrupt(message, absl::StrCat("negative ", what, " ", count));
  }
  if (static_cast<uint64_t>(count) * min_item_size > reader.remaining()) {
    return Corrupt(message,
                   absl::StrCat(what, " ", count, " needs at least ",
                                static_cast<uint64_t>(count) * min_item_size,
                                " bytes, only ", reader.remaining(), " left"));
  }
  return absl::OkStatus();
}

absl::Status ReadLsn(ByteReader& reader, absl::string_view what, Lsn& out) {
  ASSIGN_OR_RETURN(uint64_t value, reader.ReadU64(what));
  out = Lsn(value);
  return absl::OkStatus();
}

// TupleData: Int16 column count, then per column Byte1 kind and, for 't' and
// 'b', Int32 length + bytes.
absl::Status ReadTuple(ByteReader& reader, absl::string_view message,
                       TupleData& tuple) {
  ASSIGN_OR_RETURN(int16_t count, reader.ReadI16("tuple column count"));
  RETURN_IF_ERROR(CheckCount(count, kMinTupleValueSize, reader, message,
                             "tuple column count"));
  tuple.values.clear();
  tuple.values.reserve(static_cast<size_t>(count));
  for (int16_t i = 0; i < count; ++i) {
    ASSIGN_OR_RETURN(uint8_t kind, reader.ReadU8("tuple value kind"));
    switch (kind) {
      case static_cast<uint8_t>(TupleValue::Kind::kNull):
      case static_cast<uint8_t>(TupleValue::Kind::kUnchangedToast):
        tuple.values.push_back(
            TupleValue{static_cast<TupleValue::Kind>(kind), {}});
        break;
      case static_cast<uint8_t>(TupleValue::Kind::kText):
      case static_cast<uint8_t>(TupleValue::Kind::kBinary): {
        ASSIGN_OR_RETURN(int32_t length, reader.ReadI32("tuple value length"));
        if (length < 0) {
          return Corrupt(message, absl::StrCat("negative length ", length,
                                               " of tuple value ", i));
        }
        ASSIGN_OR_RETURN(
            absl::string_view data,
            reader.ReadBytes(static_cast<size_t>(length), "tuple value bytes"));
        tuple.values.push_back(
            TupleValue{static_cast<TupleValue::Kind>(kind), data});
        break;
      }
      default:
        return Corrupt(message,
                       absl::StrCat("unknown tuple value kind ",
                                    DescribeByte(kind), " in column ", i));
    }
  }
  return absl::OkStatus();
}

// 'B': Int64 final LSN, Int64 commit time, Int32 xid.
absl::StatusOr<PgOutputMessage> DecodeBegin(ByteReader& reader) {
  Begin begin;
  RETURN_IF_ERROR(ReadLsn(reader, "Begin final LSN", begin.final_lsn));
  ASSIGN_OR_RETURN(begin.commit_time, reader.ReadI64("Begin commit time"));
  ASSIGN_OR_RETURN(begin.xid, reader.ReadU32("Begin xid"));
  if (!begin.final_lsn.valid()) {
    return Corrupt("Begin", "final LSN is 0 (InvalidXLogRecPtr)");
  }
  RETURN_IF_ERROR(reader.ExpectEnd("pgoutput Begin"));
  return begin;
}

// 'C': Int8 flags (0), Int64 commit LSN, Int64 end LSN, Int64 commit time.
absl::StatusOr<PgOutputMessage> DecodeCommit(ByteReader& reader) {
  Commit commit;
  ASSIGN_OR_RETURN(commit.flags, reader.ReadU8("Commit flags"));
  if (commit.flags != 0) {
    return Corrupt("Commit",
                   absl::StrCat("unknown flags ", DescribeByte(commit.flags)));
  }
  RETURN_IF_ERROR(ReadLsn(reader, "Commit LSN", commit.commit_lsn));
  RETURN_IF_ERROR(ReadLsn(reader, "Commit end LSN", commit.end_lsn));
  ASSIGN_OR_RETURN(commit.commit_time, reader.ReadI64("Commit commit time"));
  // end_lsn is what we confirm to PostgreSQL; 0 would be a lie about it.
  if (!commit.end_lsn.valid()) {
    return Corrupt("Commit", "end LSN is 0 (InvalidXLogRecPtr)");
  }
  RETURN_IF_ERROR(reader.ExpectEnd("pgoutput Commit"));
  return commit;
}

// 'O': Int64 origin commit LSN, String origin name.
absl::StatusOr<PgOutputMessage> DecodeOrigin(ByteReader& reader) {
  Origin origin;
  RETURN_IF_ERROR(ReadLsn(reader, "Origin commit LSN", origin.commit_lsn));
  ASSIGN_OR_RETURN(absl::string_view name, reader.ReadCString("Origin name"));
  origin.name = std::string(name);
  RETURN_IF_ERROR(reader.ExpectEnd("pgoutput Origin"));
  return origin;
}

// 'R': Int32 relation id, String namespace, String name, Int8 replica
// identity, Int16 column count, then per column Int8 flags, String name,
// Int32 type oid, Int32 type modifier.
absl::StatusOr<PgOutputMessage> DecodeRelation(ByteReader& reader) {
  Relation relation;
  ASSIGN_OR_RETURN(relation.relation_id, reader.ReadU32("Relation id"));
  ASSIGN_OR_RETURN(absl::string_view nspname,
                   reader.ReadCString("Relation namespace"));
  ASSIGN_OR_RETURN(absl::string_view relname,
                   reader.ReadCString("Relation name"));
  relation.nspname = std::string(nspname);
  relation.relname = std::string(relname);
  ASSIGN_OR_RETURN(uint8_t identity,
                   reader.ReadU8("Relation replica identity"));
  switch (identity) {
    case 'd':  // default (primary key)
    case 'n':  // nothing
    case 'f':  // full
    case 'i':  // index
      relation.replica_identity = static_cast<char>(identity);
      break;
    default:
      return Corrupt("Relation", absl::StrCat("unknown replica identity ",
                                              DescribeByte(identity)));
  }
  ASSIGN_OR_RETURN(int16_t count, reader.ReadI16("Relation column count"));
  RETURN_IF_ERROR(CheckCount(count, kMinRelationColumnSize, reader, "Relation",
                             "column count"));
  relation.columns.reserve(static_cast<size_t>(count));
  for (int16_t i = 0; i < count; ++i) {
    RelationColumn column;
    ASSIGN_OR_RETURN(uint8_t flags, reader.ReadU8("Relation column flags"));
    if ((flags & ~kColumnFlagPartOfKey) != 0) {
      return Corrupt("Relation",
                     absl::StrCat("unknown flags ", DescribeByte(flags),
                                  " on column ", i));
    }
    column.part_of_key = (flags & kColumnFlagPartOfKey) != 0;
    ASSIGN_OR_RETURN(absl::string_view name,
                     reader.ReadCString("Relation column name"));
    column.name = std::string(name);
    ASSIGN_OR_RETURN(column.type_oid,
                     reader.ReadU32("Relation column type oid"));
    ASSIGN_OR_RETURN(column.type_modifier,
                     reader.ReadI32("Relation column type modifier"));
    relation.columns.push_back(std::move(column));
  }
  RETURN_IF_ERROR(reader.ExpectEnd("pgoutput Relation"));
  return relation;
}

// 'Y': Int32 type oid, String namespace, String type name.
absl::StatusOr<PgOutputMessage> DecodeType(ByteReader& reader) {
  Type type;
  ASSIGN_OR_RETURN(type.type_oid, reader.ReadU32("Type oid"));
  ASSIGN_OR_RETURN(absl::string_view nspname,
                   reader.ReadCString("Type namespace"));
  ASSIGN_OR_RETURN(absl::string_view typname, reader.ReadCString("Type name"));
  type.nspname = std::string(nspname);
  type.typname = std::string(typname);
  RETURN_IF_ERROR(reader.ExpectEnd("pgoutput Type"));
  return type;
}

// 'I': Int32 relation id, Byte1 'N', TupleData.
absl::StatusOr<PgOutputMessage> DecodeInsert(ByteReader& reader) {
  Insert insert;
  ASSIGN_OR_RETURN(insert.relation_id, reader.ReadU32("Insert relation id"));
  ASSIGN_OR_RETURN(uint8_t marker, reader.ReadU8("Insert tuple marker"));
  if (marker != kTupleNew) {
    return Corrupt("Insert", absl::StrCat("expected new tuple 'N', got ",
                                          DescribeByte(marker)));
  }
  RETURN_IF_ERROR(ReadTuple(reader, "Insert", insert.new_tuple));
  RETURN_IF_ERROR(reader.ExpectEnd("pgoutput Insert"));
  return insert;
}

// 'U': Int32 relation id, optionally Byte1 'K' or 'O' + old TupleData, then
// Byte1 'N' + new TupleData.
absl::StatusOr<PgOutputMessage> DecodeUpdate(ByteReader& reader) {
  Update update;
  ASSIGN_OR_RETURN(update.relation_id, reader.ReadU32("Update relation id"));
  ASSIGN_OR_RETURN(uint8_t marker, reader.ReadU8("Update tuple marker"));
  if (marker == kTupleOldKey || marker == kTupleOldRow) {
    update.old_kind = static_cast<char>(marker);
    update.old_tuple.emplace();
    RETURN_IF_ERROR(ReadTuple(reader, "Update", *update.old_tuple));
    ASSIGN_OR_RETURN(marker, reader.ReadU8("Update new tuple marker"));
  }
  if (marker != kTupleNew) {
    return Corrupt("Update",
                   absl::StrCat("expected tuple marker 'K', 'O' or 'N', got ",
                                DescribeByte(marker)));
  }
  RETURN_IF_ERROR(ReadTuple(reader, "Update", update.new_tuple));
  RETURN_IF_ERROR(reader.ExpectEnd("pgoutput Update"));
  return update;
}

// 'D': Int32 relation id, Byte1 'K' or 'O', old TupleData.
absl::StatusOr<PgOutputMessage> DecodeDelete(ByteReader& reader) {
  Delete del;
  ASSIGN_OR_RETURN(del.relation_id, reader.ReadU32("Delete relation id"));
  ASSIGN_OR_RETURN(uint8_t marker, reader.ReadU8("Delete tuple marker"));
  if (marker != kTupleOldKey && marker != kTupleOldRow) {
    return Corrupt("Delete",
                   absl::StrCat("expected old tuple marker 'K' or 'O', got ",
                                DescribeByte(marker)));
  }
  del.old_kind = static_cast<char>(marker);
  RETURN_IF_ERROR(ReadTuple(reader, "Delete", del.old_tuple));
  RETURN_IF_ERROR(reader.ExpectEnd("pgoutput Delete"));
  return del;
}

// 'T': Int32 relation count, Int8 options, Int32 relation id per relation.
absl::StatusOr<PgOutputMessage> DecodeTruncate(ByteReader& reader) {
  Truncate truncate;
  ASSIGN_OR_RETURN(int32_t count, reader.ReadI32("Truncate relation count"));
  ASSIGN_OR_RETURN(truncate.options, reader.ReadU8("Truncate options"));
  if ((truncate.options & ~(kTruncateCascade | kTruncateRestartIdentity)) !=
      0) {
    return Corrupt("Truncate", absl::StrCat("unknown options ",
                                            DescribeByte(truncate.options)));
  }
  RETURN_IF_ERROR(CheckCount(count, kTruncateRelationIdSize, reader, "Truncate",
                             "relation count"));
  truncate.relation_ids.reserve(static_cast<size_t>(count));
  for (int32_t i = 0; i < count; ++i) {
    ASSIGN_OR_RETURN(uint32_t id, reader.ReadU32("Truncate relation id"));
    truncate.relation_ids.push_back(id);
  }
  RETURN_IF_ERROR(reader.ExpectEnd("pgoutput Truncate"));
  return truncate;
}

// 'M' (proto v1, no xid): Int8 flags, Int64 LSN, String prefix, Int32
// content length, content bytes.
absl::StatusOr<PgOutputMessage> DecodeMessage(ByteReader& reader) {
  Message message;
  ASSIGN_OR_RETURN(uint8_t flags, reader.ReadU8("Message flags"));
  if ((flags & ~kMessageFlagTransactional) != 0) {
    return Corrupt("Message",
                   absl::StrCat("unknown flags ", DescribeByte(flags)));
  }
  message.transactional = (flags & kMessageFlagTransactional) != 0;
  RETURN_IF_ERROR(ReadLsn(reader, "Message LSN", message.lsn));
  ASSIGN_OR_RETURN(message.prefix, reader.ReadCString("Message prefix"));
  ASSIGN_OR_RETURN(int32_t length, reader.ReadI32("Message content length"));
  if (length < 0) {
    return Corrupt("Message", absl::StrCat("negative content length ", length));
  }
  ASSIGN_OR_RETURN(
      message.content,
      reader.ReadBytes(static_cast<size_t>(length), "Message content"));
  RETURN_IF_ERROR(reader.ExpectEnd("pgoutput Message"));
  return message;
}

}  // namespace

absl::StatusOr<PgOutputMessage> Decode(absl::string_view bytes) {
  ByteReader reader(bytes);
  ASSIGN_OR_RETURN(uint8_t kind, reader.ReadU8("pgoutput message kind"));
  switch (kind) {
    case kKindInsert:  // the hot one first; the compiler may reorder anyway
      return DecodeInsert(reader);
    case kKindBegin:
      return DecodeBegin(reader);
    case kKindCommit:
      return DecodeCommit(reader);
    case kKindOrigin:
      return DecodeOrigin(reader);
    case kKindRelation:
      return DecodeRelation(reader);
    case kKindType:
      return DecodeType(reader);
    case kKindUpdate:
      return DecodeUpdate(reader);
    case kKindDelete:
      return DecodeDelete(reader);
    case kKindTruncate:
      return DecodeTruncate(reader);
    case kKindMessage:
      return DecodeMessage(reader);
    default:
      // Includes the streaming ('S', 'E', 'c', 'A') and two-phase kinds of
      // later protocol versions: we never ask for them, so seeing one means
      // the stream is not what we negotiated.
      return absl::DataLossError(absl::StrCat("unknown pgoutput message kind ",
                                              DescribeByte(kind),
                                              " (proto_version 1)"));
  }
}

}  // namespace outboxd::pgoutput
