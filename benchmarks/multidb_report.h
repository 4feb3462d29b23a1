// The report of multidb_bench: the table of every setup's median over the
// rounds (losses: the sum), and the ratio of the medians with the range of
// the rounds' own ratios.
#ifndef OUTBOXD_BENCHMARKS_MULTIDB_REPORT_H_
#define OUTBOXD_BENCHMARKS_MULTIDB_REPORT_H_

#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace outboxd::bench::multidb {

// The table of `runs` (multidb_run's results), setups in `setups` order.
std::string Markdown(const std::string& broker, const nlohmann::json& runs,
                     const std::vector<std::string>& setups, int ndb,
                     int rounds);

}  // namespace outboxd::bench::multidb

#endif  // OUTBOXD_BENCHMARKS_MULTIDB_REPORT_H_
