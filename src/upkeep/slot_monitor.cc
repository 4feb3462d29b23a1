#include "upkeep/slot_monitor.h"

#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "pg/connection.h"
#include "pg/replication_setup.h"

namespace outboxd {
namespace {

// One query per round for every slot; the connection is kept between
// rounds. `slots` is a text[] literal ("{a,b}").
absl::StatusOr<absl::flat_hash_map<std::string, SlotSample>> ReadSlots(
    PgConnection& conn, const std::string& slots) {
  // 17+: whether it is a failover slot, and whether a promoted standby
  // would have it: the primary's synchronized_standby_slots names a
  // physical slot that is active (a standby streams through it).
  const bool failover_columns =
      conn.server_version() >= kFailoverSlotServerVersion;
  ASSIGN_OR_RETURN(
      PgResult r,
      conn.ExecParams(
          absl::StrCat(
              "SELECT slot_name::text, pg_wal_lsn_diff(pg_current_wal_lsn(), "
              "restart_lsn)::bigint::text, wal_status, ",
              failover_columns
                  ? "failover::text, (failover AND EXISTS (SELECT 1 FROM "
                    "pg_replication_slots p WHERE p.slot_type = 'physical' "
                    "AND p.active AND p.slot_name = ANY(string_to_array("
                    "replace(coalesce(current_setting("
                    "'synchronized_standby_slots', true), ''), ' ', ''), "
                    "','))))::text "
                  : "NULL, NULL ",
              "FROM pg_replication_slots WHERE slot_name = ANY($1::text[])"),
          {slots}));
  absl::flat_hash_map<std::string, SlotSample> samples;
  for (int row = 0; row < PQntuples(r.get()); ++row) {
    SlotSample& sample = samples[PQgetvalue(r.get(), row, 0)];
    sample.exists = true;
    if (!PQgetisnull(r.get(), row, 1)) {
      int64_t bytes = 0;
      if (absl::SimpleAtoi(PQgetvalue(r.get(), row, 1), &bytes)) {
        sample.retained_bytes = bytes;
      }
    }
    if (!PQgetisnull(r.get(), row, 2)) {
      sample.wal_status = PQgetvalue(r.get(), row, 2);
    }
    if (!PQgetisnull(r.get(), row, 3)) {
      sample.failover = std::string(PQgetvalue(r.get(), row, 3)) == "true";
    }
    sample.failover_ready = std::string(PQgetvalue(r.get(), row, 4)) == "true";
  }
  return samples;
}

}  // namespace

bool NotReadyForFailover(const SlotSample& sample) {
  return sample.exists && sample.failover.value_or(false) &&
         !sample.failover_ready;
}

void ApplySlotSample(const SlotSample& sample, metrics::SourceMetrics& m) {
  m.slot_retained_wal_bytes->Set(
      sample.retained_bytes.has_value() && *sample.retained_bytes > 0
          ? static_cast<double>(*sample.retained_bytes)
          : 0.0);
  m.slot_failover_ready->Set(sample.exists && sample.failover_ready ? 1 : 0);
  for (int i = 0; i < metrics::kWalStatusCount; ++i) {
    m.slot_wal_status[i]->Set(
        sample.exists && sample.wal_status == metrics::kWalStatusNames[i] ? 1
                                                                          : 0);
  }
}

void ApplySlotSamples(
    const absl::flat_hash_map<std::string, SlotSample>& samples,
    const std::vector<WatchedSlot>& slots) {
  for (const WatchedSlot& w : slots) {
    auto it = samples.find(w.slot);
    ApplySlotSample(it != samples.end() ? it->second : SlotSample{},
                    *w.metrics);
  }
}

std::unique_ptr<SlotMonitor> SlotMonitor::Start(
    SlotMonitorOptions options, std::vector<WatchedSlot> slots) {
  std::unique_ptr<SlotMonitor> monitor(
      new SlotMonitor(std::move(options), std::move(slots)));
  SlotMonitor* raw = monitor.get();
  std::vector<std::string> names;
  for (const WatchedSlot& w : raw->slots_) names.push_back(w.slot);
  raw->array_ = absl::StrCat("{", absl::StrJoin(names, ","), "}");
  monitor->rounds_ = CatalogRounds::Start(
      {raw->options_.conninfo, raw->options_.interval,
       "slot metrics: cannot read pg_replication_slots",
       "slot metrics: reading pg_replication_slots again"},
      [raw](PgConnection& conn) { return raw->Round(conn); });
  return monitor;
}

absl::Status SlotMonitor::Round(PgConnection& conn) {
  ASSIGN_OR_RETURN(auto sample, ReadSlots(conn, array_));
  ApplySlotSamples(sample, slots_);
  for (const WatchedSlot& w : slots_) {
    auto it = sample.find(w.slot);
    if (it == sample.end()) continue;
    if (NotReadyForFailover(it->second) &&
        not_ready_warned_.insert(w.slot).second) {
      spdlog::warn(
          "slot {} is a failover slot but no standby keeps it in sync: the "
          "primary's synchronized_standby_slots names no active physical "
          "slot, so a promoted standby may lack the slot or have it behind "
          "what Kafka has (docs/failover.md); "
          "outboxd_slot_failover_ready is 0",
          w.slot);
    }
  }
  return absl::OkStatus();
}

}  // namespace outboxd
