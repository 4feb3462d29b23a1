// Logging setup: spdlog to stderr.
//
// Call InitLogging once from main before any other thread starts; after
// that the spdlog macros (SPDLOG_INFO, spdlog::info, ...) are thread-safe.
// Never log a secret: pass conninfo strings through RedactConninfo first.
#ifndef OUTBOXD_COMMON_LOGGING_H_
#define OUTBOXD_COMMON_LOGGING_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "spdlog/spdlog.h"

namespace outboxd {

// `level`: trace, debug, info, warn, error, critical, off.
// `format`: text. kInvalidArgument for anything else.
absl::Status InitLogging(absl::string_view level, absl::string_view format);

}  // namespace outboxd

#endif  // OUTBOXD_COMMON_LOGGING_H_
