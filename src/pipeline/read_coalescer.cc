#include "pipeline/read_coalescer.h"

#include <algorithm>

namespace outboxd {

void ReadCoalescer::Observe(absl::Time now, int64_t transactions) {
  if (span_start_ == absl::InfinitePast()) span_start_ = now;
  span_transactions_ += transactions;
  const absl::Duration span = now - span_start_;
  if (span < kRateSpan) return;
  rate_ = static_cast<double>(span_transactions_) / absl::ToDoubleSeconds(span);
  span_start_ = now;
  span_transactions_ = 0;
  window_ = WindowAt(rate_);
}

absl::Duration ReadCoalescer::WindowAt(double rate) const {
  if (max_ <= absl::ZeroDuration() || rate < min_rate_) {
    return absl::ZeroDuration();
  }
  return std::min(max_, std::max(kMinWindow, max_ * (rate / kFullRate)));
}

}  // namespace outboxd
