#include "pipeline/stage_metrics.h"

#include <algorithm>
#include <functional>
#include <memory>

#include "common/logging.h"

namespace outboxd {
namespace {

double AgeSeconds(int64_t now_ms, int64_t commit_ms) {
  if (commit_ms <= 0) return 0;  // no event yet
  return static_cast<double>(std::max<int64_t>(now_ms - commit_ms, 0)) / 1000.0;
}

}  // namespace

std::function<void(const ProducerStats&)> ProducerStatsToMetrics(
    metrics::OutboxdMetrics& metrics) {
  metrics::OutboxdMetrics* m = &metrics;
  // Shared: a std::function is copyable, its totals are one.
  auto counters = std::make_shared<ProducerCounters>();
  return [m, counters](const ProducerStats& stats) {
    m->kafka_brokers_up->Set(stats.brokers_up);
    ProducerCounters::Increment sent = counters->Advance(stats);
    m->kafka_requests->Increment(static_cast<double>(sent.produce_requests));
    m->kafka_records_sent->Increment(static_cast<double>(sent.records_sent));
  };
}

void StageLag::SetLag(metrics::Stage stage, BusyStage busy, bool holds_all,
                      int64_t newest_ms, int64_t now_ms) {
  Busy& b = busy_[busy];
  if (holds_all) {
    b.active = false;
    m_.StageLag(stage).Set(0);
    return;
  }
  // Not active: the events it lacks were received before the last Update
  // that saw it hold everything, i.e. never (a fresh start).
  const int64_t since = b.active ? b.since_ms : received_.commit_ms;
  m_.StageLag(stage).Set(AgeSeconds(now_ms, std::max(newest_ms, since)));
}

void StageLag::Update(absl::Time now, size_t in_flight, bool pending,
                      SourcePosition confirmed) {
  const int64_t now_ms = absl::ToUnixMillis(now);
  while (!commits_.empty() && commits_.front().position <= confirmed) {
    confirmed_ms_ = commits_.front().commit_ms;
    commits_.pop_front();
  }
  using metrics::Stage;
  m_.StageLsn(Stage::kWal).Set(static_cast<double>(wal_end_));
  m_.StageLsn(Stage::kReceived).Set(static_cast<double>(received_.lsn));
  m_.StageLsn(Stage::kProduced).Set(static_cast<double>(produced_.lsn));
  m_.StageLsn(Stage::kAcknowledged).Set(static_cast<double>(acknowledged_.lsn));
  m_.StageLsn(Stage::kConfirmed).Set(static_cast<double>(confirmed.value()));
  m_.StageLag(Stage::kReceived)
      .Set(source_caught_up_ ? 0 : AgeSeconds(now_ms, received_.commit_ms));
  SetLag(Stage::kProduced, kProduced, !pending, produced_.commit_ms, now_ms);
  SetLag(Stage::kAcknowledged, kAcknowledged, in_flight == 0,
         acknowledged_.commit_ms, now_ms);
  SetLag(Stage::kConfirmed, kConfirmed, in_flight == 0 && commits_.empty(),
         confirmed_ms_, now_ms);
}

void StallAlarm::Update(absl::Time now, size_t in_flight,
                        metrics::StallReason reason) {
  if (timeout_ <= absl::ZeroDuration()) return;
  if (in_flight == 0 || acknowledged_ != seen_acknowledged_ ||
      progress_ == absl::InfinitePast()) {
    seen_acknowledged_ = acknowledged_;
    progress_ = now;
  }
  const bool stalled = in_flight > 0 && now - progress_ >= timeout_;
  if (stalled) {
    if (stalled_ == reason) return;
    if (stalled_.has_value()) {
      m_.Stalled(*stalled_).Set(0);
    } else {
      spdlog::warn(
          "{}stalled: {} events pending ({}) and nothing acknowledged by "
          "Kafka for {}; /readyz fails until it moves",
          log_prefix_, in_flight,
          metrics::kStallReasonNames[static_cast<int>(reason)],
          absl::FormatDuration(now - progress_));
    }
    m_.Stalled(reason).Set(1);
    stalled_ = reason;
    return;
  }
  if (stalled_.has_value()) {
    m_.Stalled(*stalled_).Set(0);
    stalled_.reset();
    spdlog::info("{}no longer stalled: {} events in flight", log_prefix_,
                 in_flight);
  }
}

}  // namespace outboxd
