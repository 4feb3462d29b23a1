// KafkaReader: an independent librdkafka consumer for tests. Reads every
// partition of a topic from the beginning (assign, no group) and returns the
// records with all their parts.
#ifndef OUTBOXD_TESTS_HARNESS_KAFKA_READER_H_
#define OUTBOXD_TESTS_HARNESS_KAFKA_READER_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace outboxd::testing {

struct ConsumedRecord {
  std::string topic;
  int32_t partition = 0;
  int64_t offset = 0;
  std::string key;
  std::optional<std::string> value;  // nullopt: tombstone
  int64_t timestamp_ms = 0;
  bool create_time = false;  // timestamp type is CreateTime
  std::vector<std::pair<std::string, std::string>> headers;

  // First header with that name, nullopt when absent.
  std::optional<std::string> Header(const std::string& name) const;
};

// The header `name` of `r` as an unsigned decimal (outbox.lsn, outbox.index,
// outbox.seq); a test failure, and 0, when it is absent or not one.
uint64_t HeaderU64(const ConsumedRecord& r, const std::string& name);

// Reads `topic` from the beginning until at least `min_records` records were
// read and no more arrive for `quiet`, or until `timeout`. Returns the
// records in (partition, offset) order. kNotFound if the topic never appears.
absl::StatusOr<std::vector<ConsumedRecord>> ReadTopic(
    const std::string& bootstrap, const std::string& topic, size_t min_records,
    absl::Duration timeout, absl::Duration quiet = absl::Seconds(1));

}  // namespace outboxd::testing

#endif  // OUTBOXD_TESTS_HARNESS_KAFKA_READER_H_
