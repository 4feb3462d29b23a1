#include "pipeline/source_session.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace outboxd {
namespace {

// An isolated source is retried from --reconnect-backoff-max on, doubling
// up to this while the cause recurs.
constexpr absl::Duration kMaxFailureRetry = absl::Minutes(5);
// How often an isolated source looks again whether its reports are in.
constexpr absl::Duration kRecoverPollInterval = absl::Milliseconds(50);

}  // namespace

SourceSession::SourceSession(EventSource& source,
                             metrics::SourceMetrics& metrics,
                             const std::string& name,
                             const SessionOptions& options,
                             const RecordOptions& records)
    : source_(source),
      m_(metrics),
      log_prefix_(name.empty() ? std::string() : absl::StrCat("[", name, "] ")),
      options_(options),
      records_(records),
      backoff_(options.reconnect),
      failure_backoff_(ReconnectOptions{
          options.reconnect.max_backoff,
          std::max(kMaxFailureRetry, options.reconnect.max_backoff)}),
      coalescer_(options.coalesce, options.coalesce_min_rate),
      stages_(metrics),
      stall_(metrics, options.stall_timeout, log_prefix_),
      reserved_headers_(&metrics, absl::Seconds(10), log_prefix_) {}

absl::Status SourceSession::AttemptConnect(const SessionSteps& steps,
                                           const std::atomic<bool>& stop) {
  const absl::Time start = absl::Now();
  if (attempts_ == 0) down_since_ = start;
  absl::Status s = Connect(steps);
  if (s.ok()) {
    if (attempts_ > 0) {
      spdlog::info("{}connected after {} attempts in {}", log_prefix_,
                   attempts_ + 1,
                   absl::FormatDuration(absl::Now() - down_since_));
    }
    attempts_ = 0;
    last_cause_.clear();
    backoff_.Reset();
    return absl::OkStatus();
  }
  Disconnect();
  if (absl::IsCancelled(s) && stop.load()) return absl::OkStatus();
  if (!Reconnectable(s)) return s;
  ++attempts_;
  const absl::Duration give_up = options_.reconnect.give_up_after;
  if (give_up > absl::ZeroDuration() && absl::Now() - down_since_ > give_up) {
    return absl::UnavailableError(
        absl::StrCat(log_prefix_, s.message(), " (gave up after ",
                     absl::FormatDuration(give_up), ")"));
  }
  // One line per distinct cause, not one per attempt: a standby waits
  // quietly while the slot is active elsewhere.
  std::string cause(s.message());
  const std::optional<absl::Duration> retry_after = RetryAfter(s);
  const absl::Duration delay =
      retry_after.has_value() ? *retry_after : backoff_.Next();
  if (cause != last_cause_) {
    spdlog::info("{}cannot stream yet: {}; {}", log_prefix_, cause,
                 retry_after.has_value()
                     ? absl::StrCat("checking again every ",
                                    absl::FormatDuration(*retry_after))
                     : absl::StrCat("retrying with backoff up to ",
                                    absl::FormatDuration(
                                        options_.reconnect.max_backoff)));
    last_cause_ = cause;
  } else {
    spdlog::debug("{}attempt {}: {}; next in {}", log_prefix_, attempts_,
                  std::string(s.message()), absl::FormatDuration(delay));
  }
  retry_at_ = absl::Now() + delay;
  return absl::OkStatus();
}

absl::Status SourceSession::Connect(const SessionSteps& steps) {
  if (steps.before_connect) steps.before_connect();
  ConnectContext ctx;
  ctx.first = !connected_once_;
  ctx.durable = tracker_.Confirmable();
  ctx.drain_in_flight = steps.drain_in_flight;
  ASSIGN_OR_RETURN(ConnectResult r, source_.Connect(ctx));
  connected_ = true;
  readable = true;  // a new connection: read it before sleeping
  connected_once_ = true;
  if (r.restart_at.has_value()) {
    // Sequences go on: a late report of what is still in flight from the
    // old stream must not acknowledge an event of the new one. The refused
    // events are resent by the source from the restart position.
    refused.clear();
    retrying_alone.reset();
    tracker_ = tracker_.StartOver(*r.restart_at);
    stages_.Restart();
    if (steps.restarted) steps.restarted();
  }
  records_.SetSource(r.identity);
  // After the source's connection: only the owner of a CDC slot may fence
  // the others (a standby waiting for the slot must not take the
  // transactional id from the active instance).
  RETURN_IF_ERROR(steps.after_connect(r.identity, r.history));
  if (!connected_) {
    return absl::UnavailableError("source connection lost while connecting");
  }
  spdlog::info("{}{}", log_prefix_, r.ready_line);
  SetStreaming(true);
  return absl::OkStatus();
}

void SourceSession::Disconnect() {
  if (connected_) source_.Disconnect();
  SetStreaming(false);
}

absl::Status SourceSession::Finish(bool clean) {
  if (!connected_) return absl::OkStatus();
  connected_ = false;
  return source_.Finish(tracker_.Confirmable(), clean);
}

