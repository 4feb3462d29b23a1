// AcknowledgedIds: the event ids one stream acknowledged since outboxd
// started, as 64-bit hashes, for the reconciler (pipeline/reconciler.h) to
// tell a row that was published from one that never was.
//
// Acknowledged here means: the record's delivery report said OK (the
// record of the event, or its dead-letter record), the delivery mode
// skipped the event as already in Kafka, or a republish after a lost slot
// (pipeline/republisher.h) had it acknowledged. A hash collision can only
// hide a missing row, never invent one.
//
// Memory: hashes are kept in buckets by the local time they were added;
// the reconciler drops the buckets older than the window it may still
// judge (PruneBefore), so the set holds about rate x (2 x margin +
// interval) hashes, some 10 bytes each.
//
// SetStreaming(): called when the stream first streams; the reconciler only
// judges rows whose transaction began after it saw that (rows from before
// were the slot's to resend, and another process may have acknowledged
// them).
//
// Threading: thread-safe (one mutex): the Publisher's thread adds, the
// reconciler's thread reads and prunes.
#ifndef OUTBOXD_PIPELINE_ACKNOWLEDGED_IDS_H_
#define OUTBOXD_PIPELINE_ACKNOWLEDGED_IDS_H_

#include <cstdint>
#include <deque>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace outboxd {

class AcknowledgedIds {
 public:
  // The hash of an event id as both sides compute it.
  static uint64_t Hash(absl::string_view id);

  // `bucket`: the span of local time one bucket covers.
  explicit AcknowledgedIds(absl::Duration bucket = absl::Seconds(10))
      : bucket_(bucket) {}

  void Add(uint64_t id_hash, absl::Time now = absl::Now());
  bool Contains(uint64_t id_hash) const;
  // Contains() of each of `hashes`, under one lock; fastest when they come
  // in about the order they were added (rows in time order).
  std::vector<bool> ContainsEach(const std::vector<uint64_t>& hashes) const;
  // Drops the buckets whose every hash was added before `local`.
  void PruneBefore(absl::Time local);
  size_t size() const;

  // The stream streams (the first call sets it; later calls keep it).
  void SetStreaming(absl::Time now = absl::Now());
  // When the stream first streamed; InfiniteFuture before.
  absl::Time streaming_since() const;

 private:
  struct Bucket {
    absl::Time start;
    absl::flat_hash_set<uint64_t> ids;
  };
  bool ContainsLocked(uint64_t id_hash) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const absl::Duration bucket_;
  mutable absl::Mutex mu_;
  std::deque<Bucket> buckets_ ABSL_GUARDED_BY(mu_);  // oldest first
  absl::Time streaming_since_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
};

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_ACKNOWLEDGED_IDS_H_
