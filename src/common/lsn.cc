#include "common/lsn.h"

#include <cstdio>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace outboxd {

std::string Lsn::ToString() const {
  return absl::StrFormat("%X/%X", static_cast<uint32_t>(value_ >> 32),
                         static_cast<uint32_t>(value_));
}

absl::StatusOr<Lsn> Lsn::Parse(absl::string_view text) {
  size_t slash = text.find('/');
  if (slash == absl::string_view::npos || slash == 0 ||
      slash + 1 == text.size() || slash > 8 || text.size() - slash - 1 > 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("not an LSN (expected X/Y in hex): '", text, "'"));
  }
  uint32_t hi = 0;
  uint32_t lo = 0;
  if (!absl::SimpleHexAtoi(text.substr(0, slash), &hi) ||
      !absl::SimpleHexAtoi(text.substr(slash + 1), &lo) ||
      text.find_first_of("+- x") != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("not an LSN (expected X/Y in hex): '", text, "'"));
  }
  return Lsn((static_cast<uint64_t>(hi) << 32) | lo);
}

std::ostream& operator<<(std::ostream& os, Lsn lsn) {
  return os << lsn.ToString();
}

}  // namespace outboxd
