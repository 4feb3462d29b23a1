#include "flags/flags.h"

#include <algorithm>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace outboxd::flags {
namespace {

// The payload of WithExitCode: the exit code in decimal.
constexpr char kExitCodePayload[] = "type.outboxd/flags.ExitCode";

absl::Status ApplyFlag(absl::string_view name, std::optional<std::string> value,
                       const std::vector<std::string>& repeatable,
                       absl::string_view flags_file, ParsedCommandLine* out,
                       std::vector<std::string>* rest, size_t* next) {
  absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  bool negated = false;
  if (flag == nullptr && absl::StartsWith(name, "no")) {
    flag = absl::FindCommandLineFlag(name.substr(2));
    negated = flag != nullptr && flag->IsOfType<bool>();
    if (!negated) flag = nullptr;
  }
  if (flag != nullptr && !flags_file.empty() &&
      !absl::StrContains(flag->Filename(), flags_file)) {
    flag = nullptr;  // absl's own (--fromenv) or another library's
  }
  if (flag == nullptr || flag->IsRetired()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown flag --", name, " (see --help)"));
  }
  if (negated) {
    if (value.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " takes no value"));
    }
    value = "false";
  } else if (!value.has_value()) {
    if (flag->IsOfType<bool>()) {
      value = "true";
    } else if (*next < rest->size() &&
               !absl::StartsWith((*rest)[*next], "--")) {
      value = (*rest)[(*next)++];
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " needs a value"));
    }
  }
  std::string flag_name(flag->Name());
  out->set.insert(flag_name);
  if (std::find(repeatable.begin(), repeatable.end(), flag_name) !=
      repeatable.end()) {
    out->repeated[flag_name].push_back(*value);
    return absl::OkStatus();
  }
  std::string error;
  if (!flag->ParseFrom(*value, &error)) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad value for --", flag_name, ": ", error));
  }
  return absl::OkStatus();
}

absl::Status ReadFlagFile(const std::string& path,
                          std::vector<std::string>* args) {
  std::ifstream in(path);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read --flagfile ", path));
  }
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view l = absl::StripAsciiWhitespace(line);
    if (l.empty() || l[0] == '#') continue;
    args->emplace_back(l);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ParsedCommandLine> ParseFlags(
    int argc, char** argv, const std::vector<std::string>& repeatable,
    absl::string_view flags_file) {
  ParsedCommandLine out;
  std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i < args.size();) {
    std::string arg = args[i++];
    if (!absl::StartsWith(arg, "-") || arg == "-" || arg == "--") {
      return absl::InvalidArgumentError(absl::StrCat(
          "unexpected argument '", arg, "' (flags only; see --help)"));
    }
    absl::string_view body = arg;
    body.remove_prefix(absl::StartsWith(body, "--") ? 2 : 1);
    std::optional<std::string> value;
    absl::string_view name = body;
    if (size_t eq = body.find('='); eq != absl::string_view::npos) {
      name = body.substr(0, eq);
      value = std::string(body.substr(eq + 1));
    }
    if (name == "help" || name == "h" || name == "helpfull") {
      out.help = true;
      continue;
    }
    if (name == "version") {
      out.version = true;
      continue;
    }
    if (name == "flagfile") {
      if (!value.has_value()) {
        if (i >= args.size()) {
          return absl::InvalidArgumentError("--flagfile needs a value");
        }
        value = args[i++];
      }
      std::vector<std::string> from_file;
      RETURN_IF_ERROR(ReadFlagFile(*value, &from_file));
      args.insert(args.begin() + i, from_file.begin(), from_file.end());
      continue;
    }
    // Users type --topic-prefix; absl names it topic_prefix. Lines of a
    // --flagfile arrive here unnormalised, so normalise every name.
    std::string absl_name(name);
    std::replace(absl_name.begin(), absl_name.end(), '-', '_');
    RETURN_IF_ERROR(ApplyFlag(absl_name, std::move(value), repeatable,
                              flags_file, &out, &args, &i));
  }
  return out;
}

