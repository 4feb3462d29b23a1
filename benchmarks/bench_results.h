// What the benchmarks make of their measurements: quantiles, CDF points
// and their gnuplot script, number formats for the result tables, and the
// result files themselves (<stem>.json and <stem>.md, the table on stdout).
#ifndef OUTBOXD_BENCHMARKS_BENCH_RESULTS_H_
#define OUTBOXD_BENCHMARKS_BENCH_RESULTS_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace outboxd::bench {

// Value at quantile q (0..1) of an ascending vector; 0 when empty.
double Quantile(const std::vector<double>& sorted, double q);
// (latency, fraction) points of an ascending vector for a CDF plot, dense in
// the tail.
std::vector<std::pair<double, double>> CdfPoints(
    const std::vector<double>& sorted);
// {"p50", "p90", "p99", "p999", "max", "min"} of an ascending vector.
nlohmann::json LatencyQuantiles(const std::vector<double>& sorted_ms);
// Milliseconds with two, one or no decimals, for result tables.
std::string FormatMs(double ms);
// printf of one double with a format chosen at run time (one conversion).
std::string FormatDouble(const char* format, double v);
// `events` per second over `ns` nanoseconds; 0 for an empty span.
double EventsPerSecond(int64_t events, int64_t ns);

// Writes `text` to `path`, creating parent directories.
absl::Status WriteFile(const std::string& path, const std::string& text);

// A run that failed: "<what>: <status>" on stderr, and `run` (the keys
// that name it) with "error" (the status message) appended to `failures`.
void AddFailure(nlohmann::json& failures, const std::string& what,
                nlohmann::json run, const absl::Status& status);

// A benchmark's results: `stem`.json (`doc`) and `stem`.md (`md`), then
// `md` on stdout. False, the cause on stderr, when a file cannot be written.
bool WriteResults(const std::string& stem, const nlohmann::json& doc,
                  const std::string& md);

// A latency CDF for gnuplot: <out>/<name>_cdf.dat holds one data block per
// line, <out>/<name>_cdf.gp draws one panel per rate (in the order the
// rates first appear) with one line per label, log latency axis.
struct CdfLine {
  std::string label;                              // mode or publisher
  int rate = 0;                                   // offered events/s
  std::vector<std::pair<double, double>> points;  // CdfPoints()
};
struct CdfPlot {
  std::string name;       // file stem, e.g. "latency"
  std::string generator;  // the benchmark, named in the script's header
  std::string title;      // above the panels
  double x_min_ms = 0.1;  // left end of the latency axis
};
absl::Status WriteCdfPlot(const std::string& out, const CdfPlot& plot,
                          const std::vector<CdfLine>& lines);

}  // namespace outboxd::bench

#endif  // OUTBOXD_BENCHMARKS_BENCH_RESULTS_H_
