// Command-line parsing on top of absl flags, and the start and end that
// every main (outboxd, outbox-inbox, outbox-devbroker) shares: RunMain.
// The exit-code contract of README "Using it with your database": a bad
// flag is one clear line and exit 2 (absl's own ParseCommandLine exits 1),
// --help and --version exit 0, a runtime failure 1; repeatable flags
// accumulate (--kafka-property), --flagfile reads one flag per line. Each
// main defines its own flags and builds its own options from them.
#ifndef OUTBOXD_FLAGS_FLAGS_H_
#define OUTBOXD_FLAGS_FLAGS_H_

#include <initializer_list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace outboxd::flags {

// A flag of any type, for lists of flags of different types; implicit so
// that a list reads {FLAGS_a, FLAGS_b}. Keeps a view of the flag's name,
// which lives as long as the program.
class AnyFlag {
 public:
  template <typename T>
  AnyFlag(const absl::Flag<T>& flag)  // NOLINT(google-explicit-constructor)
      : name_(absl::GetFlagReflectionHandle(flag).Name()) {}
  absl::string_view name() const { return name_; }

 private:
  absl::string_view name_;
};

// "--on-slot-loss" for FLAGS_on_slot_loss.
std::string Dashed(AnyFlag flag);

struct ParsedCommandLine {
  bool help = false;
  bool version = false;
  // Every value of each repeatable flag, in order.
  absl::flat_hash_map<std::string, std::vector<std::string>> repeated;
  // The absl name (topic_prefix) of every flag given on the command line or
  // in a --flagfile, whatever its value (its default too), repeatable and
  // negated (--nofoo) flags included.
  absl::flat_hash_set<std::string> set;
};

// Sets the registered absl flags from argv[1..]. Dashes in flag names are
// read as underscores (--topic-prefix sets topic_prefix). `repeatable` names
// flags whose values accumulate instead of overriding. kInvalidArgument with
// one line for an unknown flag, a missing or malformed value, or a positional
// argument.
// With `flags_file`, a flag defined in a file whose path does not contain
// it is unknown too (absl's own, such as --fromenv, or another library's).
absl::StatusOr<ParsedCommandLine> ParseFlags(
    int argc, char** argv, const std::vector<std::string>& repeatable,
    absl::string_view flags_file = "");

// Help text for the flags defined in files whose path contains
// `file_filter`, sorted by name, with defaults; names are shown dashed.
std::string FlagsHelp(absl::string_view usage, absl::string_view file_filter);

// key=value lines; blank lines and lines starting with # are skipped.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
ParseKeyValueFile(const std::string& path);

// Every value of the repeatable flag `name` (absl spelling, e.g.
// "kafka_property") split as key=value and appended to `out`, in order.
// kInvalidArgument naming the flag (dashed) for a value without '='.
absl::Status AppendKeyValueFlags(
    const ParsedCommandLine& cmd, const std::string& name,
    std::vector<std::pair<std::string, std::string>>* out);

// Splits "key=value"; kInvalidArgument when there is no '=' or no key.
absl::StatusOr<std::pair<std::string, std::string>> SplitKeyValue(
    absl::string_view text);

// --- the start and end of a main
// ----------------------------------------------

// What a main prints about itself and how it starts.
struct Program {
  absl::string_view name;        // "outboxd": the prefix of its error lines
  absl::string_view version;     // OUTBOXD_VERSION, for --version
  absl::string_view usage;       // the first lines of --help
  absl::string_view flags_file;  // its flags: those defined in this file
  // Flags whose values accumulate (ParseFlags), absl spelling.
  std::vector<std::string> repeatable = {};
  // Its --log-level flag, and its --log-format (null: text), read once the
  // command line is parsed.
  const absl::Flag<std::string>* log_level = nullptr;
  const absl::Flag<std::string>* log_format = nullptr;
};

// The first step of every main: ParseFlags (only the flags defined in the
// program's flags_file), then --help / --version are printed to stdout
// ("<name> <version>"), a bad command line is one line "<name>: <why>" on
// stderr. Returns the exit code when the main is done (0 or 2), nullopt
// when it goes on with *cmd.
std::optional<int> ParseOrExit(int argc, char** argv, const Program& program,
                               ParsedCommandLine* cmd);

// Prints "<program>: <status message>" on stderr; returns 2, the bad-flag
// exit code.
int BadFlags(absl::string_view program, const absl::Status& status);

// `status` (not ok) marked with the exit code RunMain gives it instead of 1
// (e.g. 2 for options that only the library found wrong).
absl::Status WithExitCode(absl::Status status, int code);

// 0 for ok, the code of WithExitCode, otherwise 1 (a runtime failure).
int ExitCode(const absl::Status& status);

