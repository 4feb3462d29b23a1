#include "benchmarks/first_event_milestones.h"

#include <algorithm>
#include <iterator>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "benchmarks/bench_results.h"
#include "tests/harness/child_process.h"

namespace outboxd::bench::first_event {
namespace {

// What outboxd's log says on its way to the first record, in the order it
// happens; the first line containing `needle` counts. The rdkafka lines need
// --kafka_debug=broker,msg (or more); the others are at info level.
struct Milestone {
  const char* label;
  const char* needle;
};
constexpr Milestone kMilestones[] = {
    {"first log line (process up, flags, metrics server)", ""},
    {"\"starting\" (before the first connection)", " starting: "},
    {"slot inspected (connection, wal_level, publication, slot and "
     "publisher_state checks)",
     " found, confirmed position "},
    {"START_REPLICATION accepted", "streaming from replication slot"},
    {"rdkafka: producer initialized (rd_kafka_new returns)",
     "initialized (builtin.features"},
    {"ready line (producer created)", "streaming from slot"},
    {"rdkafka: producer id acquired", "changed PID{Invalid}"},
    {"rdkafka: first Produce MessageSet", "Produce MessageSet"},
    {"rdkafka: first delivery", "BaseSeq 0) delivered"},
};

}  // namespace

std::vector<double> MilestoneOffsets(const std::string& path, absl::Time exec) {
  std::vector<double> at(std::size(kMilestones), -1);
  std::istringstream log(testing::ReadFile(path));
  std::string line;
  while (std::getline(log, line)) {
    const size_t space = line.find(' ');
    absl::Time t;
    std::string error;
    if (space == std::string::npos ||
        !absl::ParseTime("%Y-%m-%dT%H:%M:%E3S%Ez", line.substr(0, space), &t,
                         &error)) {
      continue;
    }
    for (size_t m = 0; m < std::size(kMilestones); ++m) {
      if (at[m] < 0 && line.find(kMilestones[m].needle) != std::string::npos) {
        at[m] = absl::ToDoubleMilliseconds(t - exec);
      }
    }
  }
  return at;
}

nlohmann::json Breakdown(const std::vector<std::vector<double>>& starts) {
  nlohmann::json rows = nlohmann::json::array();
  if (starts.empty()) return rows;
  for (size_t m = 0; m <= std::size(kMilestones); ++m) {
    std::vector<double> v;
    for (const std::vector<double>& at : starts) {
      if (at[m] >= 0) v.push_back(at[m]);
    }
    if (v.empty()) continue;
    std::sort(v.begin(), v.end());
    rows.push_back(
        {{"milestone", m < std::size(kMilestones)
                           ? kMilestones[m].label
                           : "first record received by the consumer"},
         {"median_ms_after_exec", Quantile(v, 0.5)},
         {"n", v.size()}});
  }
  return rows;
}

std::string BreakdownMarkdown(const nlohmann::json& rows) {
  if (rows.empty()) return "";
  std::string md =
      "\nStart -> first record, where the time goes (outboxd's log "
      "timestamps, ms resolution, median over the starts):\n\n"
      "| milestone | ms after exec | step ms |\n|---|---:|---:|\n";
  double previous = 0;
  for (const nlohmann::json& r : rows) {
    const double at = r["median_ms_after_exec"].get<double>();
    absl::StrAppend(&md, "| ", r["milestone"].get<std::string>(), " | ",
                    FormatMs(at), " | ", FormatMs(at - previous), " |\n");
    previous = at;
  }
  return md;
}

}  // namespace outboxd::bench::first_event
