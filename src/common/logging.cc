#include "common/logging.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "spdlog/sinks/stdout_sinks.h"

namespace outboxd {

absl::Status InitLogging(absl::string_view level, absl::string_view format) {
  spdlog::level::level_enum lvl =
      spdlog::level::from_str(std::string(level));
  if (lvl == spdlog::level::off && level != "off") {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown log level '", level,
        "' (trace, debug, info, warn, error, critical, off)"));
  }
  auto logger = std::make_shared<spdlog::logger>(
      "outboxd", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  if (format == "text") {
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ %v");
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown log format '", format, "' (text)"));
  }
  logger->set_level(lvl);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(std::move(logger));
  return absl::OkStatus();
}

}  // namespace outboxd