void SourceSession::SetStreaming(bool streaming) {
  connected_ = streaming;
  m_.streaming->Set(streaming ? 1 : 0);
  if (streaming && acknowledged_ != nullptr) acknowledged_->SetStreaming();
}

void SourceSession::ForgetOpenTransaction() {
  if (pending.has_value()) {
    // Never produced; it belongs to the open transaction, resent later.
    tracker_.Acknowledge(pending->sequence);
    pending.reset();
  }
  tracker_.AbandonOpenTransaction();
}

void SourceSession::StartOver() {
  m_.reconnects->Increment();
  ForgetOpenTransaction();
  retry_at_ = absl::InfinitePast();
  attempts_ = 0;
  backoff_.Reset();
}

void SourceSession::Rewind() {
  Disconnect();
  pending.reset();
  refused.clear();
  retrying_alone.reset();
  tracker_ = tracker_.StartOver(tracker_.Confirmable());
  stages_.Restart();
  StartOver();
}

void SourceSession::Isolate(const absl::Status& cause) {
  Disconnect();
  ForgetOpenTransaction();
  // Not retried: resent from the confirmed position when it recovers.
  for (Refused& r : refused) {
    tracker_.Fail(r.sequence, std::move(r.cause));
  }
  refused.clear();
  failed_ = true;
  m_.source_failed->Set(1);
  const std::string why(cause.message());
  if (why != last_failure_) failure_backoff_.Reset();
  const absl::Duration delay = failure_backoff_.Next();
  retry_at_ = absl::Now() + delay;
  if (why != last_failure_) {
    spdlog::error(
        "{}stopped: {}; the other sources go on; retrying from its "
        "confirmed position {} in {}, then less often (up to every {}) "
        "while this recurs",
        log_prefix_, cause.ToString(), DescribeConfirmed(),
        absl::FormatDuration(delay),
        absl::FormatDuration(
            std::max(kMaxFailureRetry, options_.reconnect.max_backoff)));
    last_failure_ = why;
  } else {
    spdlog::warn("{}stopped again: {}; next retry in {}", log_prefix_,
                 std::string(cause.message()), absl::FormatDuration(delay));
  }
}

bool SourceSession::Recover(absl::Time now) {
  if (tracker_.EventsInFlight() > 0) {
    retry_at_ = now + kRecoverPollInterval;
    return false;
  }
  tracker_ = Tracker(tracker_.Confirmable());
  retrying_alone.reset();
  failed_ = false;
  m_.source_failed->Set(0);
  spdlog::info("{}retrying after its failure, from {}", log_prefix_,
               DescribeConfirmed());
  return true;
}

void SourceSession::Track(const SourceRead& read) {
  if (std::holds_alternative<SourceBegin>(read.item)) {
    tracker_.BeginTransaction();
  } else if (auto* commit = std::get_if<SourceCommit>(&read.item)) {
    tracker_.CommitTransaction(commit->position);
    stages_.Committed(commit->position);
  }
  if (read.idle_position.has_value()) {
    tracker_.ObserveIdlePosition(*read.idle_position);
    stages_.ServerWalEnd(read.idle_position->value());
  }
  m_.events_in_flight->Set(static_cast<double>(tracker_.EventsInFlight()));
}

void SourceSession::UpdateStageMetrics(absl::Time now) {
  const size_t in_flight = tracker_.EventsInFlight();
  m_.events_in_flight->Set(static_cast<double>(in_flight));
  stages_.Update(now, in_flight, pending.has_value(), tracker_.Confirmable());
  metrics::StallReason reason = metrics::StallReason::kUnacknowledged;
  if (pending.has_value()) {
    reason = waiting_for_topic ? metrics::StallReason::kTopicMetadata
                               : metrics::StallReason::kQueueFull;
  }
  stall_.Update(now, in_flight, reason);
}

void SourceSession::Coalesce(absl::Time now, int items, int commits) {
  if (items == 0) return;
  coalescer_.Observe(now, commits);
  if (drained == Drained::kNothing &&
      coalescer_.Window() > absl::ZeroDuration()) {
    // Live traffic: the source just handed over a transaction and the
    // next one is likely moments away. Waiting a moment reads a few per
    // wakeup and hands them to the sink as one batch; delivery reports are
    // served at that wakeup too. The first transaction after a quiet spell
    // is read at once.
    drained = Drained::kCoalescing;
    read_after = now + coalescer_.Window();
  }
}

bool SourceSession::WorthReading(absl::Time now) const {
  if (drained == Drained::kCoalescing && !pending.has_value() &&
      now < read_after) {
    return false;  // woken for something else: not yet
  }
  // It had nothing, and the sleep said its descriptor has nothing new: the
  // wakeup was for another stream or the sink. Reading would only cost a
  // recvfrom that says EAGAIN (with many sources, most of them).
  return !(drained == Drained::kNothing && !readable && !pending.has_value() &&
           !source_.InputMayBeBuffered());
}

}  // namespace outboxd
