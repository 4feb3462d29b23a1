// Slot loss: deciding, at every (re)connect, whether the replication slot
// is still the one outboxd streamed from (docs/ARCHITECTURE.md, "Lost
// slots").
//
// Inputs: the slot as the server shows it (pg/replication_setup.h
// InspectSlot) and outboxd's own record (pg/publisher_state.h), read in
// that order: the record is written before a position is reported, so a
// healthy slot never shows a confirmed position past the record, even
// while another outboxd is advancing both. One exception (PostgreSQL 17+):
// on a promoted standby, a failover slot synchronized from the former
// primary (synced and failover) may be ahead of the row replayed there; its
// position was confirmed by outboxd after Kafka acknowledged what precedes
// it, so it is adopted, not lost.
//
// Pure: no I/O.
#ifndef OUTBOXD_SOURCES_SLOT_LOSS_H_
#define OUTBOXD_SOURCES_SLOT_LOSS_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "pg/publisher_state.h"
#include "pg/replication_setup.h"

namespace outboxd {

enum class SlotLossPolicy {
  kFail,       // stop with one error line (the default)
  kRepublish,  // re-create the slot, republish from the outbox table
};

struct SlotVerdict {
  enum class Kind {
    kResume,  // the slot outboxd streamed from: go on
    kCreate,  // first start, no slot: create it
    kAdopt,   // first start (no record), slot exists: stream from it
    kLost,    // outboxd streamed from this slot and it is gone or replaced
  };
  Kind kind = Kind::kResume;
  std::string why;  // kLost: what happened to the slot, for the error line
};

// `source` is the current SourceIdentity(). kFailedPrecondition for a slot
// that cannot stream and that outboxd has no record of (invalidated before
// the first start).
absl::StatusOr<SlotVerdict> JudgeSlot(
    const std::optional<SlotInfo>& slot,
    const std::optional<PublisherState>& state, const std::string& source,
    const std::string& slot_name);

// The one error line of --on-slot-loss=fail: the slot, what happened, the
// last acknowledged position and its commit time, and what to do.
std::string SlotLossMessage(const std::string& slot_name,
                            const SlotVerdict& verdict,
                            const PublisherState& state);

// Whether START_REPLICATION's error says the slot is invalidated ("can no
// longer get changes from replication slot"), which may come between
// JudgeSlot and the start: SQLSTATE 55000 (object_not_in_prerequisite_
// state). The other 55000 errors of START_REPLICATION on a logical slot (a
// physical slot, a slot of another database) are ruled out by InspectSlot
// before it.
bool IsSlotInvalidatedError(const absl::Status& status);

}  // namespace outboxd

#endif  // OUTBOXD_SOURCES_SLOT_LOSS_H_
