#include "benchmarks/bench_cli.h"

#include <iostream>

#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "benchmarks/bench_proc.h"

namespace outboxd::bench {

std::optional<BrokerKind> ParseBenchFlags(int argc, char** argv,
                                          const char* dev_only) {
  absl::ParseCommandLine(argc, argv);
  absl::StatusOr<BrokerKind> broker = BrokerFlag();
  if (dev_only != nullptr && (!broker.ok() || *broker != BrokerKind::kDev)) {
    std::cerr << dev_only << "\n";
    return std::nullopt;
  }
  if (!broker.ok()) {
    std::cerr << broker.status().message() << "\n";
    return std::nullopt;
  }
  return *broker;
}

absl::StatusOr<std::vector<int>> ParseRates(
    const std::vector<std::string>& names, bool allow_max) {
  std::vector<int> rates;
  for (const std::string& r : names) {
    int v = 0;
    if (allow_max && r == "max") {
      v = 0;
    } else if (!absl::SimpleAtoi(r, &v) || v <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bad rate ", r, allow_max ? " (a number of events/s, or max)" : ""));
    }
    rates.push_back(v);
  }
  return rates;
}

std::optional<ModesAndRates> ParseModesAndRates(
    const std::vector<std::string>& modes,
    const std::vector<std::string>& rates, bool allow_max) {
  absl::StatusOr<std::vector<PublisherMode>> m = ParsePublisherModes(modes);
  if (!m.ok()) {
    std::cerr << m.status() << "\n";
    return std::nullopt;
  }
  absl::StatusOr<std::vector<int>> r = ParseRates(rates, allow_max);
  if (!r.ok()) {
    std::cerr << r.status().message() << "\n";
    return std::nullopt;
  }
  return ModesAndRates{*std::move(m), *std::move(r)};
}

StartedBench StartBench(const BenchEnvOptions& options) {
  StartedBench bench;
  bench.machine = MachineInfo();
  bench.env = StartBenchEnvOrReport(options);
  if (bench.env != nullptr) {
    bench.machine["broker"] = bench.env->broker_description();
  }
  return bench;
}

}  // namespace outboxd::bench
