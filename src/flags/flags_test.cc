// Tests for the flag helpers the mains share: the one-line errors of
// enumerated, required and range-checked flags, and the start of a main
// (--help, --version, a bad flag's exit 2).
#include "flags/flags.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

ABSL_FLAG(std::string, flags_test_mode, "fast", "test flag: an enumeration");
ABSL_FLAG(std::string, flags_test_name, "", "test flag: a string");
ABSL_FLAG(absl::Duration, flags_test_wait, absl::Seconds(1),
          "test flag: a duration");
ABSL_FLAG(int, flags_test_count, 5, "test flag: an integer");
ABSL_FLAG(std::vector<std::string>, flags_test_property, {},
          "test flag: repeatable");
ABSL_FLAG(bool, flags_test_flag, true, "test flag: a bool");
ABSL_FLAG(std::string, flags_test_level, "info", "test flag: a log level");

namespace outboxd::flags {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

enum class Mode { kFast, kSafe, kSlow };

std::string Message(const absl::Status& s) { return std::string(s.message()); }

TEST(FlagsTest, DashedNamesTheFlagAsTyped) {
  EXPECT_EQ(Dashed(FLAGS_flags_test_mode), "--flags-test-mode");
}

TEST(FlagsTest, ParseChoiceMapsNamesAndListsThemOnOneLine) {
  auto fast = ParseChoice<Mode>("--mode", "fast",
                                {{"fast", Mode::kFast}, {"safe", Mode::kSafe}});
  ASSERT_TRUE(fast.ok());
  EXPECT_EQ(*fast, Mode::kFast);
  auto safe = ParseChoice<Mode>("--mode", "safe",
                                {{"fast", Mode::kFast}, {"safe", Mode::kSafe}});
  ASSERT_TRUE(safe.ok());
  EXPECT_EQ(*safe, Mode::kSafe);

  auto two = ParseChoice<Mode>("--mode", "Fast",
                               {{"fast", Mode::kFast}, {"safe", Mode::kSafe}});
  EXPECT_TRUE(absl::IsInvalidArgument(two.status()));
  EXPECT_EQ(Message(two.status()), "--mode must be fast or safe, not 'Fast'");
  auto three = ParseChoice<Mode>(
      "--mode", "",
      {{"fast", Mode::kFast}, {"safe", Mode::kSafe}, {"slow", Mode::kSlow}});
  EXPECT_EQ(Message(three.status()),
            "--mode must be fast, safe or slow, not ''");
}

TEST(FlagsTest, ChoiceFlagAndOneOfFlagReadTheFlagAndNameItDashed) {
  absl::FlagSaver saver;
  absl::SetFlag(&FLAGS_flags_test_mode, "slow");
  auto mode = ChoiceFlag<Mode>(FLAGS_flags_test_mode,
                               {{"fast", Mode::kFast}, {"slow", Mode::kSlow}});
  ASSERT_TRUE(mode.ok());
  EXPECT_EQ(*mode, Mode::kSlow);
  auto one = OneOfFlag(FLAGS_flags_test_mode, {"fast", "slow"});
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(*one, "slow");

  absl::SetFlag(&FLAGS_flags_test_mode, "bogus");
  EXPECT_EQ(
      Message(ChoiceFlag<Mode>(FLAGS_flags_test_mode, {{"fast", Mode::kFast}})
                  .status()),
      "--flags-test-mode must be fast, not 'bogus'");
  EXPECT_EQ(Message(OneOfFlag(FLAGS_flags_test_mode, {"a", "b", "c"}).status()),
            "--flags-test-mode must be a, b or c, not 'bogus'");
}

TEST(FlagsTest, RequiredAndNonEmpty) {
  absl::FlagSaver saver;
  absl::SetFlag(&FLAGS_flags_test_name, "");
  EXPECT_EQ(Message(RequiredFlag(FLAGS_flags_test_name).status()),
            "--flags-test-name is required");
  EXPECT_EQ(Message(RequiredFlag(FLAGS_flags_test_name, "HOST:PORT").status()),
            "--flags-test-name is required (HOST:PORT)");
  EXPECT_EQ(Message(NonEmptyFlag(FLAGS_flags_test_name).status()),
            "--flags-test-name must not be empty");
  absl::SetFlag(&FLAGS_flags_test_name, "x");
  EXPECT_EQ(RequiredFlag(FLAGS_flags_test_name).value_or(""), "x");
  EXPECT_EQ(NonEmptyFlag(FLAGS_flags_test_name).value_or(""), "x");
}

TEST(FlagsTest, DurationChecksIncludeTheirEdges) {
  const absl::Duration ns = absl::Nanoseconds(1);
  EXPECT_TRUE(CheckNotNegative("--d", absl::ZeroDuration()).ok());
  EXPECT_EQ(Message(CheckNotNegative("--d", -ns)), "--d must not be negative");

  EXPECT_TRUE(CheckPositive("--d", ns).ok());
  EXPECT_EQ(Message(CheckPositive("--d", absl::ZeroDuration())),
            "--d must be positive");
  EXPECT_TRUE(CheckPositive("--d", absl::Minutes(10), absl::Minutes(10)).ok());
  EXPECT_EQ(
      Message(CheckPositive("--d", absl::Minutes(10) + ns, absl::Minutes(10))),
      "--d must be positive and at most 10m");
  EXPECT_EQ(
      Message(CheckPositive("--d", absl::ZeroDuration(), absl::Minutes(10))),
      "--d must be positive and at most 10m");

  const absl::Duration max = absl::Seconds(30);
  EXPECT_TRUE(
      CheckBetween("--d", absl::ZeroDuration(), absl::ZeroDuration(), max)
          .ok());
  EXPECT_TRUE(CheckBetween("--d", max, absl::ZeroDuration(), max).ok());
  EXPECT_EQ(Message(CheckBetween("--d", max + ns, absl::ZeroDuration(), max)),
            "--d must be between 0 and 30s");
  EXPECT_EQ(Message(CheckBetween("--d", -ns, absl::ZeroDuration(), max)),
            "--d must be between 0 and 30s");
  EXPECT_EQ(Message(CheckBetween("--d", absl::ZeroDuration(),
                                 absl::Milliseconds(1), absl::Hours(1))),
            "--d must be between 1ms and 1h");
}

TEST(FlagsTest, DurationAndIntFlagsReturnTheValueOrNameTheFlag) {
  absl::FlagSaver saver;
  absl::SetFlag(&FLAGS_flags_test_wait, absl::Seconds(2));
  EXPECT_EQ(PositiveFlag(FLAGS_flags_test_wait).value_or(absl::ZeroDuration()),
            absl::Seconds(2));
  EXPECT_EQ(
      NotNegativeFlag(FLAGS_flags_test_wait).value_or(absl::ZeroDuration()),
      absl::Seconds(2));
  EXPECT_EQ(Message(BetweenFlag(FLAGS_flags_test_wait, absl::ZeroDuration(),
                                absl::Seconds(1))
                        .status()),
            "--flags-test-wait must be between 0 and 1s");
  absl::SetFlag(&FLAGS_flags_test_wait, -absl::Seconds(1));
  EXPECT_EQ(Message(NotNegativeFlag(FLAGS_flags_test_wait).status()),
            "--flags-test-wait must not be negative");

  absl::SetFlag(&FLAGS_flags_test_count, 1);
  EXPECT_EQ(IntBetweenFlag(FLAGS_flags_test_count, 1, 10).value_or(0), 1);
  absl::SetFlag(&FLAGS_flags_test_count, 10);
  EXPECT_EQ(IntBetweenFlag(FLAGS_flags_test_count, 1, 10).value_or(0), 10);
  absl::SetFlag(&FLAGS_flags_test_count, 0);
  EXPECT_EQ(Message(IntBetweenFlag(FLAGS_flags_test_count, 1, 10).status()),
            "--flags-test-count must be between 1 and 10");
}

absl::StatusOr<int> ParseDigit(absl::string_view text) {
  if (text.size() != 1 || text[0] < '0' || text[0] > '9') {
    return absl::OutOfRangeError(absl::StrCat("'", text, "' is not a digit"));
  }
  return text[0] - '0';
}

TEST(FlagsTest, ParsedFlagNamesTheFlagInTheParsersError) {
  absl::FlagSaver saver;
  absl::SetFlag(&FLAGS_flags_test_name, "7");
  EXPECT_EQ(ParsedFlag(FLAGS_flags_test_name, ParseDigit).value_or(-1), 7);
  absl::SetFlag(&FLAGS_flags_test_name, "x");
  absl::StatusOr<int> bad = ParsedFlag(FLAGS_flags_test_name, ParseDigit);
  EXPECT_TRUE(absl::IsInvalidArgument(bad.status()));
  EXPECT_EQ(Message(bad.status()), "--flags-test-name: 'x' is not a digit");
}

// Runs ParseOrExit on `args`; returns its result and what it printed.
struct ParseResult {
  std::optional<int> exit_code;
  std::string out;
  std::string err;
  ParsedCommandLine cmd;
};
ParseResult Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "prog");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  ParseResult r;
  const Program program = {"prog",
                           "1.2.3",
                           "prog: a test\n\nusage: prog",
                           "flags/flags_test.cc",
                           {"flags_test_property"}};
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  r.exit_code =
      ParseOrExit(static_cast<int>(argv.size()), argv.data(), program, &r.cmd);
  r.out = ::testing::internal::GetCapturedStdout();
  r.err = ::testing::internal::GetCapturedStderr();
  return r;
}

