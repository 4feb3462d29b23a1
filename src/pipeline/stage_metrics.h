// Lag by stage and the stall alarm of one source of the Publisher (README
// "Lag by stage" and "Stall alarm"): outboxd_stage_lsn,
// outboxd_stage_lag_seconds and outboxd_stalled (metrics/outboxd_metrics.h).
//
// The Publisher tells StageLag where each event got to (stores only, no
// clock read, no lookup: per event) and calls Update once per wakeup of its
// loop with that wakeup's clock reading; Update turns it into the gauges.
//
// The lag of a stage is 0 when the stage holds every event received;
// otherwise now minus the commit time of the newest event that reached the
// stage, or, when that is older, of the first event received since the
// stage last held everything (so that an event after an idle hour does not
// show an hour of lag). "received" holds everything when the source had
// nothing more to hand over at its last read. "wal" has a position only
// (the server's walEnd: its own lag is 0 by definition).
//
// StallAlarm: events are pending (received and not acknowledged) and no
// delivery report said OK for `timeout`: outboxd_stalled{reason} is 1
// (/readyz fails), one warning is logged, and one line more when it clears.
//
// Threading: the Publisher's thread only (the gauges are atomics).
#ifndef OUTBOXD_PIPELINE_STAGE_METRICS_H_
#define OUTBOXD_PIPELINE_STAGE_METRICS_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <utility>

#include "absl/time/time.h"
#include "kafka/producer_stats.h"
#include "metrics/outboxd_metrics.h"
#include "sources/event_source.h"

namespace outboxd {

// A ProducerOptions::on_stats that sets outboxd_kafka_brokers_up and adds
// what was sent since the last statistics to outboxd_kafka_requests_total
// and outboxd_kafka_records_sent_total. `metrics` must outlive it.
std::function<void(const ProducerStats&)> ProducerStatsToMetrics(
    metrics::OutboxdMetrics& metrics);

class StageLag {
 public:
  // `metrics` must outlive this object.
  explicit StageLag(metrics::SourceMetrics& metrics) : m_(metrics) {}

  // An event (or invalid event) was handed over by the source; `lsn` its
  // commit LSN's value (CDC), `commit_ms` its commit time (unix ms).
  void Received(uint64_t lsn, int64_t commit_ms) {
    received_ = {lsn, commit_ms};
    source_caught_up_ = false;
    events_since_commit_ = true;
    for (Busy& b : busy_) {
      if (!b.active) b = {true, commit_ms};
    }
  }
  // The source had nothing more to hand over.
  void SourceCaughtUp() { source_caught_up_ = true; }
  // The source's transaction ended at `position`.
  void Committed(SourcePosition position) {
    if (!events_since_commit_) return;  // nothing to confirm in it
    commits_.push_back({position, received_.commit_ms});
    events_since_commit_ = false;
  }
  // The server's position (keepalive or XLogData walEnd).
  void ServerWalEnd(uint64_t lsn) {
    if (lsn > wal_end_) wal_end_ = lsn;
  }
  void Produced(uint64_t lsn, int64_t commit_ms) {
    produced_ = {lsn, commit_ms};
  }
  // A delivery report without error (acknowledgements come in any order).
  void Acknowledged(uint64_t lsn, int64_t commit_ms) {
    if (lsn > acknowledged_.lsn) acknowledged_.lsn = lsn;
    if (commit_ms > acknowledged_.commit_ms) {
      acknowledged_.commit_ms = commit_ms;
    }
  }
  // The stream starts over (a new slot): positions before it mean nothing.
  void Restart() {
    commits_.clear();
    wal_end_ = 0;
  }

  // Once per wakeup: `in_flight` events received and not acknowledged,
  // `pending` whether one waits to be produced, `confirmed` the position
  // given to the source as durable.
  void Update(absl::Time now, size_t in_flight, bool pending,
              SourcePosition confirmed);

 private:
  struct At {
    uint64_t lsn = 0;
    int64_t commit_ms = 0;
  };
  // Since when (commit time of its first event) a stage has not held
  // everything received.
  struct Busy {
    bool active = false;
    int64_t since_ms = 0;
  };
  struct Commit {
    SourcePosition position;
    int64_t commit_ms;  // of the transaction's newest event
  };
  enum BusyStage { kProduced, kAcknowledged, kConfirmed, kBusyStages };

  void SetLag(metrics::Stage stage, BusyStage busy, bool holds_all,
              int64_t newest_ms, int64_t now_ms);

  metrics::SourceMetrics& m_;
  At received_;
  At produced_;
  At acknowledged_;
  int64_t confirmed_ms_ = 0;
  uint64_t wal_end_ = 0;
  bool source_caught_up_ = true;
  Busy busy_[kBusyStages];
  // Transactions with events, not yet confirmed, oldest first.
  std::deque<Commit> commits_;
  bool events_since_commit_ = false;
};

class StallAlarm {
 public:
  // `timeout` zero: never stalled. `metrics` must outlive this object.
  // `log_prefix` starts its log lines (a source's "[name] ", or "").
  StallAlarm(metrics::SourceMetrics& metrics, absl::Duration timeout,
             std::string log_prefix = "")
      : m_(metrics), timeout_(timeout), log_prefix_(std::move(log_prefix)) {}

  // A delivery report without error.
  void Acknowledged() { ++acknowledged_; }

  // Once per wakeup: `in_flight` events received and not acknowledged;
  // `reason` why they wait. Sets the gauge and logs when the state changes.
  void Update(absl::Time now, size_t in_flight, metrics::StallReason reason);

  // When Update must run next to notice a stall (infinite when none can
  // start): the loop sleeps no longer than this.
  absl::Time Deadline(size_t in_flight) const {
    if (timeout_ <= absl::ZeroDuration() || in_flight == 0 ||
        stalled_.has_value()) {
      return absl::InfiniteFuture();
    }
    return progress_ + timeout_;
  }
  bool stalled() const { return stalled_.has_value(); }

 private:
  metrics::SourceMetrics& m_;
  const absl::Duration timeout_;
  const std::string log_prefix_;
  uint64_t acknowledged_ = 0;
  uint64_t seen_acknowledged_ = 0;
  // The last wakeup with nothing pending or with a new acknowledgement.
  absl::Time progress_ = absl::InfinitePast();
  std::optional<metrics::StallReason> stalled_;
};

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_STAGE_METRICS_H_
