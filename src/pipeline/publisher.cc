#include "pipeline/publisher.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <utility>
#include <variant>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kafka/topic_catalog.h"
#include "nlohmann/json.hpp"
#include "pipeline/ack_tracker.h"
#include "pipeline/checkpoint.h"
#include "pipeline/read_coalescer.h"
#include "pipeline/reserved_header_log.h"
#include "pipeline/stage_metrics.h"

namespace outboxd {
namespace {

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
// A source of several stopped by a failure of its own is retried from
// --reconnect-backoff-max on, doubling up to this while the cause recurs.
constexpr absl::Duration kMaxFailureRetry = absl::Minutes(5);
// Items read per wakeup at most: during a backlog, delivery reports and the
// source's status updates are served every so many.
constexpr int kMaxReadsPerWakeup = 256;
// The sequence a record carries through the sink (its delivery report's
// opaque): the stream's index in the top bits, the stream's own sequence
// (AckTracker::AddEvent) below; 2^48 events per stream and connection.
constexpr int kStreamShift = 48;
constexpr uint64_t kSequenceMask = (uint64_t{1} << kStreamShift) - 1;
constexpr size_t kMaxStreams = size_t{1} << (64 - kStreamShift);

// The timeout for ppoll(): nullptr (none) for an infinite wait. A wait
// that ends within the same microsecond does not spin: at least 1 µs.
const timespec* PollTimeout(absl::Duration d) {
  thread_local timespec ts;
  if (d == absl::InfiniteDuration()) return nullptr;
  ts = absl::ToTimespec(std::max(d, absl::Microseconds(1)));
  return &ts;
}
// Each blocking transactional call waits at most this long, so that the
// source's keep-alive work (CDC status updates, wal_sender_timeout) goes on
// while Kafka is slow.
constexpr absl::Duration kTxnCallTimeout = absl::Milliseconds(500);
// How long preparing the transactions (init, checkpoint read) may take
// before the attempt counts as failed and is retried from the start.
constexpr absl::Duration kTxnPrepareTimeout = absl::Seconds(60);
// How long a connect waits for the sink to be usable (a broker's answer,
// the fixed topic's metadata) before streaming anyway.
constexpr absl::Duration kSinkReadyTimeout = absl::Seconds(2);
// librdkafka's mock cluster (the dev broker) names its clusters so.
constexpr absl::string_view kMockClusterPrefix = "mockCluster";
// How long one metadata lookup of a topic may block the publisher's thread
// (the source's keep-alive waits meanwhile; wal_sender_timeout is longer).
constexpr absl::Duration kTopicLookupTimeout = absl::Seconds(3);

// Where an event is, for log lines: a polled row's seq ("row seq 42"), a
// streamed event's commit LSN and index ("at 0/1A2B#3").
template <typename Event>  // OutboxEvent or InvalidEvent
std::string Where(const Event& e) {
  if (e.table_seq.has_value()) return absl::StrCat("row seq ", *e.table_seq);
  return absl::StrCat("at ", e.position.commit_lsn.ToString(), "#",
                      e.position.index);
}

// The record that carries an invalid event to the dead-letter topic: the
// original content as the value, the reason and position as headers (a
// polled row's seq, a streamed event's LSN and index) and its table.
KafkaRecord DeadLetterRecord(const InvalidEvent& bad,
                             const std::string& topic) {
  KafkaRecord r;
  r.topic = topic;
  r.key = bad.aggregate_id;
  r.value = absl::string_view(bad.content);
  r.timestamp_ms = bad.commit_time_unix_ms;
  r.headers.emplace_back("outbox.error", bad.reason);
  if (bad.table_seq.has_value()) {
    r.headers.emplace_back(std::string(kHeaderSeq),
                           absl::StrCat(*bad.table_seq));
  } else {
    r.headers.emplace_back(std::string(kHeaderLsn),
                           absl::StrCat(bad.position.commit_lsn.value()));
    r.headers.emplace_back(std::string(kHeaderIndex),
                           absl::StrCat(bad.position.index));
  }
  if (!bad.table.empty()) {
    r.headers.emplace_back(std::string(kHeaderTable), bad.table);
  }
  return r;
}

// The invalid event an event becomes, keeping its position.
InvalidEvent InvalidFrom(const OutboxEvent& e, std::string reason) {
  InvalidEvent bad;
  bad.position = e.position;
  bad.table_seq = e.table_seq;
  bad.commit_time_unix_ms = e.commit_time_unix_ms;
  bad.reason = std::move(reason);
  bad.aggregate_id = e.aggregate_id;
  bad.table = e.table;
  return bad;
}

// An event that could not be produced as it is (e.g. larger than
// message.max.bytes) becomes an invalid event without its payload.
InvalidEvent Unproducible(const OutboxEvent& e, const absl::Status& cause) {
  InvalidEvent bad =
      InvalidFrom(e, absl::StrCat("cannot produce: ", cause.message()));
  nlohmann::ordered_json c = {
      {"id", e.id},
      {"aggregatetype", e.aggregate_type},
      {"aggregateid", e.aggregate_id},
      {"type", e.type},
      {"payload_bytes", e.payload ? e.payload->size() : 0},
  };
  bad.content =
      c.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return bad;
}

// An event whose topic cannot take it (an illegal name, a missing topic):
// an invalid event with the whole event as content, so it can be replayed.
InvalidEvent Misrouted(const OutboxEvent& e, const std::string& topic,
                       const absl::Status& cause) {
  InvalidEvent bad = InvalidFrom(
      e, absl::StrCat("cannot route to ", topic, ": ", cause.message()));
  bad.content = EventAsJson(e);
  return bad;
}

}  // namespace

SinkFactory KafkaSinkFactory() {
  return [](const ProducerOptions& options, DeliveryCallback on_delivery)
             -> absl::StatusOr<std::unique_ptr<Sink>> {
    ASSIGN_OR_RETURN(std::unique_ptr<KafkaProducer> producer,
                     KafkaProducer::Create(options, std::move(on_delivery)));
    return std::unique_ptr<Sink>(std::move(producer));
  };
}

RunMetrics::RunMetrics(metrics::OutboxdMetrics* given) : metrics_(given) {
  if (metrics_ == nullptr) {
    own_ = std::make_unique<metrics::OutboxdMetrics>();
    metrics_ = own_.get();
  }
}

class Publisher::Impl {
 public:
  Impl(const PublisherOptions& options, std::vector<PublisherStream> streams,
       metrics::OutboxdMetrics& metrics, SinkFactory sink_factory)
      : options_(options),
        m_(metrics),
        sink_factory_(std::move(sink_factory)),
        exactly_once_(options.delivery == DeliveryGuarantee::kExactlyOnce),
        batch_(options.transactions) {
    for (size_t i = 0; i < streams.size(); ++i) {
      PublisherStream& spec = streams[i];
      metrics::OutboxdMetrics& sm =
          spec.metrics != nullptr ? *spec.metrics : metrics;
      std::string prefix = spec.name.empty()
                               ? std::string()
                               : absl::StrCat("[", spec.name, "] ");
      streams_.push_back(
          std::make_unique<Stream>(*spec.source, sm, std::move(prefix),
                                   static_cast<uint64_t>(i), options));
    }
  }

