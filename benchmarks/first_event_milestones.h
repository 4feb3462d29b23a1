// Where the time goes between outboxd's exec and its first record, in the
// first_event benchmark's start phase: the milestones outboxd's log shows on
// the way (log timestamps, ms resolution), their offsets from the exec, and
// the median of each over the starts with its table.
#ifndef OUTBOXD_BENCHMARKS_FIRST_EVENT_MILESTONES_H_
#define OUTBOXD_BENCHMARKS_FIRST_EVENT_MILESTONES_H_

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace outboxd::bench::first_event {

// Milliseconds from `exec` to each milestone in the log at `path` (-1 when
// the log does not have it), in milestone order. Log lines start with an
// ISO 8601 time in ms.
std::vector<double> MilestoneOffsets(const std::string& path, absl::Time exec);

// Per milestone (and the receipt, last: each start's MilestoneOffsets with
// the receipt's offset appended), the median over the starts of its time
// after exec; milestones missing from the logs are left out.
nlohmann::json Breakdown(const std::vector<std::vector<double>>& starts);

// The Breakdown as a table ("" when it is empty).
std::string BreakdownMarkdown(const nlohmann::json& rows);

}  // namespace outboxd::bench::first_event

#endif  // OUTBOXD_BENCHMARKS_FIRST_EVENT_MILESTONES_H_
