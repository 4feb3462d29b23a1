#include "pipeline/publisher.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <utility>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "pipeline/event_producer.h"
#include "pipeline/publisher_recovery.h"

namespace outboxd {
namespace {

using Drained = SourceSession::Drained;

constexpr absl::Duration kProgressLogInterval = absl::Seconds(10);
// The longest the loop sleeps without a stop descriptor, and the longest a
// source without a descriptor waits in Read (the stop flag is looked at
// after).
constexpr absl::Duration kIdleWait = absl::Seconds(1);
// How often a sink without an event descriptor is polled while
// acknowledgements are outstanding.
constexpr absl::Duration kBusyPollInterval = absl::Milliseconds(5);
// How often an event waiting for its topic's state is retried (room in
// the sink's queue wakes the loop through the sink's descriptor).
constexpr absl::Duration kPendingPollInterval = absl::Milliseconds(50);
// Items read per wakeup at most: during a backlog, delivery reports and the
// source's status updates are served every so many.
constexpr int kMaxReadsPerWakeup = 256;
// The sequence a record carries through the sink (its delivery report's
// opaque): the session's index in the top bits, the session's own
// sequence (AckTracker::AddEvent) below; 2^48 events per session and
// connection.
constexpr int kStreamShift = 48;
constexpr uint64_t kSequenceMask = (uint64_t{1} << kStreamShift) - 1;
constexpr size_t kMaxStreams = size_t{1} << (64 - kStreamShift);
// How long a connect waits for the sink to be usable (a broker's answer,
// the fixed topic's metadata) before streaming anyway.
constexpr absl::Duration kSinkReadyTimeout = absl::Seconds(2);

// The timeout for ppoll(): nullptr (none) for an infinite wait. A wait
// that ends within the same microsecond does not spin: at least 1 µs.
const timespec* PollTimeout(absl::Duration d) {
  thread_local timespec ts;
  if (d == absl::InfiniteDuration()) return nullptr;
  ts = absl::ToTimespec(std::max(d, absl::Microseconds(1)));
  return &ts;
}

}  // namespace

RunMetrics::RunMetrics(metrics::OutboxdMetrics* given) : metrics_(given) {
  if (metrics_ == nullptr) {
    own_ = std::make_unique<metrics::OutboxdMetrics>();
    metrics_ = own_.get();
  }
}

class Publisher::Impl final : public DeliveryHost {
 public:
  Impl(const PublisherOptions& options, std::vector<PublisherStream> streams,
       metrics::OutboxdMetrics& metrics, SinkFactory sink_factory)
      : options_(options),
        m_(metrics),
        sink_factory_(std::move(sink_factory)),
        delivery_(options.delivery == DeliveryGuarantee::kExactlyOnce
                      ? NewTransactionalDelivery(options.transactions, *this)
                      : NewAtLeastOnceDelivery(*this)),
        producer_(options.on_invalid, *delivery_, stats_,
                  /*keep_refused=*/options.delivery !=
                      DeliveryGuarantee::kExactlyOnce),
        recovery_(*delivery_, sessions_, sink_, [this] {
          producer_.ForgetInFlight();
          sink_.reset();
          return CreateSink("");
        }) {
    for (PublisherStream& spec : streams) {
      sessions_.push_back(std::make_unique<SourceSession>(
          *spec.source, metrics.ForSource(spec.name), spec.name,
          options.session, options.records));
      sessions_.back()->set_acknowledged(spec.acknowledged);
    }
    steps_.before_connect = [this] { WaitUntilSinkReady(); };
    steps_.after_connect = [this](const std::string& identity,
                                  const std::string& history) {
      if (sink_ == nullptr) RETURN_IF_ERROR(CreateSink(identity));
      return delivery_->Ready(
          identity, history, [this](const EventPosition& p) {
            return sessions_.front()->source().CheckCheckpoint(p);
          });
    };
    steps_.restarted = [this] { delivery_->SourceRestarted(); };
    steps_.drain_in_flight = [this] { return DrainInFlight(); };
  }