TEST(FlagsTest, ParseOrExitGoesOnWithTheFlagsSet) {
  absl::FlagSaver saver;
  ParseResult r = Parse({"--flags-test-mode=safe", "--flags-test-property=a=1",
                         "--flags-test-property", "b=2"});
  EXPECT_FALSE(r.exit_code.has_value()) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(absl::GetFlag(FLAGS_flags_test_mode), "safe");
  EXPECT_THAT(r.cmd.repeated["flags_test_property"],
              ::testing::ElementsAre("a=1", "b=2"));
}

TEST(FlagsTest, ParseFlagsRecordsWhichFlagsWereGivenWhateverTheirValue) {
  absl::FlagSaver saver;
  // --flags-test-count=5 is its default: given is given. A negated bool and
  // a repeatable flag count too; --help and --version are not flags.
  ParseResult r = Parse({"--flags-test-count=5", "--flags_test_name", "x",
                         "--noflags-test-flag", "--flags-test-property=a=1"});
  ASSERT_FALSE(r.exit_code.has_value()) << r.err;
  EXPECT_THAT(r.cmd.set, ::testing::UnorderedElementsAre(
                             "flags_test_count", "flags_test_name",
                             "flags_test_flag", "flags_test_property"));
  EXPECT_TRUE(IsSet(r.cmd, FLAGS_flags_test_count));
  EXPECT_TRUE(IsSet(r.cmd, FLAGS_flags_test_flag));
  EXPECT_FALSE(IsSet(r.cmd, FLAGS_flags_test_mode));
  EXPECT_FALSE(IsSet(r.cmd, FLAGS_flags_test_wait));
  EXPECT_TRUE(Parse({}).cmd.set.empty());
}

