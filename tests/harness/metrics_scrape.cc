#include "tests/harness/metrics_scrape.h"

#include <cstdlib>
#include <regex>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/harness/child_process.h"

namespace outboxd::testing {

int MetricsPort(const std::string& log) {
  std::smatch m;
  static const std::regex kLine("metrics on http://[^:]+:([0-9]+)/metrics");
  if (!std::regex_search(log, m, kLine)) return 0;
  return std::stoi(m[1]);
}

std::string Get(int port, const std::string& path, int* http_code) {
  auto r = RunCommand({"curl", "-s", "-o", "-", "-w", "\n%{http_code}",
                       absl::StrCat("http://127.0.0.1:", port, path)},
                      absl::Seconds(10));
  if (!r.ok() || r->exit_code != 0) {
    *http_code = 0;
    return "";
  }
  size_t nl = r->output.rfind('\n');
  *http_code = std::atoi(r->output.c_str() + nl + 1);
  return r->output.substr(0, nl);
}

double Sample(const std::string& scrape, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(scrape, '\n')) {
    if (absl::StartsWith(line, series + " ")) {
      double v = -1;
      EXPECT_TRUE(absl::SimpleAtod(line.substr(series.size() + 1), &v)) << line;
      return v;
    }
  }
  return -1;
}

}  // namespace outboxd::testing
