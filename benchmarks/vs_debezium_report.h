// The report of vs_debezium_bench: the Markdown tables of its phases
// (equality, throughput, latency) from the results document, and the
// latency CDF plot.
#ifndef OUTBOXD_BENCHMARKS_VS_DEBEZIUM_REPORT_H_
#define OUTBOXD_BENCHMARKS_VS_DEBEZIUM_REPORT_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "benchmarks/vs_debezium_latency.h"
#include "nlohmann/json.hpp"

namespace outboxd::bench::vs_debezium {

// The tables of the phases `doc` holds.
std::string Markdown(const nlohmann::json& doc);

// <out>/vs-debezium_cdf.dat and .gp: one panel per rate, a line per
// publisher.
absl::Status WriteCdf(const std::string& out,
                      const std::vector<LatencyRun>& runs);

}  // namespace outboxd::bench::vs_debezium

#endif  // OUTBOXD_BENCHMARKS_VS_DEBEZIUM_REPORT_H_