TEST(FlagsTest, ParseFlagsRecordsTheFlagsOfAFlagfile) {
  absl::FlagSaver saver;
  const std::string path = ::testing::TempDir() + "/flags_test_flagfile";
  {
    std::ofstream out(path);
    out << "# a comment\n--flags-test-wait=2s\n";
  }
  ParseResult r = Parse({"--flagfile=" + path});
  ASSERT_FALSE(r.exit_code.has_value()) << r.err;
  EXPECT_THAT(r.cmd.set, ::testing::ElementsAre("flags_test_wait"));
  std::remove(path.c_str());
}

TEST(FlagsTest, OnlyForNamesTheFirstListedFlagThatWasGiven) {
  absl::FlagSaver saver;
  ParseResult r = Parse({"--flags-test-wait=1s", "--flags-test-name="});
  ASSERT_FALSE(r.exit_code.has_value()) << r.err;
  // Flags of different types in one list; the list's order decides.
  absl::Status s = OnlyFor(
      r.cmd, "--mode=slow",
      {FLAGS_flags_test_count, FLAGS_flags_test_name, FLAGS_flags_test_wait});
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_EQ(Message(s), "--flags-test-name applies only to --mode=slow");
  EXPECT_TRUE(
      OnlyFor(r.cmd, "x", {FLAGS_flags_test_count, FLAGS_flags_test_mode})
          .ok());
  EXPECT_TRUE(OnlyFor(r.cmd, "x", {}).ok());
}

