#include "common/logging.h"

#include <chrono>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "spdlog/formatter.h"
#include "spdlog/sinks/stdout_sinks.h"

namespace outboxd {
namespace {

// One JSON object per line:
//   {"time":"2024-05-01T12:00:00.123Z","level":"info","logger":"outboxd",
//    "thread":1234,"message":"..."}
// spdlog's pattern language cannot escape a message, so this formatter
// writes the line itself.
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg,
              spdlog::memory_buf_t& dest) override {
    int64_t micros = std::chrono::duration_cast<std::chrono::microseconds>(
                         msg.time.time_since_epoch())
                         .count();
    std::string line = absl::StrCat(
        "{\"time\":\"",
        absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::FromUnixMicros(micros),
                         absl::UTCTimeZone()),
        "\",\"level\":\"");
    auto level = spdlog::level::to_string_view(msg.level);
    line.append(level.data(), level.size());
    line += "\",\"logger\":\"";
    AppendJsonEscaped(
        absl::string_view(msg.logger_name.data(), msg.logger_name.size()),
        &line);
    absl::StrAppend(&line, "\",\"thread\":", msg.thread_id, ",\"message\":\"");
    AppendJsonEscaped(absl::string_view(msg.payload.data(), msg.payload.size()),
                      &line);
    line += "\"}\n";
    dest.append(line.data(), line.data() + line.size());
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

}  // namespace

void AppendJsonEscaped(absl::string_view text, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (size_t i = 0; i < text.size(); ++i) {
    unsigned char c = text[i];
    switch (c) {
      case '"':
        *out += "\\\"";
        continue;
      case '\\':
        *out += "\\\\";
        continue;
      case '\n':
        *out += "\\n";
        continue;
      case '\r':
        *out += "\\r";
        continue;
      case '\t':
        *out += "\\t";
        continue;
      default:
        break;
    }
    if (c < 0x20 || c == 0x7f) {
      *out += "\\u00";
      *out += kHex[c >> 4];
      *out += kHex[c & 0xf];
      continue;
    }
    if (c < 0x80) {
      *out += static_cast<char>(c);
      continue;
    }
    // Multi-byte UTF-8 passes through when well formed; a stray byte
    // becomes U+FFFD so that the line stays valid JSON.
    int extra = (c & 0xE0) == 0xC0   ? 1
                : (c & 0xF0) == 0xE0 ? 2
                : (c & 0xF8) == 0xF0 ? 3
                                     : -1;
    bool ok = extra > 0 && i + extra < text.size();
    for (int k = 1; ok && k <= extra; ++k) {
      ok = (static_cast<unsigned char>(text[i + k]) & 0xC0) == 0x80;
    }
    if (!ok) {
      *out += "\\ufffd";
      continue;
    }
    out->append(text.data() + i, extra + 1);
    i += extra;
  }
}

std::unique_ptr<spdlog::formatter> MakeJsonFormatter() {
  return std::make_unique<JsonFormatter>();
}

absl::Status InitLogging(absl::string_view level, absl::string_view format) {
  spdlog::level::level_enum lvl = spdlog::level::from_str(std::string(level));
  if (lvl == spdlog::level::off && level != "off") {
    return absl::InvalidArgumentError(
        absl::StrCat("--log-level: unknown log level '", level,
                     "' (trace, debug, info, warn, error, critical, off)"));
  }
  auto logger = std::make_shared<spdlog::logger>(
      "outboxd", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  if (format == "text") {
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ %v");
  } else if (format == "json") {
    logger->set_formatter(std::make_unique<JsonFormatter>());
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--log-format: unknown log format '", format, "' (text, json)"));
  }
  logger->set_level(lvl);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(std::move(logger));
  return absl::OkStatus();
}

}  // namespace outboxd