  absl::Status Run(const std::atomic<bool>& stop) {
    stop_ = &stop;
    recovery_.set_stop(stop);
    if (sessions_.empty()) return absl::InvalidArgumentError("no source");
    if (sessions_.size() > kMaxStreams) {
      return absl::InvalidArgumentError(
          absl::StrCat("at most ", kMaxStreams, " sources per process"));
    }
    RETURN_IF_ERROR(delivery_->CheckSources(sessions_.size()));
    absl::Status s = Loop();
    absl::Status end = Finish(s.ok());
    return s.ok() ? end : s;
  }

  const PipelineStats& stats() const { return stats_; }

  // --- DeliveryHost
  // -----------------------------------------------------------

  void Acknowledge(uint64_t tagged) override {
    SourceSession* st = SessionOf(tagged);
    if (st == nullptr) return;
    st->tracker().Acknowledge(tagged & kSequenceMask);
    ++stats_.events_acknowledged;
  }
  void Fail(uint64_t tagged, absl::Status cause) override {
    SourceSession* st = SessionOf(tagged);
    if (st == nullptr) return;
    spdlog::error("{}delivery of event #{} failed: {}", st->log_prefix(),
                  tagged & kSequenceMask, cause.ToString());
    st->tracker().Fail(tagged & kSequenceMask, std::move(cause));
  }
  absl::Status KeepSourcesAlive() override {
    absl::Status lost;
    for (const auto& st : sessions_) {
      if (!st->connected()) continue;
      absl::Status s = st->source().Durable(st->confirmable());
      if (absl::IsUnavailable(s)) {
        st->Disconnect();  // noticed again by the loop: it reconnects
        lost = s;
      } else if (!s.ok()) {
        return s;
      }
    }
    return lost;
  }

 private:
  // What one wakeup read.
  struct ReadCount {
    int items = 0;    // of any kind
    int commits = 0;  // transactions ended
  };

  // The session's part of the sequences the sink carries.
  uint64_t Tag(const SourceSession& st) const {
    for (size_t i = 0; i < sessions_.size(); ++i) {
      if (sessions_[i].get() == &st) return uint64_t{i} << kStreamShift;
    }
    return 0;
  }
  SourceSession* SessionOf(uint64_t tagged) const {
    const uint64_t index = tagged >> kStreamShift;
    if (index < sessions_.size()) return sessions_[index].get();
    spdlog::error("delivery report for unknown sequence {}", tagged);
    return nullptr;
  }
  bool AnyConnected() const {
    for (const auto& st : sessions_) {
      if (st->connected()) return true;
    }
    return false;
  }

  // --- the loop
  // ---------------------------------------------------------------

  // Every wakeup: the clock once, the sink's delivery reports, then each
  // session in turn (a due reconnect attempt, or the source's keep-alive
  // work and what it holds), then one sleep over every descriptor. A
  // session whose connection is lost (kUnavailable) reconnects on its own
  // backoff while the others go on; anything else stops the run.
  absl::Status Loop() {
    if (!delivery_->SinkNeedsIdentity()) RETURN_IF_ERROR(CreateSink(""));
    absl::Time next_progress = absl::Now() + kProgressLogInterval;
    while (!stop_->load(std::memory_order_relaxed)) {
      const absl::Time now = absl::Now();
      if (sink_ != nullptr) sink_->Poll(absl::ZeroDuration());
      RETURN_IF_ERROR(recovery_.ReplaceFailedSink());
      RETURN_IF_ERROR(recovery_.Rewound(delivery_->Check()));
      bool more = false;
      for (const std::unique_ptr<SourceSession>& st : sessions_) {
        if (stop_->load(std::memory_order_relaxed)) break;
        if (!st->failed() && !st->tracker().failure().ok()) {
          RETURN_IF_ERROR(
              recovery_.IsolateOrStop(*st, st->tracker().failure()));
        }
        if (!st->connected()) {
          if (now < st->retry_at()) continue;
          if (st->failed() && !st->Recover(now)) continue;
          absl::Status s = st->AttemptConnect(steps_, *stop_);
          if (!s.ok()) RETURN_IF_ERROR(recovery_.IsolateOrStop(*st, s));
          if (st->connected()) more = true;  // read it at once
          continue;
        }
        absl::Status s = Wakeup(*st, now, next_progress);
        if (!s.ok() && recovery_.FailedSinkReplaceable()) {
          RETURN_IF_ERROR(recovery_.ReplaceFailedSink());  // all rewound
          more = true;
          break;
        }
        if (s.ok()) {
          if (st->drained == Drained::kMore) more = true;
          continue;
        }
        if (!recovery_.Reconnectable(*st, s)) {
          RETURN_IF_ERROR(recovery_.IsolateOrStop(*st, s));
          continue;
        }
        RETURN_IF_ERROR(recovery_.Reconnect(*st, s));
        more = true;  // the first attempt is immediate
      }
      if (now >= next_progress) {
        LogProgress();
        next_progress = now + kProgressLogInterval;
      }
      if (more) continue;
      RETURN_IF_ERROR(Sleep(next_progress));
    }
    if (AnyConnected()) spdlog::info("stop requested");
    return absl::OkStatus();
  }

