// AckTracker: turns per-event delivery reports into the position that may
// be confirmed to the source (docs/ARCHITECTURE.md, "The confirmed-position
// rule"): for CDC the LSN confirmed to PostgreSQL.
//
// Events get consecutive sequence numbers in stream order. Each transaction
// is confirmable at its end position (CDC: its commit's end LSN) once it
// and every earlier transaction have all their events acknowledged. With
// nothing open or in flight, the position may move to the newest idle
// position the source reported (CDC: the server's walEnd).
// A failed delivery freezes the confirmable position before its transaction
// for good.
//
// The position type is a template parameter: Lsn for the CDC stream (and
// the tests), SourcePosition (sources/event_source.h) in the Publisher,
// where a polling source's positions are batch numbers, not LSNs. A
// Position is ordered, default-constructs to the lowest position and has
// a static Max(a, b).
//
// Threading: not thread-safe; used from the pipeline thread only.
#ifndef OUTBOXD_PIPELINE_ACK_TRACKER_H_
#define OUTBOXD_PIPELINE_ACK_TRACKER_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <vector>

#include "absl/status/status.h"
#include "common/lsn.h"

namespace outboxd {

template <typename Position>
class BasicAckTracker {
 public:
  // `start` is where streaming starts (the slot's confirmed position).
  explicit BasicAckTracker(Position start = Position());

  // A tracker for a stream that starts over at `start` (a new slot, a new
  // history): nothing of this one is tracked any more, and its sequences
  // go on after this one's, so that a late delivery report of an event
  // registered here is unknown there rather than taken for a new event's.
  BasicAckTracker StartOver(Position start) const {
    BasicAckTracker next(start);
    next.next_sequence_ = next_sequence_;
    return next;
  }

  // A transaction starts; events added until CommitTransaction belong to it.
  void BeginTransaction();
  // Registers one event of the open transaction; returns its sequence number.
  uint64_t AddEvent();
  // The open transaction ends at `end` (CDC: its commit record's end LSN).
  void CommitTransaction(Position end);

  // The replication connection was lost: the open transaction (Begin seen,
  // Commit not) will be sent again on the next connection. Its events
  // already registered are still reported (and may be acknowledged), but it
  // confirms nothing. The last idle position is forgotten too: it may lie
  // past that transaction.
  void AbandonOpenTransaction();

  // Delivery reports, in any order.
  void Acknowledge(uint64_t sequence);
  void Fail(uint64_t sequence, absl::Status cause);

  // The source's newest position with no transaction open (CDC: the
  // walsender's walEnd from XLogData or a keepalive).
  void ObserveIdlePosition(Position position);

  // The flush position to report: never past an unacknowledged event.
  Position Confirmable() const { return confirmable_; }
  // A transaction is open: begun, neither committed nor abandoned.
  bool transaction_open() const { return transaction_open_; }
  // Events registered but not yet acknowledged (or failed).
  size_t EventsInFlight() const { return in_flight_; }
  // The first delivery failure, OK when none.
  const absl::Status& failure() const { return failure_; }

 private:
  struct Transaction {
    uint64_t first_sequence = 0;
    uint64_t event_count = 0;
    // Events neither acknowledged nor failed, plus failed ones: a failed
    // event is never subtracted, so its transaction never becomes
    // confirmable.
    uint64_t unacknowledged = 0;
    bool committed = false;
    Position end;
    // One flag per event (index = sequence - first_sequence): reported
    // already. Guards against a duplicate report confirming too early.
    std::vector<bool> reported;
  };
  // The transaction holding `sequence`, nullptr when it is not tracked
  // (already confirmed or never registered). O(log n).
  Transaction* FindTransaction(uint64_t sequence);
  // Marks `sequence` reported; false (and logs) when unknown or duplicate.
  Transaction* MarkReported(uint64_t sequence);
  void Advance();

  std::deque<Transaction> transactions_;  // oldest first, not yet confirmable
  bool transaction_open_ = false;
  uint64_t next_sequence_ = 0;
  size_t in_flight_ = 0;
  Position confirmable_;
  Position idle_position_;
  absl::Status failure_;
  // Set when a failure cannot be placed in a transaction: nothing advances.
  bool frozen_ = false;
};

using AckTracker = BasicAckTracker<Lsn>;

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_ACK_TRACKER_H_
