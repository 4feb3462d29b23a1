// The publisher of a live run (live_bench.cc, live_extras.cc): outboxd with
// a variant's flags or, on the same broker under the same load, Debezium
// (Kafka Connect standalone with the PostgreSQL connector and the Outbox
// Event Router at its defaults, vs_debezium_rig.h), every record routed to
// the run's topic; and the summary that sets the two side by side.
//
// Measures only; nothing here asserts a timing.
#ifndef OUTBOXD_BENCHMARKS_LIVE_PUBLISHER_H_
#define OUTBOXD_BENCHMARKS_LIVE_PUBLISHER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "benchmarks/bench_env.h"
#include "benchmarks/live_extras.h"
#include "benchmarks/vs_debezium_rig.h"
#include "nlohmann/json.hpp"
#include "tests/harness/child_process.h"

namespace outboxd::bench {

inline constexpr char kDebeziumVariant[] = "debezium";

// The Debezium setting: Connect and Debezium from `rig`'s jars.
Variant DebeziumVariant(const vs_debezium::RigOptions& rig);

// Creates the publication Debezium reads (what its filtered autocreate
// makes), once; a no-op when it exists.
absl::Status PrepareDebezium(BenchEnv& env);

// The publisher of `v` on `slot`, publishing to `topic`: outboxd with
// `outboxd_args` (ModeRunArgs), or Debezium. Its log is
// work_dir/<log_name>.log.
absl::StatusOr<std::unique_ptr<testing::ChildProcess>> StartLivePublisher(
    BenchEnv& env, const Variant& v,
    const std::vector<std::string>& outboxd_args, const std::string& slot,
    const std::string& topic, const std::string& log_name);

// Until a walsender streams `slot` for it (60 s for outboxd, 180 s for
// Connect's start); fails early when it exits.
absl::Status WaitLiveStreaming(BenchEnv& env, const Variant& v,
                               const std::string& slot,
                               testing::ChildProcess& child,
                               const std::string& log_name);

// Stops it: outboxd's exit code, 0 for Connect.
absl::StatusOr<int> StopLivePublisher(BenchEnv& env, const Variant& v,
                                      testing::ChildProcess& child);

// Per rate and setting, the medians (and ranges) of the CPU runs'
// publisher, walsender, broker and whole-path CPU per event, and of the
// latency runs' p50/p99; each other setting's ratios to Debezium's.
nlohmann::json VsDebeziumSummary(const nlohmann::json& runs,
                                 const nlohmann::json& latency);
std::string VsDebeziumMarkdown(const nlohmann::json& summary);

}  // namespace outboxd::bench

#endif  // OUTBOXD_BENCHMARKS_LIVE_PUBLISHER_H_