  // One wakeup of a connected session: its source's keep-alive work, the
  // Kafka transaction when due, its pending event, then what its source
  // holds.
  absl::Status Wakeup(SourceSession& st, absl::Time now,
                      absl::Time next_progress) {
    RETURN_IF_ERROR(st.source().Durable(st.confirmable()));
    RETURN_IF_ERROR(recovery_.Rewound(delivery_->Check()));
    if (!st.connected()) return absl::OkStatus();  // rewound
    if (delivery_->CommitDue(now, st.AtBoundary())) {
      ASSIGN_OR_RETURN(const bool rewound, recovery_.Commit());
      if (rewound) return absl::OkStatus();  // every session starts over
      if (!st.connected()) {
        return absl::UnavailableError(
            "source connection lost during a Kafka commit");
      }
    }
    st.UpdateStageMetrics(now);
    // Backpressure: the source is not read until the sink took the
    // pending event.
    if (st.pending.has_value()) {
      RETURN_IF_ERROR(producer_.TryProducePending(st, Tag(st)));
    }
    // Records the broker refused for good are retried alone, one at a
    // time: the source is not read meanwhile.
    if (!st.refused.empty() || st.retrying_alone.has_value()) {
      RETURN_IF_ERROR(producer_.RetryRefused(st, Tag(st)));
      if (!st.refused.empty() || st.retrying_alone.has_value()) {
        st.drained = Drained::kPending;
        return absl::OkStatus();
      }
    }
    if (!st.WorthReading(now)) return absl::OkStatus();
    st.drained = Drained::kPending;
    if (st.pending.has_value()) return absl::OkStatus();
    if (st.source().WaitFd() >= 0 || sessions_.size() > 1) {
      ReadCount count;
      ASSIGN_OR_RETURN(st.drained, ReadAvailable(st, now, count));
      st.Coalesce(now, count.items, count.commits);
    } else {
      ASSIGN_OR_RETURN(st.drained, ReadWaiting(st, now, next_progress));
    }
    return absl::OkStatus();
  }

  // Reads, without waiting, what a source with a descriptor holds: at most
  // kMaxReadsPerWakeup items, so that delivery reports, status updates and
  // the other sessions are served between them during a backlog.
  absl::StatusOr<Drained> ReadAvailable(SourceSession& st, absl::Time now,
                                        ReadCount& count) {
    for (int n = 0; n < kMaxReadsPerWakeup; ++n) {
      ASSIGN_OR_RETURN(SourceRead read, st.source().Read(absl::ZeroDuration()));
      if (read.nothing()) {
        st.stages().SourceCaughtUp();
        return Drained::kNothing;
      }
      if (!std::holds_alternative<std::monostate>(read.item)) ++count.items;
      if (std::holds_alternative<SourceCommit>(read.item)) ++count.commits;
      const bool awaiting = std::holds_alternative<AwaitDurable>(read.item);
      RETURN_IF_ERROR(OnRead(st, std::move(read)));
      if (awaiting) return Drained::kAwaiting;
      if (st.pending.has_value()) return Drained::kPending;
      if (delivery_->CommitDue(now, st.AtBoundary())) return Drained::kMore;
    }
    return Drained::kMore;
  }

