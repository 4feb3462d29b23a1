#include "common/logging.h"

#include <sstream>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "spdlog/sinks/ostream_sink.h"

namespace outboxd {
namespace {

std::string Escaped(absl::string_view s) {
  std::string out;
  AppendJsonEscaped(s, &out);
  return out;
}

TEST(LoggingTest, JsonEscaping) {
  EXPECT_EQ(Escaped("plain"), "plain");
  EXPECT_EQ(Escaped("a\"b\\c\nd\re\tf"), "a\\\"b\\\\c\\nd\\re\\tf");
  EXPECT_EQ(Escaped(std::string("\x01\x1f\x7f", 3)), "\\u0001\\u001f\\u007f");
  EXPECT_EQ(Escaped("Zoë 東京 🚀"), "Zoë 東京 🚀");
  EXPECT_EQ(Escaped("\xff"), "\\ufffd");
  EXPECT_EQ(Escaped("\xe6\x9d"), "\\ufffd\\ufffd");  // truncated sequence
}

TEST(LoggingTest, JsonLinesParseAndKeepTheMessage) {
  std::ostringstream os;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(os);
  sink->set_formatter(MakeJsonFormatter());
  spdlog::logger logger("outboxd", sink);
  std::string nasty = "quote \" backslash \\ newline \n tab \t ctl \x02 é";
  logger.warn("event {}: {}", 7, nasty);
  logger.info("second");
  std::istringstream lines(os.str());
  std::string line;
  ASSERT_TRUE(std::getline(lines, line));
  auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["level"], "warning");
  EXPECT_EQ(j["logger"], "outboxd");
  EXPECT_EQ(j["message"], "event 7: " + nasty);
  EXPECT_TRUE(j["time"].get<std::string>().ends_with("Z"));
  EXPECT_TRUE(j["thread"].is_number());
  ASSERT_TRUE(std::getline(lines, line));
  EXPECT_EQ(nlohmann::json::parse(line)["message"], "second");
  EXPECT_FALSE(std::getline(lines, line));
}

TEST(LoggingTest, InitLoggingRejectsUnknownLevelAndFormat) {
  EXPECT_TRUE(InitLogging("info", "text").ok());
  EXPECT_TRUE(InitLogging("debug", "json").ok());
  absl::Status s = InitLogging("loud", "text");
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_NE(s.message().find("--log-level"), std::string::npos);
  s = InitLogging("info", "xml");
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_NE(s.message().find("--log-format"), std::string::npos);
  EXPECT_TRUE(InitLogging("info", "text").ok());
}

}  // namespace
}  // namespace outboxd
