// ExactlyOnceFilter: drops events that are already in Kafka, so that a
// restart (or a reconnect) that resends events from the slot's confirmed
// position does not write them twice (--delivery=exactly-once).
//
// Every event has a global position (outbox.lsn, outbox.index) that strictly
// increases over the stream (DESIGN.md section 2). Before the first record
// to a partition after a start, the filter reads the position of that
// partition's last record (its watermark); an event whose position is not
// past the watermark of its partition is already there and is skipped.
// After that, the watermark is the position of the last record enqueued to
// the partition. The partition is computed here (murmur2, as librdkafka's
// partitioner) so that the record can be produced to it explicitly.
//
// This holds when outboxd is the only writer of those partitions and the
// producer keeps per-partition order (idempotence), see README
// "Reliability".
//
// Not thread-safe: the pipeline thread owns it.
#ifndef OUTBOXD_PIPELINE_EXACTLY_ONCE_FILTER_H_
#define OUTBOXD_PIPELINE_EXACTLY_ONCE_FILTER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kafka/partition_watermarks.h"
#include "outbox/event.h"

namespace outboxd {

class ExactlyOnceFilter {
 public:
  // `source` must remain live while this filter is in use.
  explicit ExactlyOnceFilter(PartitionInfoSource* source) : source_(source) {}

  struct Decision {
    int32_t partition = 0;
    bool produce = true;  // false: already in the partition, skip it
  };
  // Where a record keyed `key` for `topic` goes and whether it is new.
  // `fixed_partition` >= 0: the record goes there, not by key.
  // kUnavailable / kDeadlineExceeded: the cluster did not answer, try again.
  // kDataLoss: the partition's last record has no position.
  absl::StatusOr<Decision> Admit(const std::string& topic,
                                 absl::string_view key,
                                 const EventPosition& position,
                                 int32_t fixed_partition = -1);

  // The record at `position` was enqueued to (topic, partition).
  void Produced(const std::string& topic, int32_t partition,
                const EventPosition& position);

  uint64_t skipped() const { return skipped_; }

 private:
  PartitionInfoSource* source_;
  absl::flat_hash_map<std::string, int32_t> partition_counts_;
  // nullopt: the partition was empty when first used.
  absl::flat_hash_map<std::pair<std::string, int32_t>,
                      std::optional<EventPosition>>
      watermarks_;
  uint64_t skipped_ = 0;
};

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_EXACTLY_ONCE_FILTER_H_