  absl::Status Run(const std::atomic<bool>& stop) {
    stop_ = &stop;
    if (streams_.empty()) return absl::InvalidArgumentError("no source");
    if (streams_.size() > kMaxStreams) {
      return absl::InvalidArgumentError(
          absl::StrCat("at most ", kMaxStreams, " sources per process"));
    }
    if (exactly_once_ && streams_.size() > 1) {
      // One transactional producer and one checkpoint per source: several
      // sources would need a producer each.
      return absl::InvalidArgumentError(
          "--delivery=exactly-once publishes one source per process");
    }
    absl::Status s = Loop();
    absl::Status end = Finish(s.ok());
    return s.ok() ? end : s;
  }

  const PipelineStats& stats() const { return stats_; }

 private:
  using Tracker = BasicAckTracker<SourcePosition>;

  // What waits to be produced while the queue is full.
  struct Pending {
    std::variant<OutboxEvent, InvalidEvent> item;
    uint64_t sequence;  // the stream's own (Tracker::AddEvent)
  };
  // The topic's counter and the commit time of each produced event in
  // flight, by tagged sequence (metrics).
  struct PublishedEvent {
    metrics::Counter* published_to = nullptr;
    int64_t commit_time_unix_ms = 0;
    uint64_t commit_lsn = 0;  // the value of a CDC event's commit LSN
  };

  // How a wakeup's reading ended.
  enum class Drained {
    kNothing,   // the source has nothing now: sleep on it too
    kMore,      // there may be more: serve the sink and the source first
    kAwaiting,  // the source waits until what it handed over is durable
    kPending,   // an event waits for room in the sink (backpressure)
    // Live traffic: the source handed over transactions and then had
    // nothing; it is read again at read_after, not sooner
    // (pipeline/read_coalescer.h).
    kCoalescing,
  };

  // One source and everything the Publisher keeps for it: its own
  // acknowledgements (and so its own confirmed position), its pending event,
  // its connection state and reconnect backoff. Only the sink (and with it
  // the topic catalog and, exactly-once, the Kafka transaction) is shared.
  struct Stream {
    Stream(EventSource& s, metrics::OutboxdMetrics& sm, std::string prefix,
           uint64_t index, const PublisherOptions& options)
        : source(s),
          m(sm),
          log_prefix(std::move(prefix)),
          tag(index << kStreamShift),
          router(options.router),
          cloudevents(options.cloudevents),
          backoff(options.reconnect),
          failure_backoff(ReconnectOptions{
              options.reconnect.max_backoff,
              std::max(kMaxFailureRetry, options.reconnect.max_backoff)}),
          coalescer(options.coalesce, options.coalesce_min_rate),
          stages(sm),
          stall(sm, options.stall_timeout, log_prefix),
          reserved_headers(&sm, absl::Seconds(10), log_prefix) {}

    EventSource& source;
    // Per source with several (labelled source="<name>"), else shared. The
    // per-event metrics of this source's events go here; m_ keeps the
    // per-process ones (delivery errors, broker connections).
    metrics::OutboxdMetrics& m;
    const std::string log_prefix;  // "[name] " with several sources, or ""
    // Set in the high bits of every sequence this stream produces, so that
    // a delivery report (whose opaque is the sequence) finds its stream.
    const uint64_t tag;
    Tracker tracker;
    RouterOptions router;  // options.router plus the source's identity
    // options.cloudevents, its default source from the source's identity.
    CloudEventsOptions cloudevents;
    std::string ready_line;
    std::optional<Pending> pending;
    // The pending event waits for its topic's state (not for room in the
    // sink, which the sink's descriptor signals): retried on a timer.
    bool waiting_for_topic = false;
    bool connected = false;
    bool connected_once = false;
    Drained drained = Drained::kNothing;  // this wakeup's
    // Whether the last sleep found its descriptor readable (or did not
    // watch it): a stream that had nothing is read again only then.
    bool readable = true;
    // Reconnecting: the next attempt is due at retry_at; the outage began
    // at down_since (--reconnect-give-up).
    ReconnectBackoff backoff;
    absl::Time retry_at = absl::InfinitePast();
    absl::Time down_since = absl::InfiniteFuture();
    int attempts = 0;
    std::string last_cause;  // the last "cannot stream yet" logged
    // Stopped by a failure of its own while the other sources go on
    // (IsolateOrStop); last_failure is the last one logged.
    bool failed = false;
    std::string last_failure;
    // Its retries: from max_backoff, doubling up to kMaxFailureRetry while
    // the cause stays the same.
    ReconnectBackoff failure_backoff;
    // Read coalescing: how long to wait after live transactions, and until
    // when (Drained::kCoalescing).
    ReadCoalescer coalescer;
    absl::Time read_after = absl::InfinitePast();
    // Lag by stage and the stall alarm, of this stream (stage_metrics.h).
    StageLag stages;
    StallAlarm stall;
    // Reserved header names dropped from this source's events.
    ReservedHeaderLog reserved_headers;
  };

  // The sequence the sink carries for a stream's `sequence`, and back.
  static uint64_t Tagged(const Stream& st, uint64_t sequence) {
    return st.tag | sequence;
  }
  Stream* StreamOf(uint64_t tagged) const {
    const uint64_t index = tagged >> kStreamShift;
    return index < streams_.size() ? streams_[index].get() : nullptr;
  }
  // The stream of --delivery=exactly-once, which has exactly one.
  Stream& Only() const { return *streams_.front(); }

  // --- the loop -------------------------------------------------------------

