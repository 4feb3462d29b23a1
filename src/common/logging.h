// Logging setup: spdlog to stderr.
//
// Call InitLogging once from main before any other thread starts; after
// that the spdlog macros (SPDLOG_INFO, spdlog::info, ...) are thread-safe.
// Never log a secret: pass conninfo strings through RedactConninfo first.
#ifndef OUTBOXD_COMMON_LOGGING_H_
#define OUTBOXD_COMMON_LOGGING_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "spdlog/spdlog.h"

namespace outboxd {

// `level`: trace, debug, info, warn, error, critical, off.
// `format`: text (timestamp level message) or json (one object per line:
// time, level, logger, thread, message; the message JSON-escaped).
// kInvalidArgument, naming the flag, for anything else.
absl::Status InitLogging(absl::string_view level, absl::string_view format);

// Appends `text` as the inside of a JSON string: quotes, backslashes and
// control characters escaped, ill-formed UTF-8 bytes as \ufffd.
void AppendJsonEscaped(absl::string_view text, std::string* out);

// The formatter of --log-format=json, for sinks of one's own (tests).
std::unique_ptr<spdlog::formatter> MakeJsonFormatter();

}  // namespace outboxd

#endif  // OUTBOXD_COMMON_LOGGING_H_
