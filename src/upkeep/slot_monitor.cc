#include "upkeep/slot_monitor.h"

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "pg/connection.h"

namespace outboxd {
namespace {

// One query per round for every slot; the connection is kept between
// rounds. `slots` is a text[] literal ("{a,b}").
absl::StatusOr<absl::flat_hash_map<std::string, SlotSample>> ReadSlots(
    PgConnection& conn, const std::string& slots) {
  ASSIGN_OR_RETURN(
      PgResult r,
      conn.ExecParams(
          "SELECT slot_name::text, pg_wal_lsn_diff(pg_current_wal_lsn(), "
          "restart_lsn)::bigint::text, wal_status FROM pg_replication_slots "
          "WHERE slot_name = ANY($1::text[])",
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
  }
  return samples;
}

}  // namespace

void ApplySlotSample(const SlotSample& sample, metrics::SourceMetrics& m) {
  m.slot_retained_wal_bytes->Set(
      sample.retained_bytes.has_value() && *sample.retained_bytes > 0
          ? static_cast<double>(*sample.retained_bytes)
          : 0.0);
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
  monitor->thread_ = std::thread([raw] { raw->Run(); });
  return monitor;
}

SlotMonitor::~SlotMonitor() {
  stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

void SlotMonitor::Run() {
  std::unique_ptr<PgConnection> conn;
  std::string failing;  // the cause logged last, until a round works
  std::vector<std::string> names;
  for (const WatchedSlot& w : slots_) names.push_back(w.slot);
  const std::string array = absl::StrCat("{", absl::StrJoin(names, ","), "}");
  using Samples = absl::flat_hash_map<std::string, SlotSample>;
  do {
    absl::StatusOr<Samples> sample = [&]() -> absl::StatusOr<Samples> {
      if (conn == nullptr) {
        ASSIGN_OR_RETURN(conn,
                         PgConnection::Connect(options_.conninfo,
                                               PgConnection::Mode::kNormal));
      }
      return ReadSlots(*conn, array);
    }();
    if (!sample.ok()) {
      // Not fatal for publishing: the gauges keep their last values.
      conn.reset();
      if (std::string cause(sample.status().message()); cause != failing) {
        spdlog::warn(
            "slot metrics: cannot read pg_replication_slots: {}; "
            "retrying every {}",
            cause, absl::FormatDuration(options_.interval));
        failing = std::move(cause);
      }
      ++rounds_;
      continue;
    }
    if (!failing.empty()) {
      spdlog::info("slot metrics: reading pg_replication_slots again");
      failing.clear();
    }
    ApplySlotSamples(*sample, slots_);
    ++rounds_;
  } while (!stop_.WaitForNotificationWithTimeout(options_.interval));
}

}  // namespace outboxd