  // Every wakeup: the clock once, the sink's delivery reports, then each
  // stream in turn (a due reconnect attempt, or the source's keep-alive
  // work and what it holds), then one sleep over every descriptor. A stream
  // whose connection is lost (kUnavailable) reconnects on its own backoff
  // while the others go on; anything else stops the run.
  absl::Status Loop() {
    if (!exactly_once_) RETURN_IF_ERROR(CreateSink());
    absl::Time next_progress = absl::Now() + kProgressLogInterval;
    while (!stop_->load(std::memory_order_relaxed)) {
      const absl::Time now = absl::Now();
      if (sink_ != nullptr) {
        sink_->Poll(absl::ZeroDuration());
        RETURN_IF_ERROR(FencedOrFatal());
      }
      bool more = false;
      for (const std::unique_ptr<Stream>& st : streams_) {
        if (stop_->load(std::memory_order_relaxed)) break;
        if (!st->failed && !st->tracker.failure().ok()) {
          RETURN_IF_ERROR(IsolateOrStop(*st, st->tracker.failure()));
        }
        if (!st->connected) {
          if (exactly_once_) RETURN_IF_ERROR(txn_delivery_failure_);
          if (now < st->retry_at) continue;
          if (st->failed && !RecoverFailed(*st, now)) continue;
          RETURN_IF_ERROR(AttemptConnect(*st));
          // Connected: read it at once.
          if (st->connected) more = true;
          continue;
        }
        absl::Status s = Wakeup(*st, now, next_progress);
        if (s.ok()) {
          if (st->drained == Drained::kMore) more = true;
          continue;
        }
        if (!Reconnectable(*st, s)) {
          RETURN_IF_ERROR(IsolateOrStop(*st, s));
          continue;
        }
        RETURN_IF_ERROR(LoseConnection(*st, s));
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

  // One wakeup of a connected stream: its source's keep-alive work, the
  // Kafka transaction when due (exactly-once), its pending event, then what
  // its source holds.
  absl::Status Wakeup(Stream& st, absl::Time now, absl::Time next_progress) {
    RETURN_IF_ERROR(st.source.Durable(st.tracker.ConfirmableLsn()));
    if (exactly_once_) {
      RETURN_IF_ERROR(DeliveryFailureInTransaction());
      if (batch_.CommitDue(now, AtBoundary(st))) {
        RETURN_IF_ERROR(CommitOpenTransaction());
        if (!st.connected) {
          return absl::UnavailableError(
              "source connection lost during a Kafka commit");
        }
      }
    }
    UpdateStageMetrics(st, now);
    // Backpressure: the source is not read until the sink took the
    // pending event.
    if (st.pending.has_value()) RETURN_IF_ERROR(TryProducePending(st));
    if (st.drained == Drained::kCoalescing && !st.pending.has_value() &&
        now < st.read_after) {
      return absl::OkStatus();  // woken for something else: not yet
    }
    if (st.drained == Drained::kNothing && !st.readable &&
        !st.pending.has_value() && !st.source.InputMayBeBuffered()) {
      // It had nothing, and the sleep said its descriptor has nothing new:
      // the wakeup was for another stream or the sink. Reading would only
      // cost a recvfrom that says EAGAIN (with many sources, most of them).
      return absl::OkStatus();
    }
    st.drained = Drained::kPending;
    if (st.pending.has_value()) return absl::OkStatus();
    if (st.source.WaitFd() >= 0 || streams_.size() > 1) {
      ReadCount count;
      ASSIGN_OR_RETURN(st.drained, ReadAvailable(st, now, count));
      if (count.items > 0) {
        st.coalescer.Observe(now, count.commits);
        if (st.drained == Drained::kNothing &&
            st.coalescer.Window() > absl::ZeroDuration()) {
          // Live traffic: the source just handed over a transaction and
          // the next one is likely moments away. Waiting a moment reads a
          // few per wakeup and hands them to the sink as one batch
          // (pipeline/read_coalescer.h); delivery reports are served at
          // that wakeup too. The first transaction after a quiet spell is
          // read at once.
          st.drained = Drained::kCoalescing;
          st.read_after = now + st.coalescer.Window();
        }
      }
    } else {
      ASSIGN_OR_RETURN(st.drained, ReadWaiting(st, now, next_progress));
    }
    return absl::OkStatus();
  }

  bool AtBoundary(const Stream& st) const {
    return !st.tracker.transaction_open() && !st.pending.has_value();
  }

  bool AnyConnected() const {
    for (const auto& st : streams_) {
      if (st->connected) return true;
    }
    return false;
  }

  // What one wakeup read.
  struct ReadCount {
    int items = 0;    // of any kind
    int commits = 0;  // transactions ended
  };

  // Reads, without waiting, what a source with a descriptor holds: at most
  // kMaxReadsPerWakeup items, so that delivery reports, status updates and
  // the other streams are served between them during a backlog. Counts
  // them in `count`.
  absl::StatusOr<Drained> ReadAvailable(Stream& st, absl::Time now,
                                        ReadCount& count) {
    for (int n = 0; n < kMaxReadsPerWakeup; ++n) {
      ASSIGN_OR_RETURN(SourceRead read, st.source.Read(absl::ZeroDuration()));
      if (read.nothing()) {
        st.stages.SourceCaughtUp();
        return Drained::kNothing;
      }
      if (!std::holds_alternative<std::monostate>(read.item)) ++count.items;
      if (std::holds_alternative<SourceCommit>(read.item)) ++count.commits;
      const bool awaiting = std::holds_alternative<AwaitDurable>(read.item);
      RETURN_IF_ERROR(OnRead(st, std::move(read)));
      if (awaiting) return Drained::kAwaiting;
      if (st.pending.has_value()) return Drained::kPending;
      if (exactly_once_ && batch_.CommitDue(now, AtBoundary(st))) {
        return Drained::kMore;
      }
    }
    return Drained::kMore;
  }

  // One read of a source without a descriptor (the only source of the
  // run): it waits by itself (at most until the loop has work of its own).
  absl::StatusOr<Drained> ReadWaiting(Stream& st, absl::Time now,
                                      absl::Time next_progress) {
    absl::Duration wait = std::min(
        kIdleWait,
        std::max(WakeDeadline(next_progress) - now, absl::ZeroDuration()));
    if (st.tracker.EventsInFlight() > 0 && sink_->EventFd() < 0) {
      wait = std::min(wait, kBusyPollInterval);
    }
    ASSIGN_OR_RETURN(SourceRead read, st.source.Read(wait));
    if (read.nothing()) st.stages.SourceCaughtUp();
    const bool awaiting = std::holds_alternative<AwaitDurable>(read.item);
    RETURN_IF_ERROR(OnRead(st, std::move(read)));
    if (awaiting) return Drained::kAwaiting;
    if (st.pending.has_value()) return Drained::kPending;
    return Drained::kMore;  // the read waited already
  }

  // The earliest time the loop has work without any event: a source's
  // periodic work, a stream's next reconnect attempt, the Kafka
  // transaction's deadline, the progress log, the stall alarm.
  absl::Time WakeDeadline(absl::Time next_progress) const {
    absl::Time until = next_progress;
    for (const auto& st : streams_) {
      if (!st->connected) {
        until = std::min(until, st->retry_at);
        continue;
      }
      until = std::min(until, st->source.NextDue());
      until = std::min(until, st->stall.Deadline(st->tracker.EventsInFlight()));
      if (st->drained == Drained::kCoalescing) {
        until = std::min(until, st->read_after);
      }
    }
    if (exactly_once_) until = std::min(until, batch_.Deadline());
    return until;
  }

  // Sleeps in one poll() until a source that has nothing now, the sink or
  // the stop descriptor has something, or WakeDeadline. No descriptor where
  // a timer has to do: a sink without one is polled every kBusyPollInterval
  // while records are in flight, the stop flag without one looked at every
  // kIdleWait, and an event waiting for a topic's state retried every
  // kPendingPollInterval. While every connected stream is coalescing, the
  // sink is not waited on either: the next wakeup is moments away and
  // serves its reports.
  absl::Status Sleep(absl::Time next_progress) {
    fds_.clear();
    watched_.clear();
    bool in_flight = false;
    bool waiting_for_topic = false;
    size_t connected = 0;
    size_t coalescing = 0;
    for (const auto& st : streams_) {
      if (st->tracker.EventsInFlight() > 0) in_flight = true;
      if (st->pending.has_value() && st->waiting_for_topic) {
        waiting_for_topic = true;
      }
      st->readable = true;  // unless the sleep below says otherwise
      if (!st->connected) continue;
      ++connected;
      if (st->drained == Drained::kCoalescing) ++coalescing;
      if (st->drained != Drained::kNothing) continue;
      if (int fd = st->source.WaitFd(); fd >= 0) {
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

  absl::Status OnRead(Stream& st, SourceRead read) {
    if (auto* event = std::get_if<OutboxEvent>(&read.item)) {
      st.stages.Received(event->position.commit_lsn.value(),
                         event->commit_time_unix_ms);
      RETURN_IF_ERROR(Publish(st, std::move(*event)));
    } else if (auto* bad = std::get_if<InvalidEvent>(&read.item)) {
      st.stages.Received(bad->position.commit_lsn.value(),
                         bad->commit_time_unix_ms);
      RETURN_IF_ERROR(OnInvalid(st, std::move(*bad)));
    } else if (std::holds_alternative<SourceBegin>(read.item)) {
      st.tracker.BeginTransaction();
    } else if (auto* commit = std::get_if<SourceCommit>(&read.item)) {
      st.tracker.CommitTransaction(commit->position);
      st.stages.Committed(commit->position);
    }
    if (read.idle_position.has_value()) {
      st.tracker.ObserveServerWalEnd(*read.idle_position);
      st.stages.ServerWalEnd(read.idle_position->value());
    }
    st.m.events_in_flight->Set(
        static_cast<double>(st.tracker.EventsInFlight()));
    return absl::OkStatus();
  }

  // --- connecting -----------------------------------------------------------

  // One attempt to connect `st`. A failure that is worth retrying
  // (kUnavailable: connection refused, server restarting, slot active in
  // another process) schedules the next attempt on the stream's own
  // backoff; anything else, or --reconnect-give-up, is returned.
  absl::Status AttemptConnect(Stream& st) {
    const absl::Time start = absl::Now();
    if (st.attempts == 0) st.down_since = start;
    absl::Status s = Connect(st);
    if (s.ok()) {
      if (st.attempts > 0) {
        spdlog::info("{}connected after {} attempts in {}", st.log_prefix,
                     st.attempts + 1,
                     absl::FormatDuration(absl::Now() - st.down_since));
      }
      st.attempts = 0;
      st.last_cause.clear();
      st.backoff.Reset();
      return absl::OkStatus();
    }
    Disconnect(st);
    if (absl::IsCancelled(s) && stop_->load()) return absl::OkStatus();
    if (!Reconnectable(st, s)) return IsolateOrStop(st, s);
    ++st.attempts;
    const absl::Duration give_up = options_.reconnect.give_up_after;
    if (give_up > absl::ZeroDuration() &&
        absl::Now() - st.down_since > give_up) {
      return absl::UnavailableError(
          absl::StrCat(st.log_prefix, s.message(), " (gave up after ",
                       absl::FormatDuration(give_up), ")"));
    }
    // One line per distinct cause, not one per attempt: a standby waits
    // quietly while the slot is active elsewhere.
    std::string cause(s.message());
    const std::optional<absl::Duration> retry_after = RetryAfter(s);
    const absl::Duration delay =
        retry_after.has_value() ? *retry_after : st.backoff.Next();
    if (cause != st.last_cause) {
      spdlog::info("{}cannot stream yet: {}; {}", st.log_prefix, cause,
                   retry_after.has_value()
                       ? absl::StrCat("checking again every ",
                                      absl::FormatDuration(*retry_after))
                       : absl::StrCat("retrying with backoff up to ",
                                      absl::FormatDuration(
                                          options_.reconnect.max_backoff)));
      st.last_cause = cause;
    } else {
      spdlog::debug("{}attempt {}: {}; next in {}", st.log_prefix, st.attempts,
                    std::string(s.message()), absl::FormatDuration(delay));
    }
    st.retry_at = absl::Now() + delay;
    return absl::OkStatus();
  }

  // A connected stream lost its source's connection: what the open Kafka
  // transaction holds is committed first (exactly-once: the source resends
  // from the confirmed position, and the checkpoint tells which of those
  // events Kafka has), then the stream starts over and reconnects at once,
  // then on its backoff.
  absl::Status LoseConnection(Stream& st, const absl::Status& cause) {
    spdlog::warn("{}{}; reconnecting", st.log_prefix,
                 std::string(cause.message()));
    Disconnect(st);
    RETURN_IF_ERROR(CommitOpenTransaction());
    st.m.reconnects->Increment();
    ResetSession(st);
    st.retry_at = absl::InfinitePast();
    st.attempts = 0;
    st.backoff.Reset();
    return absl::OkStatus();
  }

  // Connects a stream's source; creates the sink first (at-least-once, in
  // Loop) or, needing the source's identity, after the first connect
  // (exactly-once, which also checks the broker for transactions).
  absl::Status Connect(Stream& st) {
    // At-least-once, the sink exists and is usable before the first source
    // starts streaming: librdkafka connects, reads the brokers' metadata and
    // gets the idempotent producer id, and a standby's producer is warm when
    // it takes over. Exactly-once needs the source's identity first (the
    // transactional id); its broker check and init_transactions then do
    // the same.
    if (!exactly_once_ && !sink_waited_) {
      WaitUntilSinkReady();
      sink_waited_ = true;
    }
    ConnectContext ctx;
    ctx.first = !st.connected_once;
    ctx.durable = st.tracker.ConfirmableLsn();
    ctx.drain_in_flight = [this] { return DrainInFlight(); };
    ASSIGN_OR_RETURN(ConnectResult r, st.source.Connect(ctx));
    st.connected = true;
    st.readable = true;  // a new connection: read it before sleeping
    st.connected_once = true;
    if (r.restart_at.has_value()) {
      st.tracker = Tracker(*r.restart_at);
      st.stages.Restart();
    }
    st.router.source = std::move(r.identity);
    if (options_.cloudevents.source.empty()) {
      st.cloudevents.source = DefaultCloudEventsSource(st.router.source);
    }
    st.ready_line = std::move(r.ready_line);
    if (sink_ == nullptr) RETURN_IF_ERROR(CreateSink());
    if (exactly_once_ && !broker_checked_) {
      RETURN_IF_ERROR(CheckBrokerHasTransactions());
      broker_checked_ = true;
    }
    // After the source's connection: only the owner of a CDC slot may fence
    // the others (a standby waiting for the slot must not take the
    // transactional id from the active instance).
    if (exactly_once_ && !transactions_ready_) {
      RETURN_IF_ERROR(PrepareTransactions());
    }
    spdlog::info("{}{}", st.log_prefix, st.ready_line);
    SetStreaming(st, true);
    return absl::OkStatus();
  }

  // Waits (at most kSinkReadyTimeout), before the first source connects (no
  // keep-alive is due yet), until the sink is usable, so that the first
  // event after a start or a takeover does not pay for it: a broker
  // answered a metadata request (ClusterId), which is also when librdkafka
  // asks for the idempotent producer id (it has no call that waits for the
  // id itself; on the dev broker it arrives within a millisecond of the
  // metadata), and, with --topic, the fixed topic's metadata (the catalog
  // keeps it). Brokers that do not answer in time only delay the first
  // event, as before: records wait in librdkafka's queue. Once per run:
  // the producer stays warm, and with several sources the others would
  // wait for nothing.
  void WaitUntilSinkReady() {
    const absl::Time since = absl::Now();
    absl::StatusOr<std::string> cluster = sink_->ClusterId(kSinkReadyTimeout);
    if (!cluster.ok()) {
      spdlog::warn("Kafka not ready yet ({}); events wait for it",
                   std::string(cluster.status().message()));
      return;
    }
    if (!options_.router.fixed_topic.empty()) {
      catalog_->Check(options_.router.fixed_topic).IgnoreError();
    }
    spdlog::debug("Kafka ready (cluster {}) in {}", *cluster,
                  absl::FormatDuration(absl::Now() - since));
  }

  void Disconnect(Stream& st) {
    if (st.connected) st.source.Disconnect();
    SetStreaming(st, false);
  }

  // outboxd_streaming: the stream's own (labelled by source with several
  // sources), and the process's: 1 while any source streams (/readyz).
  void SetStreaming(Stream& st, bool streaming) {
    st.connected = streaming;
    st.m.streaming->Set(streaming ? 1 : 0);
    if (&st.m != &m_) m_.streaming->Set(AnyConnected() ? 1 : 0);
  }

  absl::Status CreateSink() {
    ProducerOptions producer_options = options_.producer;
    if (exactly_once_) {
      transactional_id_ = options_.transactional_id;
      if (transactional_id_.empty()) {
        transactional_id_ = absl::StrCat("outboxd-", Only().router.source);
        std::replace(transactional_id_.begin(), transactional_id_.end(), '/',
                     '-');
      }
      producer_options.transactional_id = transactional_id_;
    }
    metrics::OutboxdMetrics* m = &m_;
    producer_options.on_brokers_up = [m](int up) {
      m->kafka_brokers_up->Set(up);
    };
    ASSIGN_OR_RETURN(
        sink_, sink_factory_(producer_options,
                             [this](uint64_t sequence, absl::Status status) {
                               OnDelivery(sequence, std::move(status));
                             }));
    catalog_ = std::make_unique<TopicCatalog>(
        [sink = sink_.get()](const std::string& topic) {
          return sink->LookupTopic(topic, kTopicLookupTimeout);
        });
    return absl::OkStatus();
  }

  // A lost connection, a restarting server or a slot active in another
  // process; not a broken producer or a failed delivery of the stream's.
  bool Reconnectable(const Stream& st, const absl::Status& s) const {
    if (!absl::IsUnavailable(s) || !txn_delivery_failure_.ok()) return false;
    if (sink_ != nullptr && !sink_->fatal_error().ok()) return false;
    return st.tracker.failure().ok();
  }

  // A failure of the stream's own that is not worth a reconnect (a failed
  // delivery of its event, an invalid event under --on-invalid=fail, a lost
  // slot under --on-slot-loss=fail, a refused login or a missing database).
  // With one source, or exactly-once, it stops the run (returned). With
  // several, at-least-once, it stops this stream only, while the others go
  // on and the shared producer is sound: the stream is disconnected without
  // confirming past its acknowledged events, outboxd_source_failed is 1
  // (/readyz fails naming it), and it is retried every max_backoff from its
  // confirmed position (RecoverFailed): duplicates at worst, never a loss.
  // When no other stream is left, the run ends with the cause.
  absl::Status IsolateOrStop(Stream& st, absl::Status cause) {
    if (streams_.size() < 2 || exactly_once_ || stop_->load() ||
        sink_ == nullptr || !sink_->fatal_error().ok()) {
      return cause;
    }
    bool others = false;
    for (const auto& other : streams_) {
      if (other.get() != &st && !other->failed) others = true;
    }
    if (!others) return cause;  // every source failed
    Disconnect(st);
    ResetSession(st);
    st.failed = true;
    st.m.source_failed->Set(1);
    const std::string why(cause.message());
    if (why != st.last_failure) st.failure_backoff.Reset();
    const absl::Duration delay = st.failure_backoff.Next();
    st.retry_at = absl::Now() + delay;
    if (why != st.last_failure) {
      spdlog::error(
          "{}stopped: {}; the other sources go on; retrying from its "
          "confirmed position {} in {}, then less often (up to every {}) "
          "while this recurs",
          st.log_prefix, cause.ToString(),
          st.source.Describe(st.tracker.ConfirmableLsn()),
          absl::FormatDuration(delay),
          absl::FormatDuration(
              std::max(kMaxFailureRetry, options_.reconnect.max_backoff)));
      st.last_failure = why;
    } else {
      spdlog::warn("{}stopped again: {}; next retry in {}", st.log_prefix,
                   std::string(cause.message()), absl::FormatDuration(delay));
    }
    return absl::OkStatus();
  }

  // A stream stopped by IsolateOrStop may connect again once every report
  // of what it produced arrived (no late report can then reach the fresh
  // tracker, whose sequences start over); false: not yet.
  bool RecoverFailed(Stream& st, absl::Time now) {
    if (st.tracker.EventsInFlight() > 0) {
      st.retry_at = now + kPendingPollInterval;
      return false;
    }
    st.tracker = Tracker(st.tracker.ConfirmableLsn());
    st.failed = false;
    st.m.source_failed->Set(0);
    spdlog::info("{}retrying after its failure, from {}", st.log_prefix,
                 st.source.Describe(st.tracker.ConfirmableLsn()));
    return true;
  }

  // Waits until nothing is in flight (a source starting over, e.g. after a
  // lost slot, sends what came before first).
  absl::Status DrainInFlight() {
    if (sink_ == nullptr) return absl::OkStatus();
    while (sink_->OutQueueLength() > 0) {
      sink_->Poll(absl::Milliseconds(50));
      RETURN_IF_ERROR(sink_->fatal_error());
      for (const auto& st : streams_) {
        if (!st->failed) RETURN_IF_ERROR(st->tracker.failure());
      }
      if (stop_->load()) return absl::CancelledError("stop requested");
    }
    return absl::OkStatus();
  }

  // The connection is gone. The source hands over again, from the
  // confirmed position, every transaction not yet committed in the
  // tracker: what was handed over of one is dropped (duplicates at worst,
  // never a loss).
  void ResetSession(Stream& st) {
    if (st.pending.has_value()) {
      // Never produced; it belongs to the open transaction, resent later.
      st.tracker.Acknowledge(st.pending->sequence);
      st.pending.reset();
    }
    st.tracker.AbandonOpenTransaction();
  }

  // --- producing ------------------------------------------------------------

  absl::Status Publish(Stream& st, OutboxEvent event) {
    if (options_.value_format != ValueFormat::kPayload) {
      // The router publishes the payload as the value: make it the envelope.
      event.payload = EncodeValue(event, options_.value_format);
      event.content_type =
          std::string(ValueFormatContentType(options_.value_format));
    }
    if (st.cloudevents.mode != CloudEventsMode::kOff) {
      // Headers (binary) or the value's document (structured) of the
      // CloudEvent; an event that cannot be one is invalid.
      if (absl::Status s = ToCloudEvent(st.cloudevents, &event); !s.ok()) {
        InvalidEvent bad =
            InvalidFrom(event, absl::StrCat("not a CloudEvent: ", s.message()));
        bad.content = EventAsJson(event);
        return OnInvalid(st, std::move(bad));
      }
    }
    if (!event.dropped_headers.empty()) {
      // Where() formats a string: only for the events it is logged for.
      st.reserved_headers.Note(event, Where(event));
    }
    st.pending = Pending{std::move(event), st.tracker.AddEvent()};
    return TryProducePending(st);
  }

  // Counts and logs an invalid event; the error that stops the run under
  // --on-invalid=fail, OK when it is to be dead-lettered.
  absl::Status ReportInvalid(Stream& st, const InvalidEvent& bad) {
    st.m.invalid_events->Increment();
    const std::string where = Where(bad);
    spdlog::warn("{}invalid event {}: {}", st.log_prefix, where, bad.reason);
    if (options_.on_invalid == InvalidEventPolicy::kFail) {
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid event ", where, ": ", bad.reason,
          " (--on-invalid=fail; the source is not confirmed past it)"));
    }
    return absl::OkStatus();
  }

  absl::Status OnInvalid(Stream& st, InvalidEvent bad) {
    RETURN_IF_ERROR(ReportInvalid(st, bad));
    st.pending = Pending{std::move(bad), st.tracker.AddEvent()};
    return TryProducePending(st);
  }

  // Produces st.pending; leaves it in place when the queue is full or the
  // topic's state is not known yet. An event whose topic cannot take it, or
  // that cannot be produced as it is, becomes an invalid event (at most
  // once) and is dead-lettered by policy.
  absl::Status TryProducePending(Stream& st) {
    for (;;) {
      if (auto* event = std::get_if<OutboxEvent>(&st.pending->item)) {
        if (AlreadyInKafka(event->position)) return SkipPending(st);
        KafkaRecord record = Route(*event, st.router);
        absl::Status topic = CheckTopic(st, record.topic);
        if (absl::IsUnavailable(topic)) return absl::OkStatus();  // later
        if (!topic.ok()) {
          InvalidEvent bad = Misrouted(*event, record.topic, topic);
          st.pending->item = std::move(bad);
          RETURN_IF_ERROR(
              ReportInvalid(st, std::get<InvalidEvent>(st.pending->item)));
          continue;
        }
        RETURN_IF_ERROR(EnsureTransaction());
        absl::Status s =
            sink_->Produce(record, Tagged(st, st.pending->sequence));
        if (s.ok()) {
          if (exactly_once_) {
            batch_.Produced(Tagged(st, st.pending->sequence), event->position,
                            record.topic);
          }
          ++stats_.events_produced;
          published_[Tagged(st, st.pending->sequence)] = {
              &st.m.PublishedTo(record.topic), event->commit_time_unix_ms,
              event->position.commit_lsn.value()};
          st.stages.Produced(event->position.commit_lsn.value(),
                             event->commit_time_unix_ms);
          st.pending.reset();
          return absl::OkStatus();
        }
        if (absl::IsResourceExhausted(s)) return absl::OkStatus();
        // Not producible as it is: dead-letter it (or fail, by policy).
        InvalidEvent bad = Unproducible(*event, s);
        if (options_.on_invalid == InvalidEventPolicy::kFail) {
          return absl::InvalidArgumentError(absl::StrCat(
              "event ", event->id, " ", Where(*event), ": ", bad.reason,
              " (--on-invalid=fail; the source is not "
              "confirmed past it)"));
        }
        spdlog::warn("{}event {} {}: {}", st.log_prefix, event->id,
                     Where(*event), bad.reason);
        st.pending->item = std::move(bad);
        continue;
      }
      const auto& bad = std::get<InvalidEvent>(st.pending->item);
      if (AlreadyInKafka(bad.position)) return SkipPending(st);
      KafkaRecord record = DeadLetterRecord(bad, options_.dlq_topic);
      absl::Status topic = CheckTopic(st, record.topic);
      if (absl::IsUnavailable(topic)) return absl::OkStatus();  // later
      if (!topic.ok()) {
        // Never dropped: the event stays unconfirmed, resent on restart.
        return absl::FailedPreconditionError(absl::StrCat(
            "cannot dead-letter the invalid event ", Where(bad), " (",
            bad.reason, "): dead-letter topic: ", topic.message(),
            "; the source is not confirmed past it"));
      }
      RETURN_IF_ERROR(EnsureTransaction());
      absl::Status s = sink_->Produce(record, Tagged(st, st.pending->sequence));
      if (s.ok()) {
        if (exactly_once_) {
          batch_.Produced(Tagged(st, st.pending->sequence), bad.position,
                          record.topic);
        }
        ++stats_.events_dead_lettered;
        st.m.dead_lettered->Increment();
        st.stages.Produced(bad.position.commit_lsn.value(),
                           bad.commit_time_unix_ms);
        st.pending.reset();
        return absl::OkStatus();
      }
      if (absl::IsResourceExhausted(s)) return absl::OkStatus();
      return absl::Status(s.code(),
                          absl::StrCat("dead-lettering to ", options_.dlq_topic,
                                       " failed: ", s.message()));
    }
  }

  // --delivery=exactly-once: the event is at or below this source's
  // checkpoint, so a committed Kafka transaction holds it (it was resent
  // after a restart or reconnect). Nothing else is ever skipped.
  bool AlreadyInKafka(const EventPosition& position) const {
    return exactly_once_ && checkpoint_.has_value() && position <= *checkpoint_;
  }

  // The pending event is in Kafka already: it counts as acknowledged.
  absl::Status SkipPending(Stream& st) {
    ++stats_.events_skipped;
    st.tracker.Acknowledge(st.pending->sequence);
    st.pending.reset();
    return absl::OkStatus();
  }

  // The catalog's answer for `topic`; kUnavailable (cannot tell yet) is
  // logged once per distinct cause, the caller keeps the event pending.
  absl::Status CheckTopic(Stream& st, const std::string& topic) {
    absl::Status s = catalog_->Check(topic);
    st.waiting_for_topic = absl::IsUnavailable(s);
    if (absl::IsUnavailable(s)) {
      if (s.message() != last_topic_wait_) {
        spdlog::warn("{}; the event waits", std::string(s.message()));
        last_topic_wait_ = std::string(s.message());
      }
    } else {
      last_topic_wait_.clear();
    }
    return s;
  }

  // `tagged`: the stream's tag and its sequence (Tagged).
  void OnDelivery(uint64_t tagged, absl::Status status) {
    Stream* st = StreamOf(tagged);
    if (st == nullptr) {
      spdlog::error("delivery report for unknown sequence {}", tagged);
      return;
    }
    ObserveDelivery(*st, tagged, status);
    const uint64_t sequence = tagged & kSequenceMask;
    if (exactly_once_) {
      // Written, not committed: acknowledged when the transaction commits.
      // A failure dooms the open transaction (reports of records purged by
      // our own abort come after it and change nothing).
      if (!status.ok() && !aborting_) {
        spdlog::error("delivery of event #{} failed: {}", sequence,
                      status.ToString());
        if (txn_delivery_failure_.ok()) txn_delivery_failure_ = status;
      }
      return;
    }
    if (status.ok()) {
      st->tracker.Acknowledge(sequence);
      ++stats_.events_acknowledged;
    } else {
      spdlog::error("{}delivery of event #{} failed: {}", st->log_prefix,
                    sequence, status.ToString());
      st->tracker.Fail(sequence, std::move(status));
    }
  }

  // Metrics of one delivery report.
  void ObserveDelivery(Stream& st, uint64_t tagged,
                       const absl::Status& status) {
    if (!status.ok()) m_.delivery_errors->Increment();
    if (status.ok()) st.stall.Acknowledged();
    auto it = published_.find(tagged);
    if (it == published_.end()) return;  // a dead-lettered record
    if (status.ok()) {
      it->second.published_to->Increment();
      st.stages.Acknowledged(it->second.commit_lsn,
                             it->second.commit_time_unix_ms);
      int64_t ms =
          absl::ToUnixMillis(absl::Now()) - it->second.commit_time_unix_ms;
      st.m.commit_to_ack_seconds->Observe(std::max<int64_t>(ms, 0) / 1000.0);
    }
    published_.erase(it);
  }

  // Once per wakeup: lag by stage, the stall alarm (stage_metrics.h) and
  // the events in flight (also set per read: this one follows the
  // acknowledgements when the source has nothing to hand over).
  void UpdateStageMetrics(Stream& st, absl::Time now) {
    const size_t in_flight = st.tracker.EventsInFlight();
    st.m.events_in_flight->Set(static_cast<double>(in_flight));
    st.stages.Update(now, in_flight, st.pending.has_value(),
                     st.tracker.ConfirmableLsn());
    metrics::StallReason reason = metrics::StallReason::kUnacknowledged;
    if (st.pending.has_value()) {
      reason = st.waiting_for_topic ? metrics::StallReason::kTopicMetadata
                                    : metrics::StallReason::kQueueFull;
    }
    st.stall.Update(now, in_flight, reason);
  }

  // --- exactly-once ---------------------------------------------------------

  // The dev broker (librdkafka's mock cluster) accepts the transactional
  // requests but keeps aborted records visible and drops the offsets
  // committed in a transaction: exactly-once cannot hold there.
  absl::Status CheckBrokerHasTransactions() {
    ASSIGN_OR_RETURN(std::string cluster, sink_->ClusterId(absl::Seconds(10)));
    if (absl::StartsWith(cluster, kMockClusterPrefix)) {
      return absl::FailedPreconditionError(
          "--delivery=exactly-once needs Apache Kafka: the dev broker "
          "(librdkafka mock cluster) ignores transactions (aborted records "
          "stay visible, transactional offsets are dropped); use "
          "--delivery=at-least-once there");
    }
    return absl::OkStatus();
  }

  // Registers the transactional id (fencing every older instance and
  // aborting its open transaction), then reads this source's checkpoint.
  // The source's keep-alive work goes on meanwhile.
  absl::Status PrepareTransactions() {
    const absl::Time deadline = absl::Now() + kTxnPrepareTimeout;
    while (!transactions_initialized_) {
      absl::Status s = sink_->InitTransactions(kTxnCallTimeout);
      if (s.ok()) {
        transactions_initialized_ = true;
        break;
      }
      if (!absl::IsUnavailable(s) || absl::Now() > deadline) return s;
      spdlog::debug("exactly-once: init_transactions: {}",
                    std::string(s.message()));
      RETURN_IF_ERROR(Only().source.Durable(Only().tracker.ConfirmableLsn()));
    }
    std::vector<CommittedOffset> offsets;
    bool logged_wait = false;
    for (;;) {
      absl::StatusOr<std::vector<CommittedOffset>> o =
          sink_->ReadCheckpoints(transactional_id_, absl::Seconds(5));
      if (o.ok()) {
        offsets = *std::move(o);
        break;
      }
      if (!absl::IsUnavailable(o.status()) || absl::Now() > deadline) {
        return o.status();
      }
      if (!logged_wait) {
        spdlog::info("exactly-once: waiting for the checkpoint: {}",
                     std::string(o.status().message()));
        logged_wait = true;
      }
      RETURN_IF_ERROR(Only().source.Durable(Only().tracker.ConfirmableLsn()));
      absl::SleepFor(absl::Milliseconds(100));
    }
    ASSIGN_OR_RETURN(
        checkpoint_,
        NewestCheckpoint(offsets, Only().router.source, transactional_id_));
    if (checkpoint_.has_value()) {
      // A checkpoint from another history (a database restored from a
      // backup) says nothing about this one's events; skipping by it could
      // lose them.
      absl::Status c = Only().source.CheckCheckpoint(*checkpoint_);
      if (!c.ok()) {
        return absl::Status(
            c.code(),
            absl::StrCat("the exactly-once checkpoint of transactional id ",
                         transactional_id_, " is at ",
                         checkpoint_->commit_lsn.ToString(), "#",
                         checkpoint_->index, ", ", c.message(),
                         ": the database was restored or re-initialised; "
                         "start with a new --transactional-id"));
      }
    }
    transactions_ready_ = true;
    spdlog::info("exactly-once: transactional id {}, checkpoint {}",
                 transactional_id_,
                 checkpoint_.has_value()
                     ? absl::StrCat(checkpoint_->commit_lsn.ToString(), "#",
                                    checkpoint_->index)
                     : std::string("none"));
    return absl::OkStatus();
  }

  // --delivery=exactly-once: a record goes into an open Kafka transaction.
  absl::Status EnsureTransaction() {
    if (!exactly_once_ || batch_.open()) return absl::OkStatus();
    RETURN_IF_ERROR(sink_->BeginTransaction());
    batch_.Began(absl::Now());
    return absl::OkStatus();
  }

  // Commits the open Kafka transaction with its checkpoint and acknowledges
  // its events. A transaction that must be aborted, or a fenced producer,
  // stops the run without confirming past them.
  absl::Status CommitOpenTransaction(
      absl::Time deadline = absl::InfiniteFuture()) {
    if (!exactly_once_ || !batch_.open()) return absl::OkStatus();
    RETURN_IF_ERROR(DeliveryFailureInTransaction());
    if (batch_.size() > 0 && !checkpoint_sent_) {
      // The records first: the group coordinator refuses an offset for a
      // topic it does not know yet (one auto-created by these records).
      while (sink_->OutQueueLength() > 0) {
        sink_->Flush(kTxnCallTimeout).IgnoreError();
        RETURN_IF_ERROR(DeliveryFailureInTransaction());
        RETURN_IF_ERROR(FencedOrFatal());
        if (absl::Now() > deadline) {
          return TransactionFailed(absl::DeadlineExceededError(
              "records of the transaction still in flight"));
        }
        RETURN_IF_ERROR(KeepSourceAlive());
      }
      const EventPosition& last = batch_.last_position();
      std::string metadata =
          EncodeCheckpoint(Checkpoint{Only().router.source, last});
      for (;;) {
        absl::Status s = sink_->SendCheckpoint(
            transactional_id_, batch_.first_topic(), /*partition=*/0,
            CheckpointOffset(last), metadata, kTxnCallTimeout);
        if (s.ok()) break;
        if (!absl::IsUnavailable(s) || absl::Now() > deadline) {
          return TransactionFailed(s);
        }
        RETURN_IF_ERROR(KeepSourceAlive());
      }
      checkpoint_sent_ = true;
    }
    for (;;) {
      absl::Status s = sink_->CommitTransaction(kTxnCallTimeout);
      if (s.ok()) break;
      if (!absl::IsUnavailable(s) || absl::Now() > deadline) {
        return TransactionFailed(s);
      }
      // Not known yet (records still in flight): calling again resumes.
      RETURN_IF_ERROR(KeepSourceAlive());
    }
    checkpoint_sent_ = false;
    if (batch_.size() > 0) checkpoint_ = batch_.last_position();
    std::vector<uint64_t> committed = batch_.TakeCommitted();
    // One stream (tag 0): the tagged sequence is the stream's own.
    for (uint64_t sequence : committed) Only().tracker.Acknowledge(sequence);
    if (!committed.empty()) Only().stall.Acknowledged();  // progress, too
    stats_.events_acknowledged += committed.size();
    ++stats_.transactions_committed;
    spdlog::debug(
        "exactly-once: committed a Kafka transaction of {} events, "
        "checkpoint {}#{}",
        committed.size(),
        checkpoint_.has_value() ? checkpoint_->commit_lsn.ToString()
                                : std::string("-"),
        checkpoint_.has_value() ? checkpoint_->index : 0);
    return absl::OkStatus();
  }

  // The sink's fatal error, explained when it is a fencing.
  absl::Status FencedOrFatal() {
    absl::Status fatal = sink_->fatal_error();
    if (fatal.ok() || !exactly_once_) return fatal;
    return TransactionFailed(absl::AbortedError(fatal.message()));
  }

  // The source's keep-alive work while a transactional call waits; the
  // connection may be gone already (a reconnect commits first).
  absl::Status KeepSourceAlive() {
    if (!Only().connected) return absl::OkStatus();
    absl::Status s = Only().source.Durable(Only().tracker.ConfirmableLsn());
    // A lost connection is not the transaction's problem: the commit goes
    // on, and the reconnect that follows notices it again.
    if (absl::IsUnavailable(s)) {
      Disconnect(Only());
      return absl::OkStatus();
    }
    return s;
  }

  // A delivery inside the open transaction failed: it cannot commit.
  absl::Status DeliveryFailureInTransaction() {
    if (txn_delivery_failure_.ok()) return absl::OkStatus();
    return TransactionFailed(absl::FailedPreconditionError(
        absl::StrCat("a delivery failed: ", txn_delivery_failure_.message())));
  }

  // The transaction cannot commit: abort it (unless fenced) and stop. Its
  // events were never acknowledged, so nothing past them is confirmed; the
  // next start resends them and skips what the checkpoint covers.
  absl::Status TransactionFailed(const absl::Status& cause) {
    aborting_ = true;
    if (absl::IsAborted(cause)) {
      batch_.Aborted();
      return absl::AbortedError(absl::StrCat(
          "exactly-once: this producer was fenced or failed for good (",
          cause.message(), "); another outboxd with transactional id ",
          transactional_id_,
          " has probably taken over. Stopping without confirming past the "
          "uncommitted events"));
    }
    absl::Status abort = sink_->AbortTransaction(absl::Seconds(10));
    batch_.Aborted();
    return absl::AbortedError(absl::StrCat(
        "exactly-once: Kafka transaction aborted (", cause.message(), ")",
        abort.ok() ? "" : absl::StrCat(" [abort: ", abort.message(), "]"),
        ". Stopping without confirming past its events; a restart resends "
        "them from the source"));
  }

  // --- the end --------------------------------------------------------------

  void LogProgress() {
    if (streams_.size() == 1) {
      const Stream& st = Only();
      spdlog::info(
          "events produced {} acknowledged {} dead-lettered {} in flight {}, "
          "confirmed {}, {}",
          stats_.events_produced, stats_.events_acknowledged,
          stats_.events_dead_lettered, st.tracker.EventsInFlight(),
          st.source.Describe(st.tracker.ConfirmableLsn()),
          st.source.Progress());
      return;
    }
    size_t connected = 0;
    uint64_t in_flight = 0;
    for (const auto& st : streams_) {
      connected += st->connected ? 1 : 0;
      in_flight += st->tracker.EventsInFlight();
      spdlog::debug("{}{}, in flight {}, confirmed {}, {}", st->log_prefix,
                    st->connected ? "streaming" : "not streaming",
                    st->tracker.EventsInFlight(),
                    st->source.Describe(st->tracker.ConfirmableLsn()),
                    st->source.Progress());
    }
    spdlog::info(
        "events produced {} acknowledged {} dead-lettered {} in flight {}, "
        "{} of {} sources streaming",
        stats_.events_produced, stats_.events_acknowledged,
        stats_.events_dead_lettered, in_flight, connected, streams_.size());
  }

  // Waits for outstanding deliveries (bounded), confirms what is
  // acknowledged and ends every source. After a failure it only confirms.
  absl::Status Finish(bool clean) {
    for (const auto& st : streams_) st->m.streaming->Set(0);
    m_.streaming->Set(0);
    absl::Status final_commit;  // exactly-once: the last transaction's
    if (exactly_once_ && sink_ != nullptr && batch_.open()) {
      if (clean) {
        // What was produced is committed (with its checkpoint), then
        // confirmed; a partly produced source transaction is resent by the
        // next start and its committed part skipped.
        final_commit =
            CommitOpenTransaction(absl::Now() + options_.shutdown_timeout);
        if (!final_commit.ok()) {
          spdlog::error("{}", std::string(final_commit.message()));
        }
      } else if (sink_->fatal_error().ok()) {
        // Read-committed consumers would wait for it until it times out.
        aborting_ = true;
        sink_->AbortTransaction(absl::Seconds(5)).IgnoreError();
        batch_.Aborted();
      }
    } else if (sink_ != nullptr && clean) {
      absl::Time deadline = absl::Now() + options_.shutdown_timeout;
      while (sink_->OutQueueLength() > 0 && absl::Now() < deadline) {
        sink_->Poll(absl::Milliseconds(50));
        for (const auto& st : streams_) {
          if (st->connected) {
            st->source.Durable(st->tracker.ConfirmableLsn()).IgnoreError();
          }
        }
      }
      if (sink_->OutQueueLength() > 0) {
        spdlog::warn("{} events not acknowledged at stop; they will be resent",
                     sink_->OutQueueLength());
      }
    }
    absl::Status s;
    for (const auto& st : streams_) {
      if (st->connected) {
        absl::Status f = st->source.Finish(st->tracker.ConfirmableLsn(), clean);
        if (!f.ok()) {
          spdlog::error("{}{}", st->log_prefix, std::string(f.message()));
          if (s.ok()) s = f;
        }
        st->connected = false;
      }
    }
    stats_.confirmed = Only().tracker.ConfirmableLsn().value();
    LogProgress();
    for (const auto& st : streams_) {
      spdlog::info("{}confirmed position {}", st->log_prefix,
                   st->source.Describe(st->tracker.ConfirmableLsn()));
    }
    if (exactly_once_) {
      spdlog::info(
          "exactly-once: {} transactions committed, {} resent events "
          "skipped (at or below the checkpoint)",
          stats_.transactions_committed, stats_.events_skipped);
    }
    // A last transaction that did not commit is not confirmed: exit 1.
    return s.ok() ? final_commit : s;
  }

  const PublisherOptions options_;  // a copy: callers may pass a temporary
  metrics::OutboxdMetrics& m_;      // the process's (shared) metrics
  SinkFactory sink_factory_;
  PipelineStats stats_;
  // Declared before the sink, which is destroyed first: no delivery report
  // can reach a destroyed tracker.
  std::vector<std::unique_ptr<Stream>> streams_;
  const bool exactly_once_;
  TransactionBatch batch_;        // the open Kafka transaction
  std::string transactional_id_;  // also the checkpoint's consumer group
  // This source's newest committed checkpoint: every event at or below it
  // is in Kafka.
  std::optional<EventPosition> checkpoint_;
  bool broker_checked_ = false;
  bool transactions_initialized_ = false;
  bool transactions_ready_ = false;  // initialised, checkpoint read
  bool checkpoint_sent_ = false;     // for the open transaction
  bool aborting_ = false;
  absl::Status txn_delivery_failure_;
  std::unique_ptr<Sink> sink_;
  // Asks sink_ whether a topic can take records (names, existence).
  std::unique_ptr<TopicCatalog> catalog_;
  std::string last_topic_wait_;  // the last "cannot tell yet" logged
  bool sink_waited_ = false;     // WaitUntilSinkReady ran (once per run)
  const std::atomic<bool>* stop_ = nullptr;
  absl::flat_hash_map<uint64_t, PublishedEvent> published_;
  std::vector<pollfd> fds_;       // Sleep's, kept to avoid an allocation
  std::vector<Stream*> watched_;  // the streams of fds_'s first entries
};

Publisher::Publisher(const PublisherOptions& options, EventSource& source,
                     metrics::OutboxdMetrics& metrics, SinkFactory sink_factory)
    : Publisher(options, {PublisherStream{&source, nullptr, ""}}, metrics,
                std::move(sink_factory)) {}

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
