// Command-line parsing on top of absl flags, shared by every main (outboxd,
// outbox-inbox), with the exit-code contract of README "Using it with your
// database": a bad flag is one clear line and exit 2 (absl's own
// ParseCommandLine exits 1), --help and --version exit 0, repeatable flags
// accumulate (--kafka-property), --flagfile reads one flag per line. Each
// main defines its own flags and builds its own options from them.
#ifndef OUTBOXD_FLAGS_FLAGS_H_
#define OUTBOXD_FLAGS_FLAGS_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace outboxd::flags {

struct ParsedCommandLine {
  bool help = false;
  bool version = false;
  // Every value of each repeatable flag, in order.
  absl::flat_hash_map<std::string, std::vector<std::string>> repeated;
};

// Sets the registered absl flags from argv[1..]. Dashes in flag names are
// read as underscores (--topic-prefix sets topic_prefix). `repeatable` names
// flags whose values accumulate instead of overriding. kInvalidArgument with
// one line for an unknown flag, a missing or malformed value, or a positional
// argument.
absl::StatusOr<ParsedCommandLine> ParseFlags(
    int argc, char** argv, const std::vector<std::string>& repeatable);

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

}  // namespace outboxd::flags

#endif  // OUTBOXD_FLAGS_FLAGS_H_
