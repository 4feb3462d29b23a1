// The command line as users meet it: --version, --flagfile, --help kept in
// sync with the README's flag table, and the docker/ files checked as far
// as they can be without a Docker engine.
#include <unistd.h>

#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "tests/harness/child_process.h"

namespace outboxd::testing {
namespace {

CommandResult RunOutboxd(std::vector<std::string> argv) {
  argv.insert(argv.begin(), OUTBOXD_BINARY);
  auto r = RunCommand(argv, absl::Seconds(20));
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : CommandResult{-1, ""};
}

// Flags in `outboxd --help`: lines "  --name".
std::set<std::string> HelpFlags() {
  CommandResult r = RunOutboxd({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  std::set<std::string> flags;
  static const std::regex kFlag("^  --([a-z0-9-]+)");
  for (absl::string_view line : absl::StrSplit(r.output, '\n')) {
    std::smatch m;
    std::string l(line);
    if (std::regex_search(l, m, kFlag)) flags.insert(m[1]);
  }
  return flags;
}

// Flags in README.md's table under "## Flags": every `--name` in the first
// cell of each row.
std::set<std::string> ReadmeFlags() {
  std::string readme = ReadFile(OUTBOXD_SOURCE_DIR "/README.md");
  size_t start = readme.find("\n## Flags");
  EXPECT_NE(start, std::string::npos) << "README has no ## Flags section";
  size_t end = readme.find("\n## ", start + 1);
  std::string section = readme.substr(start, end - start);
  std::set<std::string> flags;
  static const std::regex kFlag("`--([a-z0-9-]+)");
  for (absl::string_view line : absl::StrSplit(section, '\n')) {
    if (!absl::StartsWith(line, "| `--")) continue;
    std::string cell(line.substr(1, line.find('|', 1) - 1));
    for (std::sregex_iterator it(cell.begin(), cell.end(), kFlag), e; it != e;
         ++it) {
      flags.insert((*it)[1]);
    }
  }
  return flags;
}

TEST(CliTest, ReadmeFlagTableListsExactlyTheFlagsOfHelp) {
  std::set<std::string> help = HelpFlags();
  std::set<std::string> readme = ReadmeFlags();
  ASSERT_GT(help.size(), 20u);
  std::vector<std::string> missing, stale;
  for (const auto& f : help) {
    if (!readme.count(f)) missing.push_back("--" + f);
  }
  for (const auto& f : readme) {
    if (!help.count(f)) stale.push_back("--" + f);
  }
  EXPECT_TRUE(missing.empty())
      << "flags in --help but not in README.md's flag table: "
      << absl::StrJoin(missing, " ");
  EXPECT_TRUE(stale.empty())
      << "flags in README.md's flag table but not in --help: "
      << absl::StrJoin(stale, " ");
}

// The mode column of README.md's flag table: flag (dashed, without "--")
// -> "all", "cdc", "poll, notify" or "notify".
std::map<std::string, std::string> ReadmeFlagModes() {
  std::string readme = ReadFile(OUTBOXD_SOURCE_DIR "/README.md");
  size_t start = readme.find("\n## Flags");
  size_t end = readme.find("\n## ", start + 1);
  std::map<std::string, std::string> modes;
  static const std::regex kFlag("`--([a-z0-9-]+)");
  for (absl::string_view line :
       absl::StrSplit(readme.substr(start, end - start), '\n')) {
    if (!absl::StartsWith(line, "| `--")) continue;
    std::vector<std::string> cells = absl::StrSplit(line, '|');
    if (cells.size() < 4) continue;
    std::string mode(absl::StripAsciiWhitespace(cells[2]));
    for (std::sregex_iterator it(cells[1].begin(), cells[1].end(), kFlag), e;
         it != e; ++it) {
      modes[(*it)[1].str()] = mode;
    }
  }
  return modes;
}

// Each flag's default in `outboxd --help` ("" when it shows none): a line
// "  --name", then one line of help ending in "(default: X)".
std::map<std::string, std::string> HelpDefaults() {
  CommandResult r = RunOutboxd({"--help"});
  std::vector<std::string> lines = absl::StrSplit(r.output, '\n');
  std::map<std::string, std::string> defaults;
  static const std::regex kName("^  --([a-z0-9-]+)$");
  static const std::regex kDefault("\\(default: (.*)\\)$");
  for (size_t i = 0; i + 1 < lines.size(); ++i) {
    std::smatch name, def;
    if (!std::regex_match(lines[i], name, kName)) continue;
    defaults[name[1].str()] =
        std::regex_search(lines[i + 1], def, kDefault) ? def[1].str() : "";
  }
  return defaults;
}

// Every flag that the README gives to some modes only is refused by the
// others, with one line, even at its default value: the mode column is
// what outboxd does.
TEST(CliTest, AFlagOfAnotherModeExitsTwoWithOneLineEvenAtItsDefault) {
  std::map<std::string, std::string> modes = ReadmeFlagModes();
  std::map<std::string, std::string> defaults = HelpDefaults();
  ASSERT_EQ(modes["slot"], "cdc");
  ASSERT_EQ(modes["poll-cleanup"], "poll, notify");
  ASSERT_EQ(defaults["poll-cleanup"], "mark");
  int refused = 0;
  for (const auto& [flag, mode] : modes) {
    if (mode == "all") continue;
    for (const std::string source : {"cdc", "poll", "notify"}) {
      if (absl::StrContains(mode, source)) continue;
      ASSERT_TRUE(defaults.count(flag)) << "--" << flag << " not in --help";
      const std::string arg = absl::StrCat("--", flag, "=", defaults[flag]);
      CommandResult r = RunOutboxd(
          {"--pg=host=127.0.0.1", "--brokers=h:1", "--source=" + source, arg});
      EXPECT_EQ(r.exit_code, 2) << source << " " << arg << ": " << r.output;
      EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1)
          << r.output;
      EXPECT_TRUE(absl::StartsWith(
          r.output, absl::StrCat("outboxd: --", flag, " applies only to ")))
          << source << " " << arg << ": " << r.output;
      ++refused;
    }
  }
  EXPECT_GE(refused, 20);
}

TEST(CliTest, HelpShowsDashedNamesAndDefaults) {
  CommandResult r = RunOutboxd({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("--topic-prefix"), std::string::npos);
  EXPECT_EQ(r.output.find("--topic_prefix"), std::string::npos);
  EXPECT_NE(r.output.find("(default: outbox.event.)"), std::string::npos);
}

TEST(CliTest, Version) {
  CommandResult r = RunOutboxd({"--version"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(std::regex_match(
      r.output, std::regex("outboxd [0-9]+\\.[0-9]+\\.[0-9]+\n")))
      << r.output;
}

TEST(CliTest, FlagfileTakesDashedNamesCommentsAndIsOverriddenInOrder) {
  std::string path =
      absl::StrCat(::testing::TempDir(), "/outboxd-", getpid(), ".flags");
  {
    std::ofstream out(path);
    out << "# outboxd flags\n"
        << "--pg=host=127.0.0.1 port=1 dbname=x connect_timeout=1\n"
        << "\n"
        << "--brokers=127.0.0.1:9\n"
        << "--value-format=avro\n";
  }
  // The file's bad value is reported...
  CommandResult r = RunOutboxd({"--flagfile=" + path});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--value-format"), std::string::npos) << r.output;
  // ...and a later flag overrides it: the error is now about the next bad
  // flag, which proves the file's flags parsed and the override took.
  r = RunOutboxd(
      {"--flagfile=" + path, "--value-format=protobuf", "--on-invalid=bogus"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(r.output.find("--value-format"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--on-invalid"), std::string::npos) << r.output;
  r = RunOutboxd({"--flagfile=/nonexistent/flags"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  std::remove(path.c_str());
}

// A negative timeout or interval makes no sense: exit 2 naming the flag.
TEST(CliTest, NegativeStallTimeoutOrSlotMetricsIntervalExitsTwo) {
  for (const char* arg :
       {"--stall-timeout=-1s", "--slot-metrics-interval=-10s"}) {
    CommandResult r = RunOutboxd({"--pg=host=127.0.0.1", "--brokers=h:1", arg});
    EXPECT_EQ(r.exit_code, 2) << arg << ": " << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1)
        << r.output;
    const std::string flag(arg, std::string(arg).find('='));
    EXPECT_TRUE(absl::StartsWith(r.output, "outboxd: " + flag)) << r.output;
  }
  // Exactly-once events stay pending until their transaction commits: a
  // stall timeout within the transaction interval would fire on its own.
  CommandResult r = RunOutboxd(
      {"--pg=host=127.0.0.1", "--brokers=h:1", "--delivery=exactly-once",
       "--transaction-interval=5s", "--stall-timeout=5s"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(absl::StartsWith(r.output,
                               "outboxd: --stall-timeout must be "
                               "longer than --transaction-interval"))
      << r.output;
}

TEST(CliTest, UnknownFlagExitsTwoWithOneLine) {
  CommandResult r = RunOutboxd({"--no-such-flag=1"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
}

// Exactly-once needs the CDC source's checkpoint and slot; poll and notify
// refuse it rather than ignore it.
TEST(CliTest, ExactlyOnceWithPollOrNotifyExitsTwoWithOneLine) {
  for (const char* source : {"poll", "notify"}) {
    CommandResult r = RunOutboxd({"--pg=host=127.0.0.1", "--brokers=h:1",
                                  std::string("--source=") + source,
                                  "--delivery=exactly-once"});
    EXPECT_EQ(r.exit_code, 2) << source;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1)
        << r.output;
    EXPECT_NE(r.output.find("--source=cdc only"), std::string::npos)
        << r.output;
  }
}

// What only the CDC source's positions and slot can honour: poll and notify
// refuse it rather than ignore it.
TEST(CliTest, CdcOnlyFlagsWithPollOrNotifyExitTwoWithOneLine) {
  for (const char* source : {"poll", "notify"}) {
    for (const std::vector<std::string>& flags :
         {std::vector<std::string>{"--ordering=global", "--topic=t"},
          std::vector<std::string>{"--on-slot-loss=republish"}}) {
      std::vector<std::string> args = {"--pg=host=127.0.0.1", "--brokers=h:1",
                                       std::string("--source=") + source};
      args.insert(args.end(), flags.begin(), flags.end());
      CommandResult r = RunOutboxd(args);
      EXPECT_EQ(r.exit_code, 2) << source << " " << flags[0];
      EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1)
          << r.output;
      EXPECT_NE(r.output.find("--source=cdc"), std::string::npos) << r.output;
    }
  }
}

// --cloudevents: the values that make no sense, one line each.
TEST(CliTest, CloudEventsFlagsThatMakeNoSenseExitTwoWithOneLine) {
  for (const auto& [flags, says] :
       std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--cloudevents=json"},
            "--cloudevents: must be off, binary or structured, not 'json'"},
           {{"--cloudevents=structured", "--value-format=envelope-json"},
            "--cloudevents=structured needs --value-format=payload"},
           {{"--cloudevents-source=urn:x"},
            "--cloudevents-source applies only to --cloudevents=binary or "
            "structured"},
           {{"--column-content-type=ct"},
            "--column-content-type applies only to --cloudevents=binary or "
            "structured"},
           {{"--cloudevents=binary", "--cloudevents-source=my source"},
            "--cloudevents-source: 'my source' is not a URI-reference"},
           {{"--cloudevents=binary", "--cloudevents-source="},
            "--cloudevents-source: must not be empty"}}) {
    std::vector<std::string> args = {"--pg=host=127.0.0.1", "--brokers=h:1"};
    args.insert(args.end(), flags.begin(), flags.end());
    CommandResult r = RunOutboxd(args);
    EXPECT_EQ(r.exit_code, 2) << flags[0] << ": " << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1)
        << r.output;
    EXPECT_NE(r.output.find("outboxd: " + says), std::string::npos) << r.output;
  }
}

TEST(CliTest, FlagsThatCanOnlyMakeIllegalTopicNamesExitTwoWithOneLine) {
  const std::vector<std::string> base = {
      "--pg=host=127.0.0.1 port=1 dbname=x connect_timeout=1",
      "--brokers=127.0.0.1:9"};
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"--topic-prefix=outbox event.", "--topic-prefix"},
      {"--topic-prefix=outbox/", "--topic-prefix"},
      {"--topic-prefix=" + std::string(249, 'p'), "--topic-prefix"},
      {"--topic=orders\xc3\xa9", "--topic"},
      {"--topic=..", "--topic"},
      {"--topic=" + std::string(250, 't'), "--topic"},
      {"--dlq-topic=dead letters", "--dlq-topic"},
      {"--dlq-topic=.", "--dlq-topic"},
  };
  for (const auto& [flag, name] : bad) {
    std::vector<std::string> args = base;
    args.push_back(flag);
    CommandResult r = RunOutboxd(args);
    EXPECT_EQ(r.exit_code, 2) << flag << ": " << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1)
        << r.output;
    EXPECT_NE(r.output.find(name), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("illegal Kafka topic name"), std::string::npos)
        << r.output;
  }
  // The edges stay legal: an empty prefix, a 248-character one, "...".
  for (const std::string& flag : {std::string("--topic-prefix="),
                                  "--topic-prefix=" + std::string(248, 'p'),
                                  std::string("--topic=...")}) {
    std::vector<std::string> args = base;
    args.push_back(flag);
    args.push_back("--on-invalid=bogus");  // the next check fails instead
    CommandResult r = RunOutboxd(args);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("--on-invalid"), std::string::npos)
        << flag << ": " << r.output;
  }
}

// ------------------------------------------------------------------ docker

TEST(DockerTest, ComposeFileParsesAndWiresTheServices) {
  // PyYAML parses it as Docker Compose would; the checks print what is
  // wrong. Flags given to outboxd must be flags of this outboxd.
  std::string script = R"py(
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
s = doc["services"]
for name in ("postgres", "kafka", "outboxd", "writer"):
    assert name in s, "missing service " + name
pg = s["postgres"]
assert pg["image"].startswith("postgres:15"), pg["image"]
assert "wal_level=logical" in " ".join(map(str, pg["command"])), pg["command"]
kafka = s["kafka"]
env = kafka["environment"]
assert "KAFKA_PROCESS_ROLES" in env and "controller" in env["KAFKA_PROCESS_ROLES"], env
assert "KAFKA_CONTROLLER_QUORUM_VOTERS" in env, env
o = s["outboxd"]
assert o["build"]["dockerfile"].endswith("Dockerfile"), o["build"]
for dep in ("postgres", "kafka"):
    assert dep in o["depends_on"], o["depends_on"]
for arg in o["command"]:
    if arg.startswith("--"):
        print(arg.split("=")[0][2:])
w = s["writer"]
assert w.get("restart", "no") in ("no", "on-failure"), w
# The monitoring profile: every file it mounts exists, Prometheus scrapes
# outboxd's metrics port, Grafana loads the dashboard.
import os
here = os.path.dirname(os.path.abspath(sys.argv[1]))
for name in ("prometheus", "grafana"):
    assert s[name].get("profiles") == ["monitoring"], s[name]
    for v in s[name]["volumes"]:
        src = v.split(":")[0]
        assert os.path.exists(os.path.join(here, src)), v
prom = yaml.safe_load(open(os.path.join(here, "prometheus.yml")))
targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
assert "outboxd:9187" in targets, targets
assert any(v.startswith("../deploy/grafana:") for v in s["grafana"]["volumes"])
assert os.path.exists(os.path.join(here, "../deploy/grafana/outboxd-dashboard.json"))
)py";
  std::string py = absl::StrCat(::testing::TempDir(), "/compose_check.py");
  { std::ofstream(py) << script; }
  auto r = RunCommand({"python3", py, OUTBOXD_SOURCE_DIR "/docker/compose.yml"},
                      absl::Seconds(20));
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->exit_code, 0) << r->output;
  std::set<std::string> help = HelpFlags();
  for (absl::string_view flag :
       absl::StrSplit(r->output, '\n', absl::SkipEmpty())) {
    EXPECT_TRUE(help.count(std::string(flag)))
        << "compose.yml passes --" << flag << ", which outboxd does not know";
  }
}

TEST(DockerTest, DockerfileBuildsWithTheCiScripts) {
  std::string dockerfile = ReadFile(OUTBOXD_SOURCE_DIR "/docker/Dockerfile");
  ASSERT_FALSE(dockerfile.empty());
  EXPECT_TRUE(std::regex_search(
      dockerfile, std::regex("^FROM debian:bookworm[^ ]* AS build",
                             std::regex::multiline)));
  EXPECT_TRUE(std::regex_search(
      dockerfile, std::regex("^FROM debian:bookworm", std::regex::multiline)));
  // The build stage runs exactly what CI runs.
  EXPECT_NE(dockerfile.find("scripts/install-deps.sh"), std::string::npos);
  EXPECT_NE(dockerfile.find("scripts/build.sh"), std::string::npos);
  EXPECT_NE(dockerfile.find("COPY --from=build"), std::string::npos);
  EXPECT_NE(dockerfile.find("USER "), std::string::npos);  // not root
  // Every file the Dockerfile copies from the context exists.
  static const std::regex kCopy("^COPY (?!--from)([^\\n]+) [^ \\n]+$",
                                std::regex::multiline);
  for (std::sregex_iterator it(dockerfile.begin(), dockerfile.end(), kCopy), e;
       it != e; ++it) {
    for (absl::string_view src :
         absl::StrSplit((*it)[1].str(), ' ', absl::SkipEmpty())) {
      if (absl::StartsWith(src, "--")) continue;
      EXPECT_EQ(access(absl::StrCat(OUTBOXD_SOURCE_DIR "/", src).c_str(), F_OK),
                0)
          << "COPY " << src;
    }
  }
  std::string ci = ReadFile(OUTBOXD_SOURCE_DIR "/.ci/run");
  EXPECT_NE(ci.find("scripts/test.sh"), std::string::npos);
  std::string test_sh = ReadFile(OUTBOXD_SOURCE_DIR "/scripts/test.sh");
  EXPECT_NE(test_sh.find("scripts/build.sh"), std::string::npos);
}

}  // namespace
}  // namespace outboxd::testing