// A whole main, with the exit codes of README "Using it with your
// database" (0 clean stop, 1 runtime failure, 2 bad flags):
//  1. ParseOrExit (--help, --version, a bad command line: exit 0 or 2);
//  2. logging from the program's log flags (InitLogging; bad: exit 2);
//  3. `check(cmd)` reads the flags into what `run` needs; an error is a bad
//     flag: "<name>: <message>" on stderr, exit 2;
//  4. `run()` works until it stops: ok is logged "stopped cleanly", exit 0;
//     an error is logged "stopping: <status>", exit ExitCode(status).
// The stop signals are `run`'s to install (common/stop_signal.h, or a
// signalfd of its own).
int RunMain(int argc, char** argv, const Program& program,
            absl::FunctionRef<absl::Status(const ParsedCommandLine&)> check,
            absl::FunctionRef<absl::Status()> run);

// --- flags that belong to one mode -------------------------------------------

// Whether `flag` was given on the command line (or in a --flagfile).
bool IsSet(const ParsedCommandLine& cmd, AnyFlag flag);

// kInvalidArgument "--flag applies only to <mode>" naming the first of
// `flags` that was given, whatever its value: a main refuses the flags of
// another mode rather than ignore them (README "Flags").
absl::Status OnlyFor(const ParsedCommandLine& cmd, absl::string_view mode,
                     std::initializer_list<AnyFlag> flags);

// --- checks of one flag's value ----------------------------------------------
// Each returns the value, or kInvalidArgument with one line naming the flag
// (dashed) and what it must be.

// One value an enumerated flag may take.
template <typename T>
struct Choice {
  absl::string_view name;
  T value;
};

// "--flag must be a, b or c, not 'x'".
absl::Status NotAChoice(absl::string_view flag,
                        const std::vector<absl::string_view>& names,
                        absl::string_view value);

// The value of the choice named `value`.
template <typename T>
absl::StatusOr<T> ParseChoice(absl::string_view flag, absl::string_view value,
                              std::initializer_list<Choice<T>> choices) {
  std::vector<absl::string_view> names;
  for (const Choice<T>& c : choices) {
    if (c.name == value) return c.value;
    names.push_back(c.name);
  }
  return NotAChoice(flag, names, value);
}

// The enumerated string flag's value, mapped by `choices`.
template <typename T>
absl::StatusOr<T> ChoiceFlag(const absl::Flag<std::string>& flag,
                             std::initializer_list<Choice<T>> choices) {
  return ParseChoice(Dashed(flag), absl::GetFlag(flag), choices);
}

// The string flag's value when it is one of `names`.
absl::StatusOr<std::string> OneOfFlag(
    const absl::Flag<std::string>& flag,
    std::initializer_list<absl::string_view> names);

// `parse` (returning absl::StatusOr<T>) applied to the string flag's value;
// its error becomes kInvalidArgument "--flag: <its message>".
template <typename Parse>
auto ParsedFlag(const absl::Flag<std::string>& flag, Parse parse)
    -> decltype(parse(std::string())) {
  auto parsed = parse(absl::GetFlag(flag));
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Dashed(flag), ": ", parsed.status().message()));
  }
  return parsed;
}

// "--flag is required" (with " (hint)" when there is one) when empty.
absl::StatusOr<std::string> RequiredFlag(const absl::Flag<std::string>& flag,
                                         absl::string_view hint = "");

// "--flag must not be empty".
absl::StatusOr<std::string> NonEmptyFlag(const absl::Flag<std::string>& flag);

// Duration checks: "--flag must not be negative", "--flag must be positive"
// (and " and at most <max>" when a max is given), "--flag must be between
// <min> and <max>" (both included; durations as absl formats them: 0, 30s,
// 10m).
absl::Status CheckNotNegative(absl::string_view flag, absl::Duration d);
absl::Status CheckPositive(absl::string_view flag, absl::Duration d,
                           absl::Duration max = absl::InfiniteDuration());
absl::Status CheckBetween(absl::string_view flag, absl::Duration d,
                          absl::Duration min, absl::Duration max);
absl::StatusOr<absl::Duration> NotNegativeFlag(
    const absl::Flag<absl::Duration>& flag);
absl::StatusOr<absl::Duration> PositiveFlag(
    const absl::Flag<absl::Duration>& flag,
    absl::Duration max = absl::InfiniteDuration());
absl::StatusOr<absl::Duration> BetweenFlag(
    const absl::Flag<absl::Duration>& flag, absl::Duration min,
    absl::Duration max);

// "--flag must be between <min> and <max>" (both included).
absl::StatusOr<int> IntBetweenFlag(const absl::Flag<int>& flag, int min,
                                   int max);

}  // namespace outboxd::flags

#endif  // OUTBOXD_FLAGS_FLAGS_H_