  // One read of a source without a descriptor (the only source of the
  // run): it waits by itself (at most until the loop has work of its own).
  absl::StatusOr<Drained> ReadWaiting(SourceSession& st, absl::Time now,
                                      absl::Time next_progress) {
    absl::Duration wait = std::min(
        kIdleWait,
        std::max(WakeDeadline(next_progress) - now, absl::ZeroDuration()));
    if (st.tracker().EventsInFlight() > 0 && sink_->EventFd() < 0) {
      wait = std::min(wait, kBusyPollInterval);
    }
    ASSIGN_OR_RETURN(SourceRead read, st.source().Read(wait));
    if (read.nothing()) st.stages().SourceCaughtUp();
    const bool awaiting = std::holds_alternative<AwaitDurable>(read.item);
    RETURN_IF_ERROR(OnRead(st, std::move(read)));
    if (awaiting) return Drained::kAwaiting;
    if (st.pending.has_value()) return Drained::kPending;
    return Drained::kMore;  // the read waited already
  }

  // The earliest time the loop has work without any event: a source's
  // periodic work, a session's next reconnect attempt, the Kafka
  // transaction's deadline, the progress log, the stall alarm.
  absl::Time WakeDeadline(absl::Time next_progress) const {
    absl::Time until = std::min(next_progress, delivery_->Deadline());
    for (const auto& st : sessions_) {
      if (!st->connected()) {
        until = std::min(until, st->retry_at());
        continue;
      }
      until = std::min(until, st->source().NextDue());
      until =
          std::min(until, st->stall().Deadline(st->tracker().EventsInFlight()));
      if (st->drained == Drained::kCoalescing) {
        until = std::min(until, st->read_after);
      }
    }
    return until;
  }

  // Sleeps in one poll() until a source that has nothing now, the sink or
  // the stop descriptor has something, or WakeDeadline. No descriptor where
  // a timer has to do: a sink without one is polled every kBusyPollInterval
  // while records are in flight, the stop flag without one looked at every
  // kIdleWait, and an event waiting for a topic's state retried every
  // kPendingPollInterval. While every connected session is coalescing, the
  // sink is not waited on either: the next wakeup is moments away and
  // serves its reports.
  absl::Status Sleep(absl::Time next_progress) {
    fds_.clear();
    watched_.clear();
    bool in_flight = false;
    bool waiting_for_topic = false;
    size_t connected = 0;
    size_t coalescing = 0;
    for (const auto& st : sessions_) {
      if (st->tracker().EventsInFlight() > 0) in_flight = true;
      if (st->pending.has_value() && st->waiting_for_topic) {
        waiting_for_topic = true;
      }
      st->readable = true;  // unless the sleep below says otherwise
      if (!st->connected()) continue;
      ++connected;
      if (st->drained == Drained::kCoalescing) ++coalescing;
      if (st->drained != Drained::kNothing) continue;
      if (int fd = st->source().WaitFd(); fd >= 0) {
        fds_.push_back(pollfd{fd, POLLIN, 0});
        watched_.push_back(st.get());
      }
    }
    const bool all_coalescing = connected > 0 && coalescing == connected;
    const int sink_fd =
        sink_ != nullptr && !all_coalescing ? sink_->EventFd() : -1;
    for (int fd : {sink_fd, options_.stop_fd}) {
      if (fd >= 0) fds_.push_back(pollfd{fd, POLLIN, 0});
    }
    // The clock again: the wakeup's work (a Kafka commit, a connect) may
    // have taken a while, and a status update must not be late by that much.
    const absl::Time now = absl::Now();
    absl::Time until = WakeDeadline(next_progress);
    if (sink_fd < 0 && in_flight && !all_coalescing) {
      until = std::min(until, now + kBusyPollInterval);
    }
    if (waiting_for_topic) until = std::min(until, now + kPendingPollInterval);
    if (options_.stop_fd < 0) until = std::min(until, now + kIdleWait);
    ++stats_.waits;
    if (fds_.empty()) {
      // Nothing to poll() on: the sink waits (it serves what comes).
      const absl::Duration wait = std::max(until - now, absl::ZeroDuration());
      if (sink_ != nullptr) {
        sink_->Poll(wait);
      } else {
        absl::SleepFor(std::min(wait, kIdleWait));
      }
      return absl::OkStatus();
    }
    const int rc =
        ppoll(fds_.data(), fds_.size(), PollTimeout(until - now), nullptr);
    if (rc == 0) ++stats_.wait_timeouts;
    if (rc < 0 && errno != EINTR) {
      return absl::InternalError(absl::StrCat("poll: ", std::strerror(errno)));
    }
    if (rc >= 0) {
      // The sources' descriptors come first in fds_, in watched_ order.
      for (size_t i = 0; i < watched_.size(); ++i) {
        watched_[i]->readable = fds_[i].revents != 0;
      }
    }
    return absl::OkStatus();
  }

