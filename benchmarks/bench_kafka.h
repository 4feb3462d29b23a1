// The Kafka side of the end-to-end benchmarks: librdkafka handles, topics
// created through the admin API, an independent consumer that timestamps
// each record on receipt, and records counted at the broker through the
// partitions' high watermarks.
//
// Threading: a ReceiptRecorder consumes on a thread of its own; its
// counters may be read from any thread.
#ifndef OUTBOXD_BENCHMARKS_BENCH_KAFKA_H_
#define OUTBOXD_BENCHMARKS_BENCH_KAFKA_H_

#include <librdkafka/rdkafka.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace outboxd::bench {

// An independent librdkafka consumer in its own thread: assigns every
// partition of `topic` from the beginning (no group join) and stores, per
// bench id in [0, capacity), the monotonic time it first received it.
class ReceiptRecorder {
 public:
  static absl::StatusOr<std::unique_ptr<ReceiptRecorder>> Start(
      const std::string& bootstrap, const std::string& topic, int partitions,
      size_t capacity, int fetch_wait_ms);
  ~ReceiptRecorder();  // stops the thread and closes the consumer

  // Thread-safe readers.
  int64_t received() const { return received_.load(); }
  int64_t warmups() const { return warmups_.load(); }
  int64_t duplicates() const { return duplicates_.load(); }
  int64_t last_receipt_ns() const { return last_receipt_ns_.load(); }
  // Receipt time of `id` (0 = not received). Read after Stop().
  int64_t receipt_ns(size_t id) const { return receipts_[id]; }
  void Stop();

 private:
  ReceiptRecorder() = default;
  void Run();
  rd_kafka_t* rk_ = nullptr;
  std::vector<int64_t> receipts_;
  std::atomic<int64_t> received_{0};
  std::atomic<int64_t> warmups_{0};
  std::atomic<int64_t> duplicates_{0};
  std::atomic<int64_t> last_receipt_ns_{0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Sum of the high watermarks of `topic`'s partitions (records the broker
// holds), through a short-lived producer handle kept by the caller.
class WatermarkProbe {
 public:
  static absl::StatusOr<std::unique_ptr<WatermarkProbe>> Create(
      const std::string& bootstrap);
  ~WatermarkProbe();
  absl::StatusOr<int64_t> Total(const std::string& topic, int partitions);

 private:
  WatermarkProbe() = default;
  rd_kafka_t* rk_ = nullptr;
};

// A librdkafka handle of `type` with `settings` (name, value), logging
// errors only to stderr.
absl::StatusOr<rd_kafka_t*> NewKafkaHandle(
    rd_kafka_type_t type,
    const std::vector<std::pair<const char*, std::string>>& settings);

// Creates topics with `partitions` partitions (replication factor 1) through
// librdkafka's admin API; an existing topic is fine.
absl::Status CreateTopics(const std::string& bootstrap,
                          const std::vector<std::string>& topics,
                          int partitions);

// --- records counted at the broker -----------------------------------------

struct RecordArrival {
  int64_t first_ns = 0;    // when a first record was seen (0 = never)
  int64_t done_ns = 0;     // when all `target` were seen (0 = not all)
  int64_t last_total = 0;  // the last sum read
};
// Probes the sum of `topic`'s high watermarks every 20 ms until it reaches
// `target`, `timeout` passes, or `alive()` turns false (the publisher
// exited). Times are NowNs().
RecordArrival WaitForRecords(WatermarkProbe& probe, const std::string& topic,
                             int partitions, int64_t target,
                             absl::Duration timeout,
                             const std::function<bool()>& alive);

}  // namespace outboxd::bench

#endif  // OUTBOXD_BENCHMARKS_BENCH_KAFKA_H_
