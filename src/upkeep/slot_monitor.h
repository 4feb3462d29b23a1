// SlotMonitor: the replication slots as PostgreSQL sees them, for
// outboxd_slot_retained_wal_bytes and outboxd_slot_wal_status{status}
// (README "Lag by stage"), and on PostgreSQL 17+
// outboxd_slot_failover_ready (docs/failover.md). Every `interval`, on a thread
// of its own with its own normal (not replication) connection, it reads
// pg_replication_slots: pg_current_wal_lsn() minus each slot's restart_lsn (the
// WAL the server keeps for it) and its wal_status. pg_replication_slots is
// cluster-wide: with several slots (--databases) one connection and one query
// per round serve them all, each slot's gauges in its source's metrics. The
// publisher's loop never waits for it. A failed query is logged once (and once
// more when it works again), the connection is opened again next round, and
// publishing goes on.
//
// Threading: Start() and the destructor from one thread; the queries run
// on the monitor's thread; the gauges are atomics. `metrics` must outlive
// the monitor (every slot's).
#ifndef OUTBOXD_UPKEEP_SLOT_MONITOR_H_
#define OUTBOXD_UPKEEP_SLOT_MONITOR_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "metrics/outboxd_metrics.h"
#include "pg/connection.h"
#include "upkeep/catalog_rounds.h"

namespace outboxd {

struct SlotMonitorOptions {
  // Any database of the cluster whose slots are watched.
  std::string conninfo;
  absl::Duration interval = absl::Seconds(10);  // --slot-metrics-interval
};

// A slot to watch and the metrics its gauges are in.
struct WatchedSlot {
  std::string slot;
  metrics::SourceMetrics* metrics = nullptr;
};

// One reading of pg_replication_slots for the slot.
struct SlotSample {
  bool exists = false;
  // pg_current_wal_lsn() - restart_lsn; unset when restart_lsn is NULL.
  std::optional<int64_t> retained_bytes;
  std::string wal_status;  // reserved, extended, unreserved, lost or ""
  // 17+ (nullopt before): a failover slot.
  std::optional<bool> failover;
  // A failover slot, and the primary's synchronized_standby_slots names an
  // active physical slot: a promoted standby would have it.
  bool failover_ready = false;
};

// A failover slot no standby keeps in sync (warned about once).
bool NotReadyForFailover(const SlotSample& sample);

// Sets the gauges from `sample`: the retained bytes (0 when unknown), 1 for
// its wal_status and 0 for the others (all 0 when the slot does not exist).
void ApplySlotSample(const SlotSample& sample, metrics::SourceMetrics& m);

// One round of several slots: each slot's sample, by slot name; a slot
// missing from `samples` does not exist (its gauges all 0).
void ApplySlotSamples(
    const absl::flat_hash_map<std::string, SlotSample>& samples,
    const std::vector<WatchedSlot>& slots);

class SlotMonitor {
 public:
  // Watches `slots` (slot names need no quoting: PostgreSQL allows
  // [a-z0-9_] only).
  static std::unique_ptr<SlotMonitor> Start(SlotMonitorOptions options,
                                            std::vector<WatchedSlot> slots);
  // Destroying it stops and joins (a running query finishes first).
  SlotMonitor(const SlotMonitor&) = delete;
  SlotMonitor& operator=(const SlotMonitor&) = delete;

  // Rounds done so far, whether they worked or not.
  uint64_t rounds() const { return rounds_->rounds(); }

 private:
  SlotMonitor(SlotMonitorOptions options, std::vector<WatchedSlot> slots)
      : options_(std::move(options)), slots_(std::move(slots)) {}
  absl::Status Round(PgConnection& conn);  // on the rounds' thread

  const SlotMonitorOptions options_;
  const std::vector<WatchedSlot> slots_;
  std::string array_;  // the slot names as a text[] literal
  absl::flat_hash_set<std::string> not_ready_warned_;  // warned once each
  std::unique_ptr<CatalogRounds> rounds_;              // last: stopped first
};

}  // namespace outboxd

#endif  // OUTBOXD_UPKEEP_SLOT_MONITOR_H_
