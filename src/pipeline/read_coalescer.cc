#include "pipeline/read_coalescer.h"

#include <algorithm>

namespace outboxd {

void ReadCoalescer::Observe(absl::Time now, int64_t transactions) {
  if (!window_set_) SetWindow();
  if (span_start_ == absl::InfinitePast()) span_start_ = now;
  span_transactions_ += transactions;
  const absl::Duration span = now - span_start_;
  if (span < kRateSpan) return;
  rate_ = static_cast<double>(span_transactions_) / absl::ToDoubleSeconds(span);
  span_start_ = now;
  span_transactions_ = 0;
  SetWindow();
}

void ReadCoalescer::SetWindow() {
  window_set_ = true;
  if (max_ <= absl::ZeroDuration()) {
    window_ = absl::ZeroDuration();
    return;
  }
  // 1 ms per 1,000 transactions/s.
  const absl::Duration by_rate = absl::Microseconds(rate_);
  window_ = std::min(max_, std::max(kMinWindow, by_rate));
}

}  // namespace outboxd
