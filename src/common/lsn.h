// Lsn: a PostgreSQL write-ahead-log position as a strong 64-bit type.
//
// Owns nothing; a value type, safe to copy and share between threads.
// LSNs are never passed around as strings: ToString() is for humans and
// Parse() for flags and SQL results ("16/B374D848").
#ifndef OUTBOXD_COMMON_LSN_H_
#define OUTBOXD_COMMON_LSN_H_

#include <compare>
#include <cstdint>
#include <ostream>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace outboxd {

class Lsn {
 public:
  constexpr Lsn() = default;
  constexpr explicit Lsn(uint64_t value) : value_(value) {}

  constexpr uint64_t value() const { return value_; }
  // PostgreSQL's InvalidXLogRecPtr is 0.
  constexpr bool valid() const { return value_ != 0; }

  friend constexpr auto operator<=>(Lsn, Lsn) = default;

  // "X/Y" with upper and lower 32 bits in hex, as PostgreSQL prints it.
  std::string ToString() const;
  static absl::StatusOr<Lsn> Parse(absl::string_view text);

  static constexpr Lsn Max(Lsn a, Lsn b) { return a < b ? b : a; }

 private:
  uint64_t value_ = 0;
};

std::ostream& operator<<(std::ostream& os, Lsn lsn);

}  // namespace outboxd

#endif  // OUTBOXD_COMMON_LSN_H_
