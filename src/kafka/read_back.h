// Reading back what outboxd wrote, as a consumer that never joins a group
// (assigned partitions, read committed, nothing committed): which event
// ids the records of some topics carry since a point in time. The
// reconciler (pipeline/reconciler.h) asks it after a restart about rows an
// earlier process may have published: Kafka, not this process's memory,
// then says whether they are there.
#ifndef OUTBOXD_KAFKA_READ_BACK_H_
#define OUTBOXD_KAFKA_READ_BACK_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace outboxd {

struct ReadBackRequest {
  std::string brokers;
  // The user's properties; only the connection and security ones apply.
  std::vector<std::pair<std::string, std::string>> properties;
  std::vector<std::string> topics;  // a topic that does not exist is empty
  // Each partition is read from its first record whose timestamp is at or
  // after this (offsets for times), to its end as of the read (the last
  // stable offset).
  int64_t since_unix_ms = 0;
  // The values of header `id` asked about.
  absl::flat_hash_set<std::string> ids;
  absl::Duration timeout = absl::Minutes(2);
};

// Which of `request.ids` the records carry in header `id`. Stops early once
// every id is found. kUnavailable when the cluster did not answer or the
// read did not reach every partition's end within the timeout (the caller
// asks again later; nothing is guessed); kPermissionDenied when outboxd's
// principal may not read (describe) a topic; kFailedPrecondition when
// Kafka's answer cannot be trusted: a compacted topic, or records of the
// time possibly deleted by retention.
absl::StatusOr<absl::flat_hash_set<std::string>> FindIdsInKafka(
    const ReadBackRequest& request);

}  // namespace outboxd

#endif  // OUTBOXD_KAFKA_READ_BACK_H_
