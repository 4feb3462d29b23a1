#include "sources/slot_loss.h"

#include "absl/strings/str_cat.h"
#include "pg/connection.h"

namespace outboxd {
namespace {

std::string InvalidatedWhy(const SlotInfo& slot) {
  if (slot.invalidation_reason == "idle_timeout") {
    return "the slot is invalidated (invalidation_reason 'idle_timeout': it "
           "was inactive longer than idle_replication_slot_timeout)";
  }
  if (!slot.invalidation_reason.empty()) {
    return absl::StrCat("the slot is invalidated (invalidation_reason '",
                        slot.invalidation_reason, "', wal_status '",
                        slot.wal_status,
                        slot.invalidation_reason == "wal_removed"
                            ? "': the server removed WAL it needed, see "
                              "max_slot_wal_keep_size)"
                            : "')");
  }
  // 16 has no invalidation_reason, and its `conflicting` is true for any
  // invalidated slot; 15 invalidates for no other cause than
  // max_slot_wal_keep_size.
  if (slot.conflicting.has_value()) {
    return absl::StrCat(
        "the slot is invalidated (wal_status '", slot.wal_status,
        "', conflicting ", *slot.conflicting ? "true" : "false",
        ": the server removed WAL it needed, see max_slot_wal_keep_size, or "
        "the slot, made on a standby, conflicted with recovery; this server "
        "does not say which)");
  }
  return absl::StrCat("the slot is invalidated (wal_status '", slot.wal_status,
                      "': the server removed WAL it needed, see "
                      "max_slot_wal_keep_size)");
}

}  // namespace

absl::StatusOr<SlotVerdict> JudgeSlot(
    const std::optional<SlotInfo>& slot,
    const std::optional<PublisherState>& state, const std::string& source,
    const std::string& slot_name) {
  using Kind = SlotVerdict::Kind;
  if (!state.has_value()) {
    if (!slot.has_value()) return SlotVerdict{Kind::kCreate, ""};
    if (slot->invalidated()) {
      return absl::FailedPreconditionError(
          absl::StrCat("replication slot ", slot_name,
                       " is invalidated (wal_status '", slot->wal_status,
                       slot->invalidation_reason.empty()
                           ? ""
                           : absl::StrCat("', invalidation_reason '",
                                          slot->invalidation_reason),
                       "') and outboxd has no record of streaming from "
                       "it: drop it (SELECT pg_drop_replication_slot('",
                       slot_name, "')) to start afresh"));
    }
    return SlotVerdict{Kind::kAdopt, ""};
  }
  if (state->source != source) {
    return SlotVerdict{
        Kind::kLost,
        absl::StrCat("the recorded position belongs to source ", state->source,
                     " but this is ", source,
                     " (a restored, upgraded or re-initialised cluster)")};
  }
  if (!slot.has_value()) {
    return SlotVerdict{Kind::kLost,
                       "the slot does not exist (dropped, or not carried over "
                       "by a failover to a standby)"};
  }
  if (slot->invalidated()) {
    return SlotVerdict{Kind::kLost, InvalidatedWhy(*slot)};
  }
  if (slot->confirmed_flush > state->last_ack && slot->synced &&
      slot->failover.value_or(false)) {
    // A failover slot synchronized from the former primary: its position is
    // one that primary's outboxd confirmed, which it does only after Kafka
    // acknowledged everything before it, so nothing between the row and the
    // slot was skipped. The row replayed here can be behind: the standby may
    // have flushed the slot's position but not the row's later commit.
    return SlotVerdict{
        Kind::kAdopt,
        absl::StrCat("a failover slot synchronized from the former primary, "
                     "ahead of the recorded ",
                     state->last_ack.ToString())};
  }
  if (slot->confirmed_flush > state->last_ack) {
    return SlotVerdict{
        Kind::kLost,
        absl::StrCat("the slot starts at ", slot->confirmed_flush.ToString(),
                     ", past the last acknowledged position: it was "
                     "re-created or advanced by someone else")};
  }
  return SlotVerdict{Kind::kResume, ""};
}

std::string SlotLossMessage(const std::string& slot_name,
                            const SlotVerdict& verdict,
                            const PublisherState& state) {
  return absl::StrCat(
      "replication slot ", slot_name, " is lost: ", verdict.why,
      ". outboxd streamed from it and last acknowledged ",
      state.last_ack.ToString(), " (commit time ",
      state.commit_time_text.empty() ? "unknown" : state.commit_time_text,
      "); events committed after that may be missing from Kafka. Rerun with "
      "--on-slot-loss=republish to re-create the slot and republish them "
      "from the outbox table (logical decoding messages and rows deleted in "
      "their own transaction cannot be republished), or accept the loss: "
      "DELETE FROM outbox.publisher_state WHERE slot_name = '",
      slot_name, "'");
}

bool IsSlotInvalidatedError(const absl::Status& status) {
  return HasSqlState(status, sqlstate::kObjectNotInPrerequisiteState);
}

}  // namespace outboxd
