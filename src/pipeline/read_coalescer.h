// ReadCoalescer: how long the Publisher waits, after a wakeup that read
// live transactions, before it reads the source again (--read-coalesce).
//
// Each wakeup costs the same whatever it reads (on a VM, tens of µs of
// context switching), so reading one transaction per wakeup makes live
// traffic cost several times more CPU per event than a backlog. Waiting a
// moment reads several per wakeup and hands them to the sink as one batch.
// The wait grows with the traffic, 1 ms per 1,000 transactions/s, from
// 1 ms up to the maximum: low rates keep their latency, high rates get the
// batches. The rate is measured over spans of at least kRateSpan.
//
// Pure; not thread-safe.
#ifndef OUTBOXD_PIPELINE_READ_COALESCER_H_
#define OUTBOXD_PIPELINE_READ_COALESCER_H_

#include <cstdint>

#include "absl/time/time.h"

namespace outboxd {

class ReadCoalescer {
 public:
  static constexpr absl::Duration kRateSpan = absl::Milliseconds(100);
  static constexpr absl::Duration kMinWindow = absl::Milliseconds(1);

  // `max` zero: never wait.
  explicit ReadCoalescer(absl::Duration max) : max_(max) {}

  // A wakeup at `now` read `transactions` (committed) transactions.
  void Observe(absl::Time now, int64_t transactions);

  // The wait before the next read, after a wakeup that read some.
  absl::Duration Window() const { return window_; }

  // Transactions per second over the last complete span.
  double rate() const { return rate_; }

 private:
  void SetWindow();

  absl::Duration max_;
  absl::Time span_start_ = absl::InfinitePast();
  int64_t span_transactions_ = 0;
  double rate_ = 0;
  absl::Duration window_ = absl::ZeroDuration();
  bool window_set_ = false;
};

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_READ_COALESCER_H_
