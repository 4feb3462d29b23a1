// The equality phase of vs_debezium_bench: the same rows (every payload
// kind, odd keys, several aggregate types) through outboxd and Debezium at
// once, and their records compared on topic (modulo outboxd's prefix), key,
// value, `id` header and partition, and per key on order.
#ifndef OUTBOXD_BENCHMARKS_VS_DEBEZIUM_EQUALITY_H_
#define OUTBOXD_BENCHMARKS_VS_DEBEZIUM_EQUALITY_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "benchmarks/bench_env.h"
#include "benchmarks/vs_debezium_rig.h"
#include "nlohmann/json.hpp"

namespace outboxd::bench::vs_debezium {

// Writes `rows` rows and compares what both published: the summary, every
// difference by kind with examples, and "equal".
absl::StatusOr<nlohmann::json> RunEquality(BenchEnv& env, const RigOptions& rig,
                                           int64_t rows);

}  // namespace outboxd::bench::vs_debezium

#endif  // OUTBOXD_BENCHMARKS_VS_DEBEZIUM_EQUALITY_H_
