// SlotMonitor: the replication slot as PostgreSQL sees it, for
// outboxd_slot_retained_wal_bytes and outboxd_slot_wal_status{status}
// (README "Lag by stage"). Every `interval`, on a thread of its own with its
// own normal (not replication) connection, it reads pg_replication_slots:
// pg_current_wal_lsn() minus the slot's restart_lsn (the WAL the server
// keeps for it) and its wal_status. The publisher's loop never waits for
// it. A failed query is logged once (and once more when it works again),
// the connection is opened again next round, and publishing goes on.
//
// Threading: Start() and the destructor from one thread; the queries run
// on the monitor's thread; the gauges are atomics. `metrics` must outlive
// the monitor.
#ifndef OUTBOXD_PIPELINE_SLOT_MONITOR_H_
#define OUTBOXD_PIPELINE_SLOT_MONITOR_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "metrics/outboxd_metrics.h"

namespace outboxd {

struct SlotMonitorOptions {
  std::string conninfo;
  std::string slot;
  absl::Duration interval = absl::Seconds(10);  // --slot-metrics-interval
};

// One reading of pg_replication_slots for the slot.
struct SlotSample {
  bool exists = false;
  // pg_current_wal_lsn() - restart_lsn; unset when restart_lsn is NULL.
  std::optional<int64_t> retained_bytes;
  std::string wal_status;  // reserved, extended, unreserved, lost or ""
};

// Sets the gauges from `sample`: the retained bytes (0 when unknown), 1 for
// its wal_status and 0 for the others (all 0 when the slot does not exist).
void ApplySlotSample(const SlotSample& sample, metrics::OutboxdMetrics& m);

class SlotMonitor {
 public:
  static std::unique_ptr<SlotMonitor> Start(SlotMonitorOptions options,
                                            metrics::OutboxdMetrics& metrics);
  ~SlotMonitor();  // stops and joins (a running query finishes first)
  SlotMonitor(const SlotMonitor&) = delete;
  SlotMonitor& operator=(const SlotMonitor&) = delete;

  // Rounds done so far, whether they worked or not.
  uint64_t rounds() const { return rounds_.load(); }

 private:
  SlotMonitor(SlotMonitorOptions options, metrics::OutboxdMetrics& metrics)
      : options_(std::move(options)), m_(metrics) {}
  void Run();

  const SlotMonitorOptions options_;
  metrics::OutboxdMetrics& m_;
  absl::Notification stop_;
  std::atomic<uint64_t> rounds_{0};
  std::thread thread_;
};

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_SLOT_MONITOR_H_