  absl::Status OnRead(SourceSession& st, SourceRead read) {
    if (auto* event = std::get_if<OutboxEvent>(&read.item)) {
      st.stages().Received(event->position.commit_lsn.value(),
                           event->commit_time_unix_ms);
      RETURN_IF_ERROR(producer_.Publish(st, Tag(st), std::move(*event)));
    } else if (auto* bad = std::get_if<InvalidEvent>(&read.item)) {
      st.stages().Received(bad->position.commit_lsn.value(),
                           bad->commit_time_unix_ms);
      RETURN_IF_ERROR(producer_.PublishInvalid(st, Tag(st), std::move(*bad)));
    }
    st.Track(read);
    return absl::OkStatus();
  }

  // One delivery report: its metrics, then the delivery mode's rule.
  void OnDelivery(uint64_t tagged, absl::Status status) {
    SourceSession* st = SessionOf(tagged);
    if (st == nullptr) return;
    if (!status.ok()) m_.delivery_errors->Increment();
    if (status.ok()) recovery_.Delivered();
    const uint64_t sequence = tagged & kSequenceMask;
    const bool alone = st->retrying_alone == sequence;
    if (alone) st->retrying_alone.reset();
    std::optional<OutboxEvent> refused =
        producer_.ObserveReport(*st, tagged, status);
    if (refused.has_value() && !st->failed()) {
      // Not failed yet: retried alone, then dead-lettered if refused again.
      spdlog::warn("{}delivery of event #{} refused{}: {}", st->log_prefix(),
                   sequence, alone ? " on its own" : "; retrying it alone",
                   std::string(status.message()));
      SourceSession::Refused r{sequence, *std::move(refused), std::move(status),
                               alone};
      if (alone) {
        st->refused.push_front(std::move(r));
      } else {
        st->refused.push_back(std::move(r));
      }
      return;
    }
    delivery_->OnReport(tagged, std::move(status));
  }

  // --- the sink
  // --------------------------------------------------------------

  // `identity`: the first connected source's ("" when the delivery mode
  // does not need it).
  absl::Status CreateSink(const std::string& identity) {
    ProducerOptions producer = delivery_->Producer(options_.producer, identity);
    producer.on_stats = ProducerStatsToMetrics(m_);
    ASSIGN_OR_RETURN(
        sink_,
        sink_factory_(producer, [this](uint64_t seq, absl::Status status) {
          OnDelivery(seq, std::move(status));
        }));
    delivery_->Attach(*sink_);
    producer_.Attach(*sink_);
    return absl::OkStatus();
  }

  // Waits (at most kSinkReadyTimeout), before the first source connects (no
  // keep-alive is due yet), until a sink made before it is usable, so that
  // the first event after a start or a takeover does not pay for it: a
  // broker answered a metadata request (ClusterId), which is also when
  // librdkafka asks for the idempotent producer id, and, with --topic, the
  // fixed topic's metadata (the catalog keeps it). Brokers that do not
  // answer in time only delay the first event: records wait in librdkafka's
  // queue. Once per run: the producer stays warm.
  void WaitUntilSinkReady() {
    if (sink_ == nullptr || sink_waited_) return;
    sink_waited_ = true;
    const absl::Time since = absl::Now();
    absl::StatusOr<std::string> cluster = sink_->ClusterId(kSinkReadyTimeout);
    if (!cluster.ok()) {
      spdlog::warn("Kafka not ready yet ({}); events wait for it",
                   std::string(cluster.status().message()));
      return;
    }
    const std::string& fixed = options_.records.router.fixed_topic;
    if (!fixed.empty()) producer_.catalog().Check(fixed).IgnoreError();
    spdlog::debug("Kafka ready (cluster {}) in {}", *cluster,
                  absl::FormatDuration(absl::Now() - since));
  }

