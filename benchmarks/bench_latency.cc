#include "benchmarks/bench_latency.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "benchmarks/bench_proc.h"

namespace outboxd::bench {

absl::Status WaitForWarmup(const std::string& conninfo,
                           const std::string& aggregatetype,
                           const ReceiptRecorder& recorder,
                           absl::Duration timeout,
                           const std::function<bool()>& alive,
                           const std::string& on_failure) {
  auto conn = PgConn::Connect(conninfo);
  if (!conn.ok()) return conn.status();
  const absl::Time deadline = absl::Now() + timeout;
  while (recorder.warmups() == 0) {
    if (absl::Now() > deadline || !alive()) {
      return absl::DeadlineExceededError(on_failure);
    }
    absl::Status s = (*conn)->Exec(WarmupEventSql(aggregatetype));
    if (!s.ok()) return s;
    for (int i = 0; i < 20 && recorder.warmups() == 0; ++i) {
      absl::SleepFor(absl::Milliseconds(100));
    }
  }
  return absl::OkStatus();
}

void DrainReceipts(const ReceiptRecorder& recorder, int64_t committed,
                   absl::Duration stall, int64_t load_end_ns,
                   absl::Duration max_after_load) {
  const int64_t max_after_load_ns =
      max_after_load == absl::InfiniteDuration()
          ? INT64_MAX
          : absl::ToInt64Nanoseconds(max_after_load);
  int64_t last_count = -1;
  absl::Time last_progress = absl::Now();
  while (recorder.received() < committed) {
    const int64_t c = recorder.received();
    if (c != last_count) {
      last_count = c;
      last_progress = absl::Now();
    } else if (absl::Now() - last_progress > stall ||
               NowNs() - load_end_ns > max_after_load_ns) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

double LatencySample::committed_per_s() const {
  const double span_s = (last_commit_ns - first_commit_ns) / 1e9;
  return span_s > 0 ? committed / span_s : 0;
}

double LatencySample::delivered_per_s() const {
  if (delivered() == 0) return 0;
  const double span_s = (last_receipt_ns - first_commit_ns) / 1e9;
  return span_s > 0 ? delivered() / span_s : 0;
}

LatencySample MeasureLatencies(const LoadResult& load,
                               const ReceiptRecorder& recorder) {
  LatencySample sample;
  sample.sorted_ms.reserve(load.commit_ns.size());
  int64_t first_commit = INT64_MAX;
  for (size_t i = 0; i < load.commit_ns.size(); ++i) {
    const int64_t c = load.commit_ns[i];
    if (c == 0) continue;
    ++sample.committed;
    first_commit = std::min(first_commit, c);
    sample.last_commit_ns = std::max(sample.last_commit_ns, c);
    const int64_t r = recorder.receipt_ns(i);
    if (r == 0) continue;
    sample.last_receipt_ns = std::max(sample.last_receipt_ns, r);
    sample.sorted_ms.push_back((r - c) / 1e6);
  }
  sample.first_commit_ns = sample.committed > 0 ? first_commit : 0;
  std::sort(sample.sorted_ms.begin(), sample.sorted_ms.end());
  return sample;
}

}  // namespace outboxd::bench
