// OutboxCleaner: --cleanup-after=DURATION (cleanup strategy 3). On a thread
// of its own with its own connection, deletes outbox rows that are older
// than the duration AND whose transaction the slot has confirmed.
//
// "Confirmed" without knowing a row's commit LSN: each round records a
// sample (X, W): X the oldest transaction id still running
// (pg_snapshot_xmin of a fresh snapshot), then W = pg_current_wal_lsn().
// Every transaction with an id below X had finished when W was read, so
// its commit record lies before W. Once the slot's confirmed_flush_lsn
// reaches W, rows with xmin older than X are published (and acknowledged
// by Kafka); only those, and only if created_at < now() - DURATION, are
// deleted, in batches. Deleting a published row never affects the stream:
// outboxd reads events from the WAL, not from the table.
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
