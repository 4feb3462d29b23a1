// OutboxCleaner: --cleanup-after=DURATION (cleanup strategy 3). On a thread
// of its own, deletes outbox rows that are older than the duration AND that
// a republish after a lost slot would never need (pipeline/republisher.h),
// i.e. rows the publisher state (pg/publisher_state.h,
// outbox.publisher_state) proves acknowledged:
//   xmin older than the recorded xmin horizon (committed at or before the
//   recorded position, which Kafka acknowledged), AND
//   created_at < recorded commit time - republish margin, AND
//   (with a reconciler) created_at before what it has judged.
// That is exactly the complement of what a republish selects. The slot's
// own confirmed_flush_lsn is not trusted: a re-created slot starts past
// events that were never published. Nothing is deleted while the record is
// missing or incomplete. Deleting a published row never affects the
// stream: outboxd reads events from the WAL, not from the table.
//
// One cleaner serves every (database, table) target in turn, each with a
// connection of its own and the record of its own slot: several tables or
// databases (--databases) cost one thread, not one each. A target that
// fails (its database down) is logged and retried next round; the others
// go on.
//
// Threading: Start() and the destructor from one thread; the work runs on
// the cleaner's thread. `metrics` (may be null) must outlive the cleaner.
#ifndef OUTBOXD_UPKEEP_OUTBOX_CLEANER_H_
#define OUTBOXD_UPKEEP_OUTBOX_CLEANER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "metrics/outboxd_metrics.h"
#include "pg/replication_setup.h"

namespace outboxd {

// One table to clean, in one database, behind one slot's record.
struct CleanupTarget {
  std::string conninfo;
  QualifiedName table;
  std::string slot;
  // Prefix of its log lines ("[name] "), the stream's name with several
  // sources; "" with one.
  std::string name;
  // The reconciler's judged_before_unix_us() (pipeline/reconciler.h): no
  // row created at or after it is deleted, INT64_MIN: none at all; empty:
  // no reconciler.
  std::function<int64_t()> judged_before;
};

struct OutboxCleanerOptions {
  std::vector<CleanupTarget> targets;
  std::string id_column = "id";
  std::string created_at_column = "created_at";
  absl::Duration older_than = absl::Hours(1);
  // --republish-margin: rows this much older than the recorded commit time
  // are kept too.
  absl::Duration republish_margin = absl::Hours(1);
  // Time between rounds (a round visits every target); 0: older_than / 4,
  // clamped to [1s, 1min].
  absl::Duration interval = absl::ZeroDuration();
  int batch_size = 10000;
  metrics::OutboxdMetrics* metrics = nullptr;
};

class OutboxCleaner {
 public:
  static std::unique_ptr<OutboxCleaner> Start(OutboxCleanerOptions options);
  ~OutboxCleaner();  // stops and joins (an ongoing DELETE finishes first)
  OutboxCleaner(const OutboxCleaner&) = delete;
  OutboxCleaner& operator=(const OutboxCleaner&) = delete;

  // Rows deleted so far, in every target.
  uint64_t deleted() const { return deleted_.load(); }

 private:
  explicit OutboxCleaner(OutboxCleanerOptions options)
      : options_(std::move(options)) {}
  void Run();

  const OutboxCleanerOptions options_;
  absl::Notification stop_;
  std::atomic<uint64_t> deleted_{0};
  std::thread thread_;
};

}  // namespace outboxd

#endif  // OUTBOXD_UPKEEP_OUTBOX_CLEANER_H_
