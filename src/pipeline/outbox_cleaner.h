// OutboxCleaner: --cleanup-after=DURATION (cleanup strategy 3). On a thread
// of its own with its own connection, deletes outbox rows that are older
// than the duration AND that a republish after a lost slot would never need
// (pipeline/republisher.h), i.e. rows the publisher state
// (pg/publisher_state.h, outbox.publisher_state) proves acknowledged:
//   xmin older than the recorded xmin horizon (committed at or before the
//   recorded position, which Kafka acknowledged), AND
//   created_at < recorded commit time - republish margin.
// That is exactly the complement of what a republish selects. The slot's
// own confirmed_flush_lsn is not trusted: a re-created slot starts past
// events that were never published. Nothing is deleted while the record is
// missing or incomplete. Deleting a published row never affects the
// stream: outboxd reads events from the WAL, not from the table.
//
// Threading: Start() and the destructor from one thread; the work runs on
// the cleaner's thread. `metrics` (may be null) must outlive the cleaner.
#ifndef OUTBOXD_PIPELINE_OUTBOX_CLEANER_H_
#define OUTBOXD_PIPELINE_OUTBOX_CLEANER_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "metrics/outboxd_metrics.h"
#include "pg/replication_setup.h"

namespace outboxd {

struct OutboxCleanerOptions {
  std::string conninfo;
  QualifiedName table;
  std::string slot;
  std::string id_column = "id";
  std::string created_at_column = "created_at";
  absl::Duration older_than = absl::Hours(1);
  // --republish-margin: rows this much older than the recorded commit time
  // are kept too.
  absl::Duration republish_margin = absl::Hours(1);
  // Time between rounds; 0: older_than / 4, clamped to [1s, 1min].
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

  // Rows deleted so far.
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

#endif  // OUTBOXD_PIPELINE_OUTBOX_CLEANER_H_
