// The streaming replication sub-protocol carried in CopyData messages of a
// replication connection (PostgreSQL docs, "Streaming Replication Protocol"):
// XLogData ('w') and primary keepalive ('k') from the server, standby status
// update ('r') from us.
//
// Pure encoding and decoding, bounds-checked like pgoutput.h. Thread-safe.
// XLogData::data points into the input bytes.
#ifndef OUTBOXD_PG_REPLICATION_PROTOCOL_H_
#define OUTBOXD_PG_REPLICATION_PROTOCOL_H_

#include <cstdint>
#include <string>
#include <variant>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/lsn.h"

namespace outboxd {

// 'w': Byte1('w') Int64 dataStart Int64 walEnd Int64 sendTime Byten data
struct XLogData {
  static constexpr size_t kHeaderSize = 1 + 8 + 8 + 8;
  Lsn data_start;
  Lsn wal_end;
  int64_t send_time;  // microseconds since 2000-01-01 UTC
  absl::string_view data;
};

// 'k': Byte1('k') Int64 walEnd Int64 sendTime Byte1 replyRequested
struct PrimaryKeepalive {
  static constexpr size_t kSize = 1 + 8 + 8 + 1;
  Lsn wal_end;
  int64_t send_time;
  bool reply_requested;
};

using ServerCopyMessage = std::variant<XLogData, PrimaryKeepalive>;

// Decodes one CopyData payload received from the walsender.
absl::StatusOr<ServerCopyMessage> DecodeServerCopyMessage(
    absl::string_view bytes);

// 'r': Byte1('r') Int64 written Int64 flushed Int64 applied Int64 clockTime
//      Byte1 replyRequested
struct StandbyStatusUpdate {
  static constexpr size_t kSize = 1 + 8 + 8 + 8 + 8 + 1;
  Lsn written;
  Lsn flushed;
  Lsn applied;
  int64_t client_time;  // microseconds since 2000-01-01 UTC
  bool reply_requested = false;
};

std::string EncodeStandbyStatusUpdate(const StandbyStatusUpdate& update);

}  // namespace outboxd

#endif  // OUTBOXD_PG_REPLICATION_PROTOCOL_H_