std::string FlagsHelp(absl::string_view usage, absl::string_view file_filter) {
  std::vector<absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (absl::StrContains(flag->Filename(), file_filter)) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(),
            [](auto* a, auto* b) { return a->Name() < b->Name(); });
  std::ostringstream os;
  os << usage << "\n\nFlags:\n";
  for (const auto* flag : flags) {
    // Shown as users type them: --topic-prefix, not --topic_prefix.
    std::string name(flag->Name());
    std::replace(name.begin(), name.end(), '_', '-');
    os << "  --" << name << "\n      " << flag->Help();
    std::string def = flag->DefaultValue();
    if (!def.empty()) os << " (default: " << def << ")";
    os << "\n";
  }
  os << "  --flagfile=FILE\n      read flags from FILE, one per line\n"
     << "  --help\n      show this help and exit\n"
     << "  --version\n      print the version and exit\n";
  return os.str();
}

absl::StatusOr<std::pair<std::string, std::string>> SplitKeyValue(
    absl::string_view text) {
  size_t eq = text.find('=');
  if (eq == absl::string_view::npos || eq == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected key=value, got '", text, "'"));
  }
  return std::make_pair(
      std::string(absl::StripAsciiWhitespace(text.substr(0, eq))),
      std::string(absl::StripAsciiWhitespace(text.substr(eq + 1))));
}

absl::Status AppendKeyValueFlags(
    const ParsedCommandLine& cmd, const std::string& name,
    std::vector<std::pair<std::string, std::string>>* out) {
  auto it = cmd.repeated.find(name);
  if (it == cmd.repeated.end()) return absl::OkStatus();
  std::string dashed = name;
  std::replace(dashed.begin(), dashed.end(), '_', '-');
  for (const std::string& value : it->second) {
    auto kv = SplitKeyValue(value);
    if (!kv.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", dashed, ": ", kv.status().message()));
    }
    out->push_back(*std::move(kv));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
ParseKeyValueFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read ", path));
  }
  std::vector<std::pair<std::string, std::string>> out;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    absl::string_view l = absl::StripAsciiWhitespace(line);
    if (l.empty() || l[0] == '#') continue;
    auto kv = SplitKeyValue(l);
    if (!kv.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", number, ": ", kv.status().message()));
    }
    out.push_back(*std::move(kv));
  }
  return out;
}

std::optional<int> ParseOrExit(int argc, char** argv, const Program& program,
                               ParsedCommandLine* cmd) {
  auto parsed = ParseFlags(argc, argv, program.repeatable, program.flags_file);
  if (!parsed.ok()) return BadFlags(program.name, parsed.status());
  if (parsed->help) {
    std::cout << FlagsHelp(program.usage, program.flags_file);
    return 0;
  }
  if (parsed->version) {
    std::cout << program.name << " " << program.version << "\n";
    return 0;
  }
  *cmd = *std::move(parsed);
  return std::nullopt;
}

int BadFlags(absl::string_view program, const absl::Status& status) {
  std::cerr << program << ": " << status.message() << "\n";
  return 2;
}

absl::Status WithExitCode(absl::Status status, int code) {
  status.SetPayload(kExitCodePayload, absl::Cord(absl::StrCat(code)));
  return status;
}

int ExitCode(const absl::Status& status) {
  if (status.ok()) return 0;
  int code = 1;
  if (auto payload = status.GetPayload(kExitCodePayload);
      payload.has_value() && absl::SimpleAtoi(std::string(*payload), &code)) {
    return code;
  }
  return 1;
}

int RunMain(int argc, char** argv, const Program& program,
            absl::FunctionRef<absl::Status(const ParsedCommandLine&)> check,
            absl::FunctionRef<absl::Status()> run) {
  ParsedCommandLine cmd;
  if (std::optional<int> done = ParseOrExit(argc, argv, program, &cmd)) {
    return *done;
  }
  absl::Status s = InitLogging(
      program.log_level != nullptr ? absl::GetFlag(*program.log_level) : "info",
      program.log_format != nullptr ? absl::GetFlag(*program.log_format)
                                    : "text");
  if (s.ok()) s = check(cmd);
  if (!s.ok()) return BadFlags(program.name, s);
  s = run();
  if (!s.ok()) {
    spdlog::critical("stopping: {}",
                     s.ToString(absl::StatusToStringMode::kWithNoExtraData));
    return ExitCode(s);
  }
  spdlog::info("stopped cleanly");
  return 0;
}

