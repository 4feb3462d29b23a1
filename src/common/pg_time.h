// PostgreSQL timestamps on the wire: microseconds since 2000-01-01 00:00 UTC.
#ifndef OUTBOXD_COMMON_PG_TIME_H_
#define OUTBOXD_COMMON_PG_TIME_H_

#include <cstdint>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace outboxd {

// Seconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
inline constexpr int64_t kPgEpochOffsetSeconds = 946684800;

inline absl::Time FromPgTimestamp(int64_t pg_micros) {
  return absl::FromUnixMicros(pg_micros + kPgEpochOffsetSeconds * 1000000);
}

inline int64_t ToPgTimestamp(absl::Time t) {
  return absl::ToUnixMicros(t) - kPgEpochOffsetSeconds * 1000000;
}

inline int64_t PgTimestampNow() { return ToPgTimestamp(absl::Now()); }

}  // namespace outboxd

#endif  // OUTBOXD_COMMON_PG_TIME_H_
