// PartitionWatermarks: what exactly-once delivery needs to know about Kafka
// partitions before producing to them (README "Reliability"):
//   - how many partitions a topic has, so that the partition of a key can be
//     computed before producing (Java-compatible murmur2, as librdkafka's
//     murmur2_random partitioner does for non-NULL keys);
//   - the position (outbox.lsn, outbox.index headers) of the last record of a
//     partition, read with a short-lived assignment of a private consumer at
//     offset high-1.
//
// Owns one librdkafka consumer handle (never joins a group, never commits).
// Calls block for at most the configured timeout. Not thread-safe: the
// pipeline thread owns it.
#ifndef OUTBOXD_KAFKA_PARTITION_WATERMARKS_H_
#define OUTBOXD_KAFKA_PARTITION_WATERMARKS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "outbox/event.h"

namespace outboxd {

// The partition librdkafka's murmur2 / murmur2_random partitioners (and the
// Java client's default partitioner) choose for a non-NULL `key`:
// (murmur2(key) & 0x7fffffff) % partition_count. An empty key is hashed too.
int32_t Murmur2Partition(absl::string_view key, int32_t partition_count);

// Parses the position headers of a record; nullopt when either is missing
// or not a decimal number.
std::optional<EventPosition> PositionFromHeaders(
    absl::string_view lsn_header, absl::string_view index_header);

// Where the watermark source looks things up; an interface so that the
// deduplication logic can be tested without a broker.
class PartitionInfoSource {
 public:
  virtual ~PartitionInfoSource() = default;
  // kUnavailable / kDeadlineExceeded: retry later.
  virtual absl::StatusOr<int32_t> PartitionCount(const std::string& topic) = 0;
  // Position of the last record of the partition; nullopt when the
  // partition is empty. kDataLoss when the last record carries no position
  // (someone else writes to the partition: exactly-once cannot hold).
  virtual absl::StatusOr<std::optional<EventPosition>> LastPosition(
      const std::string& topic, int32_t partition) = 0;
};

struct PartitionWatermarksOptions {
  std::string brokers;
  // User properties (--kafka-property): security.protocol, sasl.*, ssl.*
  // apply to this consumer too. Producer-only names are dropped.
  std::vector<std::pair<std::string, std::string>> properties;
  absl::Duration timeout = absl::Seconds(10);
};

class PartitionWatermarks : public PartitionInfoSource {
 public:
  static absl::StatusOr<std::unique_ptr<PartitionWatermarks>> Create(
      const PartitionWatermarksOptions& options);
  ~PartitionWatermarks() override;
  PartitionWatermarks(const PartitionWatermarks&) = delete;
  PartitionWatermarks& operator=(const PartitionWatermarks&) = delete;

  absl::StatusOr<int32_t> PartitionCount(const std::string& topic) override;
  absl::StatusOr<std::optional<EventPosition>> LastPosition(
      const std::string& topic, int32_t partition) override;

 private:
  struct Impl;
  explicit PartitionWatermarks(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace outboxd

#endif  // OUTBOXD_KAFKA_PARTITION_WATERMARKS_H_
