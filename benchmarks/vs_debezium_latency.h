// The latency phase of vs_debezium_bench: commit-to-consumer latency at
// fixed rates, one publisher at a time on its own slot, read by the same
// consumer (ReceiptRecorder); a publisher that fell behind at a rate is not
// run at the higher ones.
#ifndef OUTBOXD_BENCHMARKS_VS_DEBEZIUM_LATENCY_H_
#define OUTBOXD_BENCHMARKS_VS_DEBEZIUM_LATENCY_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "benchmarks/bench_env.h"
#include "benchmarks/vs_debezium_rig.h"
#include "nlohmann/json.hpp"

namespace outboxd::bench::vs_debezium {

struct LatencyOptions {
  std::vector<std::string> publishers;  // in order
  std::vector<std::string> rates;       // offered events/s, as given
  absl::Duration duration;              // load time per (publisher, rate)
  int connections = 4;                  // load generator connections
};

struct LatencyRun {
  nlohmann::json summary;
  std::vector<std::pair<double, double>> cdf;
};

// Every (publisher, rate) run in order; the runs left out are appended to
// `skipped_runs`.
absl::StatusOr<std::vector<LatencyRun>> RunLatency(
    BenchEnv& env, const RigOptions& rig, const LatencyOptions& options,
    nlohmann::json& skipped_runs);

}  // namespace outboxd::bench::vs_debezium

#endif  // OUTBOXD_BENCHMARKS_VS_DEBEZIUM_LATENCY_H_
