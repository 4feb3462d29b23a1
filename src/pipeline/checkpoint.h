// Checkpoint: the position of the last event of this source that Kafka
// provably holds, as carried in the metadata string of an offset committed
// inside each Kafka transaction (--delivery=exactly-once). The consumer
// group that holds it belongs to one source (its transactional id).
//
// Pure functions, no I/O.
#ifndef OUTBOXD_PIPELINE_CHECKPOINT_H_
#define OUTBOXD_PIPELINE_CHECKPOINT_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kafka/producer.h"
#include "outbox/event.h"

namespace outboxd {

struct Checkpoint {
  std::string source;  // outbox.source of the events
  EventPosition position;
  // The database history of the position (ConnectResult::history, CDC: the
  // timeline); "" when none was recorded. A checkpoint of another history
  // says nothing about this one's events.
  std::string history;
  // When the source transaction of `position` committed (0: not recorded).
  // An event at or below `position` that committed later belongs to
  // another history of the database (its WAL went back: a restore).
  int64_t commit_time_unix_ms = 0;
};

// The metadata string of a checkpoint (compact JSON, well under Kafka's
// offset.metadata.max.bytes of 4096 for any sane source name).
std::string EncodeCheckpoint(const Checkpoint& checkpoint);
// kDataLoss when `metadata` is not a checkpoint.
absl::StatusOr<Checkpoint> DecodeCheckpoint(absl::string_view metadata);

// The newest checkpoint of `source` and `history` among a group's
// committed offsets (the one whose transaction committed last, then the
// highest position); nullopt when there is none. Checkpoints of another
// history are passed over (counted in `*other_histories` when given).
// kFailedPrecondition when an offset carries another source's checkpoint or
// no checkpoint at all: the group (named after the transactional id) is
// shared, and nothing it says can be trusted.
absl::StatusOr<std::optional<Checkpoint>> NewestCheckpoint(
    const std::vector<CommittedOffset>& offsets, const std::string& source,
    const std::string& group, const std::string& history = "",
    size_t* other_histories = nullptr);

// The offset committed with a checkpoint: the commit LSN, clamped into
// Kafka's non-negative int64 range (informational; the metadata is what
// counts).
int64_t CheckpointOffset(const EventPosition& position);

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_CHECKPOINT_H_
