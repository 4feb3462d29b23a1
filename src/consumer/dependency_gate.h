// DependencyGate: the inbox's causal deferral. A record whose
// outbox.depends-on ids are not all applied yet waits; it blocks only its
// own partition (later records of that partition queue behind it, in
// memory, and the partition is paused while its queue is long); other
// partitions go on. After `dependency_wait` the record is dead-lettered or
// applied anyway (MissingDependencyPolicy).
//
// Pure logic: what the gate needs from the world (whether ids are applied,
// applying or dead-lettering a record, pausing a partition) it asks of its
// Host, and it is given the time. So every rule is a unit test.
//
// Threading: not thread-safe; one thread (the inbox's Run thread).
#ifndef OUTBOXD_CONSUMER_DEPENDENCY_GATE_H_
#define OUTBOXD_CONSUMER_DEPENDENCY_GATE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "consumer/inbox.h"
#include "kafka/group_consumer.h"

namespace outboxd {

class DependencyGate {
 public:
  struct Options {
    absl::Duration dependency_wait = absl::Seconds(30);
    MissingDependencyPolicy on_missing_dependency =
        MissingDependencyPolicy::kDeadLetter;
    // Records queued per partition before it is paused; resumed below half.
    size_t max_deferred_per_partition = 10000;
    // How often the heads of the queues are re-checked when nothing was
    // applied in between (NoteProgress re-checks at once).
    absl::Duration recheck_interval = absl::Milliseconds(50);
  };

  // The gate's world. Errors returned by it are returned by the gate's
  // calls as they are (the record stays where it was).
  class Host {
   public:
    virtual ~Host() = default;
    // Whether every id in `ids` (not empty) is applied.
    virtual absl::StatusOr<bool> DependenciesApplied(
        const std::vector<std::string>& ids) = 0;
    // The record may be applied now (retries and failures are the host's).
    virtual absl::Status Apply(const InboxRecord& record) = 0;
    // The record waited `dependency_wait` in vain (kDeadLetter policy).
    virtual absl::Status DeadLetter(const InboxRecord& record,
                                    const std::string& why) = 0;
    virtual void Pause(const TopicPartition& tp) = 0;
    virtual void Resume(const TopicPartition& tp) = 0;
  };

  // `host` and `stats` must outlive the gate; the gate counts
  // stats->deferred and stats->applied_without_dependencies.
  DependencyGate(const Options& options, Host* host, InboxStats* stats);
  DependencyGate(const DependencyGate&) = delete;
  DependencyGate& operator=(const DependencyGate&) = delete;

  // `tp` is ours from `next_offset` on (nullopt: wherever the consumer
  // starts). Forgets what it knew of `tp` before.
  void Assign(const TopicPartition& tp, std::optional<int64_t> next_offset);
  // `tp` is no longer ours: its queue is dropped (its next owner resumes
  // from the stored offset, so nothing is lost).
  void Revoke(const TopicPartition& tp);

  // A consumed record: applied now, queued, or (not ours, or an offset
  // already taken, as after a resume) ignored.
  absl::Status Offer(InboxRecord record, absl::Time now);

  // Re-checks the heads of the queues (at most every recheck_interval
  // unless NoteProgress was called): applies what may go, dead-letters or
  // applies what waited too long, resumes partitions whose queue got short.
  // Stops early when `stop` becomes true.
  absl::Status ServeWaiting(absl::Time now, const std::atomic<bool>& stop);

  // Something was applied or dead-lettered: waiting records may go now.
  void NoteProgress() { progress_ = true; }

  // Records queued over all partitions.
  size_t waiting() const;

 private:
  // A record waiting for its dependencies, or queued behind one that is.
  struct Deferred {
    InboxRecord record;
    std::optional<absl::Time> waiting_since;  // set once it is the head
  };
  struct PartitionState {
    std::deque<Deferred> queue;
    bool paused = false;
    int64_t next_expected = -1;  // offset of the next record to take
  };

  absl::StatusOr<bool> Ready(const InboxRecord& record);
  // `record` waited dependency_wait in vain: dead-letter or apply it.
  absl::Status GiveUpWaiting(const InboxRecord& record);

  const Options options_;
  Host* const host_;
  InboxStats* const stats_;
  std::map<TopicPartition, PartitionState> partitions_;
  absl::Time next_check_ = absl::InfinitePast();
  bool progress_ = false;
};

}  // namespace outboxd

#endif  // OUTBOXD_CONSUMER_DEPENDENCY_GATE_H_
