#include "pipeline/transaction_batch.h"

#include <utility>

namespace outboxd {

void TransactionBatch::Began(absl::Time now) {
  open_ = true;
  began_ = now;
  sequences_.clear();
  first_topic_.clear();
}

void TransactionBatch::Produced(uint64_t sequence,
                                const EventPosition& position,
                                int64_t commit_time_unix_ms,
                                const std::string& topic) {
  if (sequences_.empty()) first_topic_ = topic;
  sequences_.push_back(sequence);
  last_position_ = position;
  last_commit_time_ms_ = commit_time_unix_ms;
}

bool TransactionBatch::CommitDue(absl::Time now, bool at_boundary) const {
  if (!open_ || sequences_.empty()) return false;
  if (sequences_.size() >= options_.split_events) return true;
  if (!at_boundary) return false;
  return sequences_.size() >= options_.max_events ||
         now - began_ >= options_.interval;
}

absl::Time TransactionBatch::Deadline() const {
  if (!open_ || sequences_.empty()) return absl::InfiniteFuture();
  return began_ + options_.interval;
}

std::vector<uint64_t> TransactionBatch::TakeCommitted() {
  std::vector<uint64_t> committed = std::move(sequences_);
  sequences_.clear();
  first_topic_.clear();
  open_ = false;
  return committed;
}

void TransactionBatch::Aborted() {
  sequences_.clear();
  first_topic_.clear();
  open_ = false;
}

}  // namespace outboxd
