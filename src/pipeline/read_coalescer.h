// ReadCoalescer: how long the Publisher waits, after a wakeup that read
// live transactions, before it reads the source again (--max-batch-delay).
//
// Each wakeup costs the same whatever it reads (on a VM, tens of µs of
// context switching), so reading one transaction per wakeup makes live
// traffic cost several times more CPU per event than a backlog. Waiting a
// moment reads several per wakeup and hands them to the sink as one batch,
// and fuller batches mean fewer produce requests for the broker. The wait
// grows in proportion to the traffic and reaches the maximum (the latency
// budget) at kFullRate: with the default 10 ms, 2 ms per 1,000
// transactions/s. Below kMinRate there is no wait: there a wakeup per
// transaction costs little CPU in all, and the wait would only add
// latency (at 1,000/s a 1 ms wait moved the median commit-to-consumer
// latency from 2.7 to 3.4 ms). The rate is measured over spans of at
// least kRateSpan.
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
  // The shortest wait, once there is one.
  static constexpr absl::Duration kMinWindow = absl::Milliseconds(1);
  // Transactions per second below which reads do not wait.
  static constexpr double kMinRate = 2000;
  // Transactions per second from which the wait is the maximum.
  static constexpr double kFullRate = 5000;

  // `max` zero: never wait. `min_rate` zero: wait from the start (tests).
  explicit ReadCoalescer(absl::Duration max, double min_rate = kMinRate)
      : max_(max), min_rate_(min_rate), window_(WindowAt(0)) {}

  // A wakeup at `now` read `transactions` (committed) transactions.
  void Observe(absl::Time now, int64_t transactions);

  // The wait before the next read, after a wakeup that read some.
  absl::Duration Window() const { return window_; }

  // Transactions per second over the last complete span.
  double rate() const { return rate_; }

  // The wait at `rate` transactions/s: none below min_rate, else
  // max * rate / kFullRate, at least kMinWindow and at most max.
  absl::Duration WindowAt(double rate) const;

 private:
  const absl::Duration max_;
  const double min_rate_;
  absl::Time span_start_ = absl::InfinitePast();
  int64_t span_transactions_ = 0;
  double rate_ = 0;
  absl::Duration window_;
};

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_READ_COALESCER_H_
