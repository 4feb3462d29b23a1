// ReservedHeaderLog: reports the reserved header names (id, eventType,
// outbox.*, and with --cloudevents the headers it sets) that an event's
// `headers` column tried to set and that the mapper (or ToCloudEvent)
// dropped (OutboxEvent::dropped_headers): each one is counted in
// outboxd_reserved_headers_dropped_total and logged as a warning, at most
// one line per interval (with the number of events it did not name).
//
// Not thread-safe: one per stream of a pipeline, used from the pipeline's
// thread.
#ifndef OUTBOXD_PIPELINE_RESERVED_HEADER_LOG_H_
#define OUTBOXD_PIPELINE_RESERVED_HEADER_LOG_H_

#include <cstdint>
#include <string>
#include <utility>

#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "metrics/outboxd_metrics.h"
#include "outbox/event.h"
#include "spdlog/spdlog.h"

namespace outboxd {

class ReservedHeaderLog {
 public:
  // `metrics` may be null (metrics off); it must outlive this object.
  // `log_prefix` starts the log lines (a source's "[name] ", or "").
  explicit ReservedHeaderLog(metrics::SourceMetrics* metrics,
                             absl::Duration interval = absl::Seconds(10),
                             std::string log_prefix = "")
      : metrics_(metrics),
        interval_(interval),
        log_prefix_(std::move(log_prefix)) {}

  // `where` names the event's origin for the log line (e.g. "at 0/1A2B#0"
  // or "row seq 42").
  void Note(const OutboxEvent& event, const std::string& where) {
    if (event.dropped_headers.empty()) return;
    if (metrics_ != nullptr) {
      metrics_->reserved_headers_dropped->Increment(
          static_cast<double>(event.dropped_headers.size()));
    }
    absl::Time now = absl::Now();
    if (now - last_warning_ < interval_) {
      ++suppressed_;
      return;
    }
    spdlog::warn(
        "{}event {} {}: reserved header(s) {} in its headers column dropped "
        "(only outboxd sets id, eventType, outbox.* and, with --cloudevents, "
        "its ce_ attributes and content-type); the event is "
        "published without them{}",
        log_prefix_, event.id, where,
        absl::StrJoin(event.dropped_headers, ", "),
        suppressed_ > 0
            ? absl::StrCat(" (", suppressed_,
                           " more events with reserved headers since the "
                           "last warning)")
            : std::string());
    last_warning_ = now;
    suppressed_ = 0;
  }

 private:
  metrics::SourceMetrics* metrics_;
  absl::Duration interval_;
  const std::string log_prefix_;
  absl::Time last_warning_ = absl::InfinitePast();
  uint64_t suppressed_ = 0;
};

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_RESERVED_HEADER_LOG_H_
