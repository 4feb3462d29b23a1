#include "pipeline/acknowledged_ids.h"

#include "absl/hash/hash.h"

namespace outboxd {

uint64_t AcknowledgedIds::Hash(absl::string_view id) {
  return absl::HashOf(id);
}

void AcknowledgedIds::Add(uint64_t id_hash, absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (buckets_.empty() || now >= buckets_.back().start + bucket_) {
    buckets_.push_back(Bucket{now, {}});
  }
  buckets_.back().ids.insert(id_hash);
}

bool AcknowledgedIds::ContainsLocked(uint64_t id_hash) const {
  for (const Bucket& b : buckets_) {
    if (b.ids.contains(id_hash)) return true;
  }
  return false;
}

bool AcknowledgedIds::Contains(uint64_t id_hash) const {
  absl::ReaderMutexLock lock(&mu_);
  return ContainsLocked(id_hash);
}

std::vector<bool> AcknowledgedIds::ContainsEach(
    const std::vector<uint64_t>& hashes) const {
  std::vector<bool> found(hashes.size());
  absl::ReaderMutexLock lock(&mu_);
  // Ids asked in the order of their rows' times were added in about that
  // order: each is looked for first in the bucket of the previous hit,
  // then outward from it (one probe for most, instead of one per bucket
  // older than its own).
  const size_t n = buckets_.size();
  size_t last = 0;
  for (size_t i = 0; i < hashes.size(); ++i) {
    for (size_t d = 0; d < 2 * n; ++d) {
      // last, last + 1, last - 1, last + 2, ... (an index below 0 wraps
      // to a huge one and is skipped).
      const size_t k = d % 2 == 1 ? last + (d + 1) / 2 : last - d / 2;
      if (k < n && buckets_[k].ids.contains(hashes[i])) {
        found[i] = true;
        last = k;
        break;
      }
    }
  }
  return found;
}

void AcknowledgedIds::PruneBefore(absl::Time local) {
  absl::MutexLock lock(&mu_);
  // A bucket holds the hashes added before the next bucket's start.
  while (buckets_.size() > 1 && buckets_[1].start <= local) {
    buckets_.pop_front();
  }
}

size_t AcknowledgedIds::size() const {
  absl::ReaderMutexLock lock(&mu_);
  size_t n = 0;
  for (const Bucket& b : buckets_) n += b.ids.size();
  return n;
}

void AcknowledgedIds::SetStreaming(absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (streaming_since_ == absl::InfiniteFuture()) streaming_since_ = now;
}

absl::Time AcknowledgedIds::streaming_since() const {
  absl::ReaderMutexLock lock(&mu_);
  return streaming_since_;
}

}  // namespace outboxd
