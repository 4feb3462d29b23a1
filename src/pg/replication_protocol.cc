// Streaming replication CopyData messages: decoding what the walsender sends
// (XLogData 'w', primary keepalive 'k') and encoding our standby status
// update ('r'). Layouts: PostgreSQL docs, "Streaming Replication Protocol".
//
// As strict as pgoutput.cc: the walEnd values decoded here can move the
// confirmed position when idle, so a misread byte must stop us, not advance
// the slot.
#include "pg/replication_protocol.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/byte_reader.h"
#include "common/status_macros.h"

namespace outboxd {
namespace {

constexpr uint8_t kKindXLogData = 'w';
constexpr uint8_t kKindPrimaryKeepalive = 'k';
constexpr uint8_t kKindStandbyStatusUpdate = 'r';

std::string DescribeByte(uint8_t b) {
  if (b >= 0x20 && b < 0x7f) {
    return absl::StrFormat("'%c' (0x%02x)", static_cast<char>(b), b);
  }
  return absl::StrFormat("0x%02x", b);
}

// Byte1('w') Int64 dataStart Int64 walEnd Int64 sendTime Byten data. The data
// is the rest of the CopyData payload (one pgoutput message); it may be empty
// as far as this layer is concerned, pgoutput decides whether that is valid.
absl::StatusOr<ServerCopyMessage> DecodeXLogData(ByteReader& reader) {
  XLogData x;
  ASSIGN_OR_RETURN(uint64_t data_start, reader.ReadU64("XLogData dataStart"));
  ASSIGN_OR_RETURN(uint64_t wal_end, reader.ReadU64("XLogData walEnd"));
  ASSIGN_OR_RETURN(x.send_time, reader.ReadI64("XLogData sendTime"));
  x.data_start = Lsn(data_start);
  x.wal_end = Lsn(wal_end);
  x.data = reader.ReadRest();
  return x;
}

// Byte1('k') Int64 walEnd Int64 sendTime Byte1 replyRequested.
absl::StatusOr<ServerCopyMessage> DecodeKeepalive(ByteReader& reader) {
  PrimaryKeepalive k;
  ASSIGN_OR_RETURN(uint64_t wal_end, reader.ReadU64("keepalive walEnd"));
  ASSIGN_OR_RETURN(k.send_time, reader.ReadI64("keepalive sendTime"));
  ASSIGN_OR_RETURN(uint8_t reply, reader.ReadU8("keepalive replyRequested"));
  // The server sends exactly 0 or 1; anything else is not a keepalive we
  // understand.
  if (reply > 1) {
    return absl::DataLossError(absl::StrCat(
        "keepalive: replyRequested must be 0 or 1, got ", DescribeByte(reply)));
  }
  RETURN_IF_ERROR(reader.ExpectEnd("keepalive"));
  k.wal_end = Lsn(wal_end);
  k.reply_requested = reply == 1;
  return k;
}

}  // namespace

absl::StatusOr<ServerCopyMessage> DecodeServerCopyMessage(
    absl::string_view bytes) {
  ByteReader reader(bytes);
  ASSIGN_OR_RETURN(uint8_t kind, reader.ReadU8("CopyData message kind"));
  switch (kind) {
    case kKindXLogData:
      return DecodeXLogData(reader);
    case kKindPrimaryKeepalive:
      return DecodeKeepalive(reader);
    default:
      return absl::DataLossError(absl::StrCat(
          "unknown replication CopyData message kind ", DescribeByte(kind)));
  }
}

std::string EncodeStandbyStatusUpdate(const StandbyStatusUpdate& update) {
  ByteWriter w;
  w.U8(kKindStandbyStatusUpdate)
      .U64(update.written.value())
      .U64(update.flushed.value())
      .U64(update.applied.value())
      .I64(update.client_time)
      .U8(update.reply_requested ? 1 : 0);
  return w.Take();
}

}  // namespace outboxd
