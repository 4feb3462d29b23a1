// The throughput phase of vs_debezium_bench: a backlog of rows, then, one
// after the other, each on its own slot created before the rows:
// pg_recvlogical (the walsender's limit), outboxd, Debezium at its defaults,
// Debezium tuned. Events/s from the start of the process to the last record
// in Kafka, CPU and peak RSS of the process, and how long after that the
// slot's confirmed_flush_lsn passes the last commit.
#ifndef OUTBOXD_BENCHMARKS_VS_DEBEZIUM_THROUGHPUT_H_
#define OUTBOXD_BENCHMARKS_VS_DEBEZIUM_THROUGHPUT_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "benchmarks/bench_env.h"
#include "benchmarks/vs_debezium_rig.h"
#include "nlohmann/json.hpp"

namespace outboxd::bench::vs_debezium {

struct ThroughputOptions {
  int64_t events = 0;             // backlog rows
  std::vector<std::string> runs;  // pg_recvlogical and publishers, in order
  absl::Duration run_timeout;     // one run gives up after this long
  std::string pg_recvlogical;     // the binary
  // outboxd-<label> runs: label -> outboxd flags (--throughput_variants).
  std::map<std::string, std::vector<std::string>> variants;
  pid_t broker_pid = -1;  // the Kafka node's JVM: its CPU per run
};

// {"backlog": ..., "runs": [...]}; a run that did not finish has "error".
absl::StatusOr<nlohmann::json> RunThroughput(BenchEnv& env,
                                             const RigOptions& rig,
                                             const ThroughputOptions& options);

}  // namespace outboxd::bench::vs_debezium

#endif  // OUTBOXD_BENCHMARKS_VS_DEBEZIUM_THROUGHPUT_H_
