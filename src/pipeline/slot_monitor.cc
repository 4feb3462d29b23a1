#include "pipeline/slot_monitor.h"

#include <utility>

#include "absl/strings/numbers.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "pg/connection.h"

namespace outboxd {
namespace {

// One query per round; the connection is kept between rounds.
absl::StatusOr<SlotSample> ReadSlot(PgConnection& conn,
                                    const std::string& slot) {
  ASSIGN_OR_RETURN(
      PgResult r,
      conn.ExecParams(
          "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)"
          "::bigint::text, wal_status FROM pg_replication_slots "
          "WHERE slot_name = $1",
          {slot}));
  SlotSample sample;
  if (PQntuples(r.get()) == 0) return sample;
  sample.exists = true;
  if (!PQgetisnull(r.get(), 0, 0)) {
    int64_t bytes = 0;
    if (absl::SimpleAtoi(PQgetvalue(r.get(), 0, 0), &bytes)) {
      sample.retained_bytes = bytes;
    }
  }
  if (!PQgetisnull(r.get(), 0, 1))
    sample.wal_status = PQgetvalue(r.get(), 0, 1);
  return sample;
}

}  // namespace

void ApplySlotSample(const SlotSample& sample, metrics::OutboxdMetrics& m) {
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

std::unique_ptr<SlotMonitor> SlotMonitor::Start(
    SlotMonitorOptions options, metrics::OutboxdMetrics& metrics) {
  std::unique_ptr<SlotMonitor> monitor(
      new SlotMonitor(std::move(options), metrics));
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
  do {
    absl::StatusOr<SlotSample> sample = [&]() -> absl::StatusOr<SlotSample> {
      if (conn == nullptr) {
        ASSIGN_OR_RETURN(conn,
                         PgConnection::Connect(options_.conninfo,
                                               PgConnection::Mode::kNormal));
      }
      return ReadSlot(*conn, options_.slot);
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
    ApplySlotSample(*sample, m_);
    ++rounds_;
  } while (!stop_.WaitForNotificationWithTimeout(options_.interval));
}

}  // namespace outboxd