TEST(FlagsTest, ParseOrExitPrintsVersionAndHelpAndExitsZero) {
  ParseResult version = Parse({"--version"});
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_EQ(version.out, "prog 1.2.3\n");
  ParseResult help = Parse({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, HasSubstr("usage: prog"));
  EXPECT_THAT(help.out, HasSubstr("--flags-test-mode"));
}

TEST(FlagsTest, ParseOrExitGivesTwoAndOneLineForABadFlag) {
  absl::FlagSaver saver;
  for (const std::string& bad :
       {std::string("--no-such-flag=1"), std::string("--flags-test-count=x"),
        std::string("positional")}) {
    ParseResult r = Parse({bad});
    EXPECT_EQ(r.exit_code, 2) << bad;
    EXPECT_EQ(r.out, "");
    EXPECT_THAT(r.err, ::testing::StartsWith("prog: ")) << bad;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
}

TEST(FlagsTest, ParseFlagsKnowsOnlyTheFlagsOfTheGivenFile) {
  // A flag registered in the binary but defined in another file (absl's
  // own --fromenv, another main's) is unknown to this one.
  absl::FlagSaver saver;
  std::vector<std::string> args = {"prog", "--flags-test-count=7"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  auto other = ParseFlags(2, argv.data(), {}, "no/such/main.cc");
  EXPECT_TRUE(absl::IsInvalidArgument(other.status()));
  EXPECT_THAT(Message(other.status()), HasSubstr("unknown flag"));
  EXPECT_EQ(absl::GetFlag(FLAGS_flags_test_count), 5);
  auto own = ParseFlags(2, argv.data(), {}, "flags/flags_test.cc");
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_EQ(absl::GetFlag(FLAGS_flags_test_count), 7);
}

TEST(FlagsTest, ExitCodeIsZeroOneOrTheCodeAStatusCarries) {
  EXPECT_EQ(ExitCode(absl::OkStatus()), 0);
  EXPECT_EQ(ExitCode(absl::UnavailableError("lost")), 1);
  EXPECT_EQ(ExitCode(absl::InvalidArgumentError("bad")), 1);
  absl::Status marked = WithExitCode(absl::InvalidArgumentError("bad"), 2);
  EXPECT_EQ(ExitCode(marked), 2);
  EXPECT_EQ(marked.message(), "bad");
  EXPECT_EQ(marked.code(), absl::StatusCode::kInvalidArgument);
}

// Runs RunMain on `args` with `check` and `run`; what it printed, and
// whether check and run were called.
struct MainResult {
  int exit_code = -1;
  std::string out;
  std::string err;
  bool checked = false;
  bool ran = false;
};
MainResult Main(std::vector<std::string> args, absl::Status check_result,
                absl::Status run_result) {
  args.insert(args.begin(), "prog");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  const Program program = {"prog",
                           "1.2.3",
                           "usage: prog",
                           "flags/flags_test.cc",
                           {},
                           &FLAGS_flags_test_level};
  MainResult r;
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  r.exit_code = RunMain(
      static_cast<int>(argv.size()), argv.data(), program,
      [&](const ParsedCommandLine& cmd) {
        r.checked = true;
        EXPECT_TRUE(IsSet(cmd, FLAGS_flags_test_level));
        return check_result;
      },
      [&] {
        r.ran = true;
        return run_result;
      });
  r.out = ::testing::internal::GetCapturedStdout();
  r.err = ::testing::internal::GetCapturedStderr();
  return r;
}

TEST(FlagsTest, RunMainChecksThenRunsAndMapsTheEndToTheExitCode) {
  absl::FlagSaver saver;
  MainResult clean =
      Main({"--flags-test-level=info"}, absl::OkStatus(), absl::OkStatus());
  EXPECT_EQ(clean.exit_code, 0);
  EXPECT_TRUE(clean.checked && clean.ran);
  EXPECT_THAT(clean.err, HasSubstr("stopped cleanly"));

  MainResult failed = Main({"--flags-test-level=info"}, absl::OkStatus(),
                           absl::UnavailableError("connection lost"));
  EXPECT_EQ(failed.exit_code, 1);
  EXPECT_THAT(failed.err, HasSubstr("stopping: UNAVAILABLE: connection lost"));

  MainResult marked =
      Main({"--flags-test-level=info"}, absl::OkStatus(),
           WithExitCode(absl::InvalidArgumentError("no such table"), 2));
  EXPECT_EQ(marked.exit_code, 2);
  EXPECT_THAT(marked.err,
              HasSubstr("stopping: INVALID_ARGUMENT: no such table"));
  EXPECT_THAT(marked.err, Not(HasSubstr("flags.ExitCode")));
}

TEST(FlagsTest, RunMainGivesTwoAndOneLineForABadFlagAndDoesNotRun) {
  absl::FlagSaver saver;
  MainResult bad_check =
      Main({"--flags-test-level=info"},
           absl::InvalidArgumentError("--x is wrong"), absl::OkStatus());
  EXPECT_EQ(bad_check.exit_code, 2);
  EXPECT_EQ(bad_check.err, "prog: --x is wrong\n");
  EXPECT_FALSE(bad_check.ran);

  MainResult bad_level =
      Main({"--flags-test-level=loud"}, absl::OkStatus(), absl::OkStatus());
  EXPECT_EQ(bad_level.exit_code, 2);
  EXPECT_THAT(bad_level.err, ::testing::StartsWith("prog: "));
  EXPECT_EQ(std::count(bad_level.err.begin(), bad_level.err.end(), '\n'), 1)
      << bad_level.err;
  EXPECT_FALSE(bad_level.checked || bad_level.ran);

  MainResult help = Main({"--help"}, absl::OkStatus(), absl::OkStatus());
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, HasSubstr("usage: prog"));
  EXPECT_FALSE(help.checked || help.ran);
}

TEST(FlagsTest, BadFlagsPrintsOneLineAndReturnsTwo) {
  ::testing::internal::CaptureStderr();
  int code = BadFlags("prog", absl::InvalidArgumentError("--x is wrong"));
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "prog: --x is wrong\n");
  EXPECT_EQ(code, 2);
}

}  // namespace
}  // namespace outboxd::flags