  // Waits until nothing is in flight (a source starting over, e.g. after a
  // lost slot, sends what came before first).
  absl::Status DrainInFlight() {
    if (sink_ == nullptr) return absl::OkStatus();
    while (sink_->OutQueueLength() > 0) {
      sink_->Poll(absl::Milliseconds(50));
      RETURN_IF_ERROR(sink_->fatal_error());
      for (const auto& st : sessions_) {
        if (!st->failed()) RETURN_IF_ERROR(st->tracker().failure());
      }
      if (stop_->load()) return absl::CancelledError("stop requested");
    }
    return absl::OkStatus();
  }

  // --- the end
  // ----------------------------------------------------------------

  void LogProgress() {
    if (sessions_.size() == 1) {
      const SourceSession& st = *sessions_.front();
      spdlog::info(
          "events produced {} acknowledged {} dead-lettered {} in flight {}, "
          "confirmed {}, {}",
          stats_.events_produced, stats_.events_acknowledged,
          stats_.events_dead_lettered, st.tracker().EventsInFlight(),
          st.DescribeConfirmed(), st.source().Progress());
      return;
    }
    size_t connected = 0;
    uint64_t in_flight = 0;
    for (const auto& st : sessions_) {
      connected += st->connected() ? 1 : 0;
      in_flight += st->tracker().EventsInFlight();
      spdlog::debug("{}{}, in flight {}, confirmed {}, {}", st->log_prefix(),
                    st->connected() ? "streaming" : "not streaming",
                    st->tracker().EventsInFlight(), st->DescribeConfirmed(),
                    st->source().Progress());
    }
    spdlog::info(
        "events produced {} acknowledged {} dead-lettered {} in flight {}, "
        "{} of {} sources streaming",
        stats_.events_produced, stats_.events_acknowledged,
        stats_.events_dead_lettered, in_flight, connected, sessions_.size());
  }

  // Waits for outstanding deliveries (bounded), confirms what is
  // acknowledged and ends every source. After a failure it only confirms.
  absl::Status Finish(bool clean) {
    for (const auto& st : sessions_) st->metrics().streaming->Set(0);
    absl::Status delivered =
        delivery_->Finish(clean, absl::Now() + options_.shutdown_timeout);
    delivery_->AddStats(stats_);
    absl::Status s;
    for (const auto& st : sessions_) {
      absl::Status f = st->Finish(clean);
      if (!f.ok()) {
        spdlog::error("{}{}", st->log_prefix(), std::string(f.message()));
        if (s.ok()) s = f;
      }
    }
    stats_.confirmed = sessions_.front()->confirmable().value();
    LogProgress();
    for (const auto& st : sessions_) {
      spdlog::info("{}confirmed position {}", st->log_prefix(),
                   st->DescribeConfirmed());
    }
    // A last transaction that did not commit is not confirmed: exit 1.
    return s.ok() ? delivered : s;
  }

  const PublisherOptions options_;  // a copy: callers may pass a temporary
  metrics::OutboxdMetrics& m_;      // the process's; a session has its source's
  SinkFactory sink_factory_;
  PipelineStats stats_;
  std::unique_ptr<Delivery> delivery_;
  // Declared before the sink, which is destroyed first: no delivery report
  // can reach a destroyed tracker.
  std::vector<std::unique_ptr<SourceSession>> sessions_;
  SessionSteps steps_;
  EventProducer producer_;  // into sink_, destroyed after it
  std::unique_ptr<Sink> sink_;
  PublisherRecovery recovery_;  // of sink_ and the sessions
  bool sink_waited_ = false;    // WaitUntilSinkReady ran (once per run)
  const std::atomic<bool>* stop_ = nullptr;
  std::vector<pollfd> fds_;              // Sleep's, kept to avoid an allocation
  std::vector<SourceSession*> watched_;  // the sessions of fds_'s first
};

Publisher::Publisher(const PublisherOptions& options,
                     std::vector<PublisherStream> streams,
                     metrics::OutboxdMetrics& metrics, SinkFactory sink_factory)
    : impl_(std::make_unique<Impl>(options, std::move(streams), metrics,
                                   std::move(sink_factory))) {}

Publisher::~Publisher() = default;

absl::Status Publisher::Run(const std::atomic<bool>& stop) {
  return impl_->Run(stop);
}

const PipelineStats& Publisher::stats() const { return impl_->stats(); }

}  // namespace outboxd