std::string Dashed(AnyFlag flag) {
  std::string name(flag.name());
  std::replace(name.begin(), name.end(), '_', '-');
  return "--" + name;
}

bool IsSet(const ParsedCommandLine& cmd, AnyFlag flag) {
  return cmd.set.contains(flag.name());
}

absl::Status OnlyFor(const ParsedCommandLine& cmd, absl::string_view mode,
                     std::initializer_list<AnyFlag> flags) {
  for (AnyFlag flag : flags) {
    if (!IsSet(cmd, flag)) continue;
    return absl::InvalidArgumentError(
        absl::StrCat(Dashed(flag), " applies only to ", mode));
  }
  return absl::OkStatus();
}

absl::Status NotAChoice(absl::string_view flag,
                        const std::vector<absl::string_view>& names,
                        absl::string_view value) {
  std::string list;
  if (names.size() <= 1) {
    list = absl::StrJoin(names, "");
  } else {
    list = absl::StrCat(absl::StrJoin(names.begin(), names.end() - 1, ", "),
                        " or ", names.back());
  }
  return absl::InvalidArgumentError(
      absl::StrCat(flag, " must be ", list, ", not '", value, "'"));
}

absl::StatusOr<std::string> OneOfFlag(
    const absl::Flag<std::string>& flag,
    std::initializer_list<absl::string_view> names) {
  std::string value = absl::GetFlag(flag);
  for (absl::string_view name : names) {
    if (name == value) return value;
  }
  return NotAChoice(Dashed(flag), names, value);
}

absl::StatusOr<std::string> RequiredFlag(const absl::Flag<std::string>& flag,
                                         absl::string_view hint) {
  std::string value = absl::GetFlag(flag);
  if (value.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Dashed(flag), " is required",
                     hint.empty() ? "" : absl::StrCat(" (", hint, ")")));
  }
  return value;
}

absl::StatusOr<std::string> NonEmptyFlag(const absl::Flag<std::string>& flag) {
  std::string value = absl::GetFlag(flag);
  if (value.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Dashed(flag), " must not be empty"));
  }
  return value;
}

absl::Status CheckNotNegative(absl::string_view flag, absl::Duration d) {
  if (d < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " must not be negative"));
  }
  return absl::OkStatus();
}

absl::Status CheckPositive(absl::string_view flag, absl::Duration d,
                           absl::Duration max) {
  if (max == absl::InfiniteDuration()) {
    if (d <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, " must be positive"));
    }
  } else if (d <= absl::ZeroDuration() || d > max) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, " must be positive and at most ", absl::FormatDuration(max)));
  }
  return absl::OkStatus();
}

absl::Status CheckBetween(absl::string_view flag, absl::Duration d,
                          absl::Duration min, absl::Duration max) {
  if (d < min || d > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " must be between ", absl::FormatDuration(min),
                     " and ", absl::FormatDuration(max)));
  }
  return absl::OkStatus();
}

absl::StatusOr<absl::Duration> NotNegativeFlag(
    const absl::Flag<absl::Duration>& flag) {
  absl::Duration d = absl::GetFlag(flag);
  RETURN_IF_ERROR(CheckNotNegative(Dashed(flag), d));
  return d;
}

absl::StatusOr<absl::Duration> PositiveFlag(
    const absl::Flag<absl::Duration>& flag, absl::Duration max) {
  absl::Duration d = absl::GetFlag(flag);
  RETURN_IF_ERROR(CheckPositive(Dashed(flag), d, max));
  return d;
}

absl::StatusOr<absl::Duration> BetweenFlag(
    const absl::Flag<absl::Duration>& flag, absl::Duration min,
    absl::Duration max) {
  absl::Duration d = absl::GetFlag(flag);
  RETURN_IF_ERROR(CheckBetween(Dashed(flag), d, min, max));
  return d;
}

absl::StatusOr<int> IntBetweenFlag(const absl::Flag<int>& flag, int min,
                                   int max) {
  int value = absl::GetFlag(flag);
  if (value < min || value > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(Dashed(flag), " must be between ", min, " and ", max));
  }
  return value;
}

}  // namespace outboxd::flags
