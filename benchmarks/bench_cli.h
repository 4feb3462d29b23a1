// The start that every end-to-end benchmark's main() shares: the command
// line and its --broker, the --modes and --rates lists, and the environment
// started with the machine description taken just before it. Flags stay in
// the file with main(); these take their values.
//
// Exit codes of the benchmarks: 0 measured (and what a benchmark checks
// held), 1 a run or a result file failed, kBadFlags (2) a bad flag, before
// anything started.
#ifndef OUTBOXD_BENCHMARKS_BENCH_CLI_H_
#define OUTBOXD_BENCHMARKS_BENCH_CLI_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "benchmarks/bench_env.h"
#include "nlohmann/json.hpp"

namespace outboxd::bench {

inline constexpr int kBadFlags = 2;

// absl::ParseCommandLine, then bench_env's --broker. nullopt, the cause on
// stderr, when --broker is bad or, for a benchmark that runs on the dev
// broker only, when it is not dev (`dev_only` is then what is printed): the
// benchmark exits kBadFlags.
std::optional<BrokerKind> ParseBenchFlags(int argc, char** argv,
                                          const char* dev_only = nullptr);

// --rates: offered rates in events/s, each a positive number or, where
// `allow_max`, "max" (0: back to back). "bad rate <r>" for anything else.
absl::StatusOr<std::vector<int>> ParseRates(
    const std::vector<std::string>& names, bool allow_max);

// The --modes and --rates of the latency and live benchmarks, parsed;
// nullopt, the first error on stderr, when one is bad (exit kBadFlags).
struct ModesAndRates {
  std::vector<PublisherMode> modes;
  std::vector<int> rates;  // ParseRates
};
std::optional<ModesAndRates> ParseModesAndRates(
    const std::vector<std::string>& modes,
    const std::vector<std::string>& rates, bool allow_max);

// A started benchmark: MachineInfo() taken before the start (so that its
// load average is the machine's own) with the broker's description as
// "broker", and the environment.
struct StartedBench {
  nlohmann::json machine;
  std::unique_ptr<BenchEnv> env;  // null when the start failed: exit 1
};
StartedBench StartBench(const BenchEnvOptions& options);

}  // namespace outboxd::bench

#endif  // OUTBOXD_BENCHMARKS_BENCH_CLI_H_
