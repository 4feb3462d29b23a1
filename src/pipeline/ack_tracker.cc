#include "pipeline/ack_tracker.h"

#include <algorithm>
#include <utility>

#include "sources/event_source.h"
#include "spdlog/spdlog.h"

namespace outboxd {

template <typename Position>
BasicAckTracker<Position>::BasicAckTracker(Position start)
    : confirmable_(start) {}

template <typename Position>
void BasicAckTracker<Position>::BeginTransaction() {
  if (transaction_open_) {
    // A Begin without Commit would be a decoder bug; keep collecting into
    // the open transaction rather than confirming anything early.
    SPDLOG_WARN("ack tracker: BeginTransaction while a transaction is open");
    return;
  }
  Transaction& tx = transactions_.emplace_back();
  tx.first_sequence = next_sequence_;
  transaction_open_ = true;
}

template <typename Position>
uint64_t BasicAckTracker<Position>::AddEvent() {
  if (!transaction_open_) {
    SPDLOG_WARN("ack tracker: event outside a transaction; opening one");
    BeginTransaction();
  }
  Transaction& tx = transactions_.back();
  tx.reported.push_back(false);
  ++tx.event_count;
  ++tx.unacknowledged;
  ++in_flight_;
  return next_sequence_++;
}

template <typename Position>
void BasicAckTracker<Position>::CommitTransaction(Position end) {
  if (!transaction_open_) {
    SPDLOG_WARN("ack tracker: CommitTransaction without BeginTransaction");
    BeginTransaction();
  }
  Transaction& tx = transactions_.back();
  tx.committed = true;
  tx.end = end;
  transaction_open_ = false;
  Advance();
}

template <typename Position>
void BasicAckTracker<Position>::AbandonOpenTransaction() {
  idle_position_ = Position();
  if (!transaction_open_) return;
  Transaction& tx = transactions_.back();
  tx.committed = true;
  tx.end = Position();  // Max(confirmable_, Position()) moves nothing
  transaction_open_ = false;
  Advance();
}

template <typename Position>
typename BasicAckTracker<Position>::Transaction*
BasicAckTracker<Position>::FindTransaction(uint64_t sequence) {
  if (transactions_.empty() || sequence >= next_sequence_ ||
      sequence < transactions_.front().first_sequence) {
    return nullptr;
  }
  // The last transaction starting at or before `sequence` holds it: empty
  // transactions share first_sequence with their successor and come first.
  auto it = std::upper_bound(transactions_.begin(), transactions_.end(),
                             sequence, [](uint64_t seq, const Transaction& tx) {
                               return seq < tx.first_sequence;
                             });
  if (it == transactions_.begin()) return nullptr;
  --it;
  if (sequence - it->first_sequence >= it->event_count) return nullptr;
  return &*it;
}

template <typename Position>
typename BasicAckTracker<Position>::Transaction*
BasicAckTracker<Position>::MarkReported(uint64_t sequence) {
  Transaction* tx = FindTransaction(sequence);
  if (tx == nullptr) {
    // Confirmed transactions were fully acknowledged: a report for one of
    // their events, or for a sequence never handed out, is a duplicate/bug.
    SPDLOG_WARN("ack tracker: delivery report for unknown sequence {}",
                sequence);
    return nullptr;
  }
  const uint64_t index = sequence - tx->first_sequence;
  if (tx->reported[index]) {
    SPDLOG_WARN("ack tracker: duplicate delivery report for sequence {}",
                sequence);
    return nullptr;
  }
  tx->reported[index] = true;
  --in_flight_;
  return tx;
}

template <typename Position>
void BasicAckTracker<Position>::Acknowledge(uint64_t sequence) {
  Transaction* tx = MarkReported(sequence);
  if (tx == nullptr) return;
  --tx->unacknowledged;
  if (tx->unacknowledged == 0 && tx == &transactions_.front()) Advance();
}

template <typename Position>
void BasicAckTracker<Position>::Fail(uint64_t sequence, absl::Status cause) {
  if (failure_.ok()) {
    failure_ = cause.ok() ? absl::UnknownError("delivery failed") : cause;
  }
  // The failed event stays counted in `unacknowledged`, so Advance() never
  // passes its transaction; earlier transactions may still become
  // confirmable as their acknowledgements arrive.
  if (MarkReported(sequence) == nullptr) frozen_ = true;
}

template <typename Position>
void BasicAckTracker<Position>::ObserveIdlePosition(Position position) {
  idle_position_ = Position::Max(idle_position_, position);
  Advance();
}

template <typename Position>
void BasicAckTracker<Position>::Advance() {
  if (frozen_) return;
  while (!transactions_.empty()) {
    const Transaction& tx = transactions_.front();
    if (!tx.committed || tx.unacknowledged != 0) break;
    confirmable_ = Position::Max(confirmable_, tx.end);
    transactions_.pop_front();
  }
  // Idle: nothing open, nothing unacknowledged. Everything the server sent
  // before its reported walEnd has been registered and acknowledged.
  if (transactions_.empty() && !transaction_open_ && failure_.ok()) {
    confirmable_ = Position::Max(confirmable_, idle_position_);
  }
}

template class BasicAckTracker<Lsn>;
template class BasicAckTracker<SourcePosition>;

}  // namespace outboxd
