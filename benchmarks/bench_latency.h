// The latency benchmarks' measurement around one fixed-rate load
// (bench_pg.h's GenerateLoad) against a publisher that streams: the warm-up
// that takes connections and metadata out of the measurement, the drain
// after the load, and the commit-to-receipt latencies of every event.
//
// Measures only; nothing here asserts a timing.
#ifndef OUTBOXD_BENCHMARKS_BENCH_LATENCY_H_
#define OUTBOXD_BENCHMARKS_BENCH_LATENCY_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "benchmarks/bench_kafka.h"
#include "benchmarks/bench_pg.h"

namespace outboxd::bench {

// Commits a warm-up event (EventPayload(-1), of `aggregatetype`) every 2 s
// until `recorder` has received one, so that topic metadata, connections and
// the publisher's first batch are out of the measurement. On `timeout`, or
// as soon as `alive()` turns false: kDeadlineExceeded with `on_failure`.
absl::Status WaitForWarmup(const std::string& conninfo,
                           const std::string& aggregatetype,
                           const ReceiptRecorder& recorder,
                           absl::Duration timeout,
                           const std::function<bool()>& alive,
                           const std::string& on_failure);

// After the load: waits until `recorder` has received `committed` bench
// events, or none arrived for `stall`, or `max_after_load` has passed since
// `load_end_ns` (a backlog that long means the publisher did not keep up).
void DrainReceipts(const ReceiptRecorder& recorder, int64_t committed,
                   absl::Duration stall, int64_t load_end_ns,
                   absl::Duration max_after_load = absl::InfiniteDuration());

// Commit-to-receipt latencies of one load. Read after recorder.Stop().
struct LatencySample {
  std::vector<double> sorted_ms;  // one per delivered event, ascending
  int64_t committed = 0;          // events whose COMMIT succeeded
  int64_t first_commit_ns = 0;    // 0 when none committed
  int64_t last_commit_ns = 0;
  int64_t last_receipt_ns = 0;  // 0 when none delivered
  int64_t delivered() const { return static_cast<int64_t>(sorted_ms.size()); }
  double max_ms() const { return sorted_ms.empty() ? 0 : sorted_ms.back(); }
  // Over the span from the first to the last commit.
  double committed_per_s() const;
  // Over the span from the first commit to the last receipt.
  double delivered_per_s() const;
};
LatencySample MeasureLatencies(const LoadResult& load,
                               const ReceiptRecorder& recorder);

}  // namespace outboxd::bench

#endif  // OUTBOXD_BENCHMARKS_BENCH_LATENCY_H_
