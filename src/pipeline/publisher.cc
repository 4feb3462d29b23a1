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
// Items read per wakeup at most: during a backlog, delivery reports and the
// source's status updates are served every so many.
constexpr int kMaxReadsPerWakeup = 256;

// Milliseconds for poll(): rounded up, so that a short wait does not spin.
int PollTimeoutMs(absl::Duration d) {
  if (d == absl::InfiniteDuration()) return -1;
  if (d <= absl::ZeroDuration()) return 0;
  return static_cast<int>(std::min<int64_t>(
      absl::ToInt64Milliseconds(d + absl::Microseconds(999)), 1 << 30));
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
  Impl(const PublisherOptions& options, EventSource& source,
       metrics::OutboxdMetrics& metrics, SinkFactory sink_factory)
      : options_(options),
        source_(source),
        m_(metrics),
        sink_factory_(std::move(sink_factory)),
        router_(options.router),
        cloudevents_(options.cloudevents),
        exactly_once_(options.delivery == DeliveryGuarantee::kExactlyOnce),
        batch_(options.transactions),
        reserved_header_log_(&metrics),
        stages_(metrics),
        stall_(metrics, options.stall_timeout) {}

  absl::Status Run(const std::atomic<bool>& stop) {
    stop_ = &stop;
    absl::Status s = ConnectWithRetry();
    while (s.ok() && connected_) {
      s = Stream();  // OK only when stopped
      if (s.ok() || !Reconnectable(s)) break;
      spdlog::warn("{}; reconnecting", std::string(s.message()));
      // What the open Kafka transaction holds is committed first: the
      // source resends from the confirmed position, and the checkpoint
      // tells which of those events Kafka has. The old connection is of no
      // use meanwhile.
      Disconnect();
      if (absl::Status c = CommitOpenTransaction(); !c.ok()) {
        s = c;
        break;
      }
      m_.reconnects->Increment();
      ResetSession();
      s = ConnectWithRetry();
    }
    absl::Status end = Finish(s.ok());
    return s.ok() ? end : s;
  }

  const PipelineStats& stats() const { return stats_; }

 private:
  // What waits to be produced while the queue is full.
  struct Pending {
    std::variant<OutboxEvent, InvalidEvent> item;
    uint64_t sequence;
  };
  // The topic's counter and the commit time of each produced event in
  // flight, by sequence (metrics).
  struct PublishedEvent {
    metrics::Counter* published_to = nullptr;
    int64_t commit_time_unix_ms = 0;
    uint64_t commit_lsn = 0;  // the value of a CDC event's commit LSN
  };

  // --- connecting -----------------------------------------------------------

  // Connects the source; creates the sink first (at-least-once) or, needing
  // the source's identity, after the first connect (exactly-once, which
  // also checks the broker for transactions).
  absl::Status Connect() {
    // At-least-once, the sink comes first and is usable before the source
    // starts streaming: librdkafka connects, reads the brokers' metadata and
    // gets the idempotent producer id, and a standby's producer is warm when
    // it takes over. Exactly-once needs the source's identity first (the
    // transactional id); its broker check and init_transactions then do
    // the same.
    if (!exactly_once_) {
      if (sink_ == nullptr) RETURN_IF_ERROR(CreateSink());
      WaitUntilSinkReady();
    }
    ConnectContext ctx;
    ctx.first = !source_connected_once_;
    ctx.durable = tracker_.ConfirmableLsn();
    ctx.drain_in_flight = [this] { return DrainInFlight(); };
    ASSIGN_OR_RETURN(ConnectResult r, source_.Connect(ctx));
    connected_ = true;
    source_connected_once_ = true;
    if (r.restart_at.has_value()) {
      tracker_ = Tracker(*r.restart_at);
      stages_.Restart();
    }
    router_.source = std::move(r.identity);
    if (options_.cloudevents.source.empty()) {
      cloudevents_.source = DefaultCloudEventsSource(router_.source);
    }
    ready_line_ = std::move(r.ready_line);
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
    spdlog::info("{}", ready_line_);
    m_.streaming->Set(1);
    return absl::OkStatus();
  }

  // Waits (at most kSinkReadyTimeout), before the source connects (no
  // keep-alive is due yet), until the sink is usable, so that the first
  // event after a start or a takeover does not pay for it: a broker
  // answered a metadata request (ClusterId), which is also when librdkafka
  // asks for the idempotent producer id (it has no call that waits for the
  // id itself; on the dev broker it arrives within a millisecond of the
  // metadata), and, with --topic, the fixed topic's metadata (the catalog
  // keeps it). Brokers that do not answer in time only delay the first
  // event, as before: records wait in librdkafka's queue.
  void WaitUntilSinkReady() {
    const absl::Time since = absl::Now();
    absl::StatusOr<std::string> cluster = sink_->ClusterId(kSinkReadyTimeout);
    if (!cluster.ok()) {
      // Once, not on every connect attempt of a standby.
      if (!sink_wait_logged_) {
        spdlog::warn("Kafka not ready yet ({}); events wait for it",
                     std::string(cluster.status().message()));
        sink_wait_logged_ = true;
      }
      return;
    }
    sink_wait_logged_ = false;
    if (!options_.router.fixed_topic.empty()) {
      catalog_->Check(options_.router.fixed_topic).IgnoreError();
    }
    spdlog::debug("Kafka ready (cluster {}) in {}", *cluster,
                  absl::FormatDuration(absl::Now() - since));
  }

  void Disconnect() {
    if (connected_) source_.Disconnect();
    connected_ = false;
    m_.streaming->Set(0);
  }

  absl::Status CreateSink() {
    ProducerOptions producer_options = options_.producer;
    if (exactly_once_) {
      transactional_id_ = options_.transactional_id;
      if (transactional_id_.empty()) {
        transactional_id_ = absl::StrCat("outboxd-", router_.source);
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
  // process; not a broken producer or a failed delivery.
  bool Reconnectable(const absl::Status& s) const {
    return absl::IsUnavailable(s) && tracker_.failure().ok() &&
           txn_delivery_failure_.ok() &&
           (sink_ == nullptr || sink_->fatal_error().ok());
  }

  // Connect() until it succeeds, with capped jittered backoff while the
  // cause is kUnavailable. OK with !connected_ when stopped meanwhile.
  absl::Status ConnectWithRetry() {
    ReconnectBackoff backoff(options_.reconnect);
    const absl::Time since = absl::Now();
    std::string last_cause;
    for (int attempt = 1;; ++attempt) {
      absl::Status s = Connect();
      if (s.ok()) {
        if (attempt > 1) {
          spdlog::info("connected after {} attempts in {}", attempt,
                       absl::FormatDuration(absl::Now() - since));
        }
        return s;
      }
      Disconnect();
      if (absl::IsCancelled(s) && stop_->load()) return absl::OkStatus();
      if (!Reconnectable(s)) return s;
      const absl::Duration give_up = options_.reconnect.give_up_after;
      if (give_up > absl::ZeroDuration() && absl::Now() - since > give_up) {
        return absl::UnavailableError(
            absl::StrCat(s.message(), " (gave up after ",
                         absl::FormatDuration(give_up), ")"));
      }
      // One line per distinct cause, not one per attempt: a standby waits
      // quietly while the slot is active elsewhere.
      std::string cause(s.message());
      if (cause.find("is active for PID") != std::string::npos) {
        cause = "replication slot is active in another process";
      }
      absl::Duration delay = backoff.Next();
      if (cause != last_cause) {
        spdlog::info("cannot stream yet: {}; retrying with backoff up to {}",
                     std::string(s.message()),
                     absl::FormatDuration(options_.reconnect.max_backoff));
        last_cause = cause;
      } else {
        spdlog::debug("attempt {}: {}; next in {}", attempt,
                      std::string(s.message()), absl::FormatDuration(delay));
      }
      const absl::Time until = absl::Now() + delay;
      while (absl::Now() < until) {
        if (stop_->load(std::memory_order_relaxed)) return absl::OkStatus();
        // Deliveries go on meanwhile; failures stop the wait.
        if (sink_ != nullptr) {
          sink_->Poll(std::min(until - absl::Now(), absl::Milliseconds(50)));
          RETURN_IF_ERROR(sink_->fatal_error());
          RETURN_IF_ERROR(tracker_.failure());
          RETURN_IF_ERROR(txn_delivery_failure_);
        } else {
          absl::SleepFor(std::min(until - absl::Now(), absl::Milliseconds(50)));
        }
      }
    }
  }

  // Waits until nothing is in flight (a source starting over, e.g. after a
  // lost slot, sends what came before first).
  absl::Status DrainInFlight() {
    if (sink_ == nullptr) return absl::OkStatus();
    while (sink_->OutQueueLength() > 0) {
      sink_->Poll(absl::Milliseconds(50));
      RETURN_IF_ERROR(sink_->fatal_error());
      RETURN_IF_ERROR(tracker_.failure());
      if (stop_->load()) return absl::CancelledError("stop requested");
    }
    return absl::OkStatus();
  }

  // The connection is gone. The source hands over again, from the
  // confirmed position, every transaction not yet committed in the
  // tracker: what was handed over of one is dropped (duplicates at worst,
  // never a loss).
  void ResetSession() {
    if (pending_.has_value()) {
      // Never produced; it belongs to the open transaction, resent later.
      tracker_.Acknowledge(pending_->sequence);
      pending_.reset();
    }
    tracker_.AbandonOpenTransaction();
  }

  // --- the loop -------------------------------------------------------------

  absl::Status Stream() {
    absl::Time next_progress = absl::Now() + kProgressLogInterval;
    while (!stop_->load(std::memory_order_relaxed)) {
      // One wakeup: the clock once, the sink's delivery reports, the
      // source's keep-alive work, then what the source holds.
      const absl::Time now = absl::Now();
      sink_->Poll(absl::ZeroDuration());
      RETURN_IF_ERROR(FencedOrFatal());
      RETURN_IF_ERROR(tracker_.failure());
      RETURN_IF_ERROR(source_.Durable(tracker_.ConfirmableLsn()));
      if (exactly_once_) {
        RETURN_IF_ERROR(DeliveryFailureInTransaction());
        if (batch_.CommitDue(now, AtBoundary())) {
          RETURN_IF_ERROR(CommitOpenTransaction());
          if (!connected_) {
            return absl::UnavailableError(
                "source connection lost during a Kafka commit");
          }
        }
      }
      if (now >= next_progress) {
        LogProgress();
        next_progress = now + kProgressLogInterval;
      }
      UpdateStageMetrics(now);
      // Backpressure: the source is not read until the sink took the
      // pending event.
      if (pending_.has_value()) RETURN_IF_ERROR(TryProducePending());
      Drained drained = Drained::kPending;
      if (!pending_.has_value()) {
        if (source_.WaitFd() >= 0) {
          ASSIGN_OR_RETURN(drained, ReadAvailable(now));
        } else {
          ASSIGN_OR_RETURN(drained, ReadWaiting(now, next_progress));
        }
      }
      if (drained == Drained::kMore) continue;
      RETURN_IF_ERROR(Sleep(next_progress,
                            /*read_source=*/drained == Drained::kNothing));
    }
    spdlog::info("stop requested");
    return absl::OkStatus();
  }

  // How a wakeup's reading ended.
  enum class Drained {
    kNothing,   // the source has nothing now: sleep on it too
    kMore,      // there may be more: serve the sink and the source first
    kAwaiting,  // the source waits until what it handed over is durable
    kPending,   // an event waits for room in the sink (backpressure)
  };

  bool AtBoundary() const {
    return !tracker_.transaction_open() && !pending_.has_value();
  }

  // Reads, without waiting, what a source with a descriptor holds: at most
  // kMaxReadsPerWakeup items, so that delivery reports and status updates
  // are served between them during a backlog.
  absl::StatusOr<Drained> ReadAvailable(absl::Time now) {
    for (int n = 0; n < kMaxReadsPerWakeup; ++n) {
      ASSIGN_OR_RETURN(SourceRead read, source_.Read(absl::ZeroDuration()));
      if (read.nothing()) {
        stages_.SourceCaughtUp();
        return Drained::kNothing;
      }
      const bool awaiting = std::holds_alternative<AwaitDurable>(read.item);
      RETURN_IF_ERROR(OnRead(std::move(read)));
      if (awaiting) return Drained::kAwaiting;
      if (pending_.has_value()) return Drained::kPending;
      if (exactly_once_ && batch_.CommitDue(now, AtBoundary())) {
        return Drained::kMore;
      }
    }
    return Drained::kMore;
  }

  // One read of a source without a descriptor: it waits by itself (at
  // most until the loop has work of its own).
  absl::StatusOr<Drained> ReadWaiting(absl::Time now,
                                      absl::Time next_progress) {
    absl::Duration wait = std::min(
        kIdleWait,
        std::max(WakeDeadline(next_progress) - now, absl::ZeroDuration()));
    if (tracker_.EventsInFlight() > 0 && sink_->EventFd() < 0) {
      wait = std::min(wait, kBusyPollInterval);
    }
    ASSIGN_OR_RETURN(SourceRead read, source_.Read(wait));
    if (read.nothing()) stages_.SourceCaughtUp();
    const bool awaiting = std::holds_alternative<AwaitDurable>(read.item);
    RETURN_IF_ERROR(OnRead(std::move(read)));
    if (awaiting) return Drained::kAwaiting;
    if (pending_.has_value()) return Drained::kPending;
    return Drained::kMore;  // the read waited already
  }

  // The earliest time the loop has work without any event: the source's
  // periodic work, the Kafka transaction's deadline, the progress log, the
  // stall alarm.
  absl::Time WakeDeadline(absl::Time next_progress) const {
    absl::Time until = std::min(next_progress, source_.NextDue());
    until = std::min(until, stall_.Deadline(tracker_.EventsInFlight()));
    if (exactly_once_) until = std::min(until, batch_.Deadline());
    return until;
  }

  // Sleeps in one poll() until the source (`read_source`), the sink or the
  // stop descriptor has something, or WakeDeadline. No descriptor where a
  // timer has to do: a sink without one is polled every kBusyPollInterval
  // while records are in flight, the stop flag without one looked at every
  // kIdleWait, and an event waiting for a topic's state retried every
  // kPendingPollInterval.
  absl::Status Sleep(absl::Time next_progress, bool read_source) {
    pollfd fds[3];
    nfds_t n = 0;
    const int source_fd = read_source ? source_.WaitFd() : -1;
    const int sink_fd = sink_->EventFd();
    for (int fd : {source_fd, sink_fd, options_.stop_fd}) {
      if (fd >= 0) fds[n++] = pollfd{fd, POLLIN, 0};
    }
    // The clock again: the wakeup's work (a Kafka commit) may have taken a
    // while, and the status update must not be late by that much.
    const absl::Time now = absl::Now();
    absl::Time until = WakeDeadline(next_progress);
    if (sink_fd < 0 && tracker_.EventsInFlight() > 0) {
      until = std::min(until, now + kBusyPollInterval);
    }
    if (pending_.has_value() && waiting_for_topic_) {
      until = std::min(until, now + kPendingPollInterval);
    }
    if (options_.stop_fd < 0) until = std::min(until, now + kIdleWait);
    ++stats_.waits;
    if (n == 0) {
      // Nothing to poll() on: the sink waits (it serves what comes).
      sink_->Poll(std::max(until - now, absl::ZeroDuration()));
      return absl::OkStatus();
    }
    const int rc = poll(fds, n, PollTimeoutMs(until - now));
    if (rc == 0) ++stats_.wait_timeouts;
    if (rc < 0 && errno != EINTR) {
      return absl::InternalError(absl::StrCat("poll: ", std::strerror(errno)));
    }
    return absl::OkStatus();
  }

  absl::Status OnRead(SourceRead read) {
    if (auto* event = std::get_if<OutboxEvent>(&read.item)) {
      stages_.Received(event->position.commit_lsn.value(),
                       event->commit_time_unix_ms);
      RETURN_IF_ERROR(Publish(std::move(*event)));
    } else if (auto* bad = std::get_if<InvalidEvent>(&read.item)) {
      stages_.Received(bad->position.commit_lsn.value(),
                       bad->commit_time_unix_ms);
      RETURN_IF_ERROR(OnInvalid(std::move(*bad)));
    } else if (std::holds_alternative<SourceBegin>(read.item)) {
      tracker_.BeginTransaction();
    } else if (auto* commit = std::get_if<SourceCommit>(&read.item)) {
      tracker_.CommitTransaction(commit->position);
      stages_.Committed(commit->position);
    }
    if (read.idle_position.has_value()) {
      tracker_.ObserveServerWalEnd(*read.idle_position);
      stages_.ServerWalEnd(read.idle_position->value());
    }
    m_.events_in_flight->Set(static_cast<double>(tracker_.EventsInFlight()));
    return absl::OkStatus();
  }

  // --- producing ------------------------------------------------------------

  absl::Status Publish(OutboxEvent event) {
    if (options_.value_format != ValueFormat::kPayload) {
      // The router publishes the payload as the value: make it the envelope.
      event.payload = EncodeValue(event, options_.value_format);
      event.content_type =
          std::string(ValueFormatContentType(options_.value_format));
    }
    if (cloudevents_.mode != CloudEventsMode::kOff) {
      // Headers (binary) or the value's document (structured) of the
      // CloudEvent; an event that cannot be one is invalid.
      if (absl::Status s = ToCloudEvent(cloudevents_, &event); !s.ok()) {
        InvalidEvent bad =
            InvalidFrom(event, absl::StrCat("not a CloudEvent: ", s.message()));
        bad.content = EventAsJson(event);
        return OnInvalid(std::move(bad));
      }
    }
    if (!event.dropped_headers.empty()) {
      // Where() formats a string: only for the events it is logged for.
      reserved_header_log_.Note(event, Where(event));
    }
    pending_ = Pending{std::move(event), tracker_.AddEvent()};
    return TryProducePending();
  }

  // Counts and logs an invalid event; the error that stops the run under
  // --on-invalid=fail, OK when it is to be dead-lettered.
  absl::Status ReportInvalid(const InvalidEvent& bad) {
    m_.invalid_events->Increment();
    const std::string where = Where(bad);
    spdlog::warn("invalid event {}: {}", where, bad.reason);
    if (options_.on_invalid == InvalidEventPolicy::kFail) {
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid event ", where, ": ", bad.reason,
          " (--on-invalid=fail; the source is not confirmed past it)"));
    }
    return absl::OkStatus();
  }

  absl::Status OnInvalid(InvalidEvent bad) {
    RETURN_IF_ERROR(ReportInvalid(bad));
    pending_ = Pending{std::move(bad), tracker_.AddEvent()};
    return TryProducePending();
  }

  // Produces pending_; leaves it in place when the queue is full or the
  // topic's state is not known yet. An event whose topic cannot take it, or
  // that cannot be produced as it is, becomes an invalid event (at most
  // once) and is dead-lettered by policy.
  absl::Status TryProducePending() {
    for (;;) {
      if (auto* event = std::get_if<OutboxEvent>(&pending_->item)) {
        if (AlreadyInKafka(event->position)) return SkipPending();
        KafkaRecord record = Route(*event, router_);
        absl::Status topic = CheckTopic(record.topic);
        if (absl::IsUnavailable(topic)) return absl::OkStatus();  // later
        if (!topic.ok()) {
          InvalidEvent bad = Misrouted(*event, record.topic, topic);
          pending_->item = std::move(bad);
          RETURN_IF_ERROR(
              ReportInvalid(std::get<InvalidEvent>(pending_->item)));
          continue;
        }
        RETURN_IF_ERROR(EnsureTransaction());
        absl::Status s = sink_->Produce(record, pending_->sequence);
        if (s.ok()) {
          if (exactly_once_) {
            batch_.Produced(pending_->sequence, event->position, record.topic);
          }
          ++stats_.events_produced;
          published_[pending_->sequence] = {&m_.PublishedTo(record.topic),
                                            event->commit_time_unix_ms,
                                            event->position.commit_lsn.value()};
          stages_.Produced(event->position.commit_lsn.value(),
                           event->commit_time_unix_ms);
          pending_.reset();
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
        spdlog::warn("event {} {}: {}", event->id, Where(*event), bad.reason);
        pending_->item = std::move(bad);
        continue;
      }
      const auto& bad = std::get<InvalidEvent>(pending_->item);
      if (AlreadyInKafka(bad.position)) return SkipPending();
      KafkaRecord record = DeadLetterRecord(bad, options_.dlq_topic);
      absl::Status topic = CheckTopic(record.topic);
      if (absl::IsUnavailable(topic)) return absl::OkStatus();  // later
      if (!topic.ok()) {
        // Never dropped: the event stays unconfirmed, resent on restart.
        return absl::FailedPreconditionError(absl::StrCat(
            "cannot dead-letter the invalid event ", Where(bad), " (",
            bad.reason, "): dead-letter topic: ", topic.message(),
            "; the source is not confirmed past it"));
      }
      RETURN_IF_ERROR(EnsureTransaction());
      absl::Status s = sink_->Produce(record, pending_->sequence);
      if (s.ok()) {
        if (exactly_once_) {
          batch_.Produced(pending_->sequence, bad.position, record.topic);
        }
        ++stats_.events_dead_lettered;
        m_.dead_lettered->Increment();
        stages_.Produced(bad.position.commit_lsn.value(),
                         bad.commit_time_unix_ms);
        pending_.reset();
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
  absl::Status SkipPending() {
    ++stats_.events_skipped;
    tracker_.Acknowledge(pending_->sequence);
    pending_.reset();
    return absl::OkStatus();
  }

  // The catalog's answer for `topic`; kUnavailable (cannot tell yet) is
  // logged once per distinct cause, the caller keeps the event pending.
  absl::Status CheckTopic(const std::string& topic) {
    absl::Status s = catalog_->Check(topic);
    waiting_for_topic_ = absl::IsUnavailable(s);
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

  void OnDelivery(uint64_t sequence, absl::Status status) {
    ObserveDelivery(sequence, status);
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
      tracker_.Acknowledge(sequence);
      ++stats_.events_acknowledged;
    } else {
      spdlog::error("delivery of event #{} failed: {}", sequence,
                    status.ToString());
      tracker_.Fail(sequence, std::move(status));
    }
  }

  // Metrics of one delivery report.
  void ObserveDelivery(uint64_t sequence, const absl::Status& status) {
    if (!status.ok()) m_.delivery_errors->Increment();
    if (status.ok()) stall_.Acknowledged();
    auto it = published_.find(sequence);
    if (it == published_.end()) return;  // a dead-lettered record
    if (status.ok()) {
      it->second.published_to->Increment();
      stages_.Acknowledged(it->second.commit_lsn,
                           it->second.commit_time_unix_ms);
      int64_t ms =
          absl::ToUnixMillis(absl::Now()) - it->second.commit_time_unix_ms;
      m_.commit_to_ack_seconds->Observe(std::max<int64_t>(ms, 0) / 1000.0);
    }
    published_.erase(it);
  }

  // Once per wakeup: lag by stage and the stall alarm (stage_metrics.h).
  void UpdateStageMetrics(absl::Time now) {
    const size_t in_flight = tracker_.EventsInFlight();
    stages_.Update(now, in_flight, pending_.has_value(),
                   tracker_.ConfirmableLsn());
    metrics::StallReason reason = metrics::StallReason::kUnacknowledged;
    if (pending_.has_value()) {
      reason = waiting_for_topic_ ? metrics::StallReason::kTopicMetadata
                                  : metrics::StallReason::kQueueFull;
    }
    stall_.Update(now, in_flight, reason);
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
      RETURN_IF_ERROR(source_.Durable(tracker_.ConfirmableLsn()));
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
      RETURN_IF_ERROR(source_.Durable(tracker_.ConfirmableLsn()));
      absl::SleepFor(absl::Milliseconds(100));
    }
    ASSIGN_OR_RETURN(checkpoint_, NewestCheckpoint(offsets, router_.source,
                                                   transactional_id_));
    if (checkpoint_.has_value()) {
      // A checkpoint from another history (a database restored from a
      // backup) says nothing about this one's events; skipping by it could
      // lose them.
      absl::Status c = source_.CheckCheckpoint(*checkpoint_);
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
      std::string metadata = EncodeCheckpoint(Checkpoint{router_.source, last});
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
    for (uint64_t sequence : committed) tracker_.Acknowledge(sequence);
    if (!committed.empty()) stall_.Acknowledged();  // progress, too
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
    if (!connected_) return absl::OkStatus();
    absl::Status s = source_.Durable(tracker_.ConfirmableLsn());
    // A lost connection is not the transaction's problem: the commit goes
    // on, and the reconnect that follows notices it again.
    if (absl::IsUnavailable(s)) {
      Disconnect();
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
    spdlog::info(
        "events produced {} acknowledged {} dead-lettered {} in flight {}, "
        "confirmed {}, {}",
        stats_.events_produced, stats_.events_acknowledged,
        stats_.events_dead_lettered, tracker_.EventsInFlight(),
        source_.Describe(tracker_.ConfirmableLsn()), source_.Progress());
  }

  // Waits for outstanding deliveries (bounded), confirms what is
  // acknowledged and ends the source. After a failure it only confirms.
  absl::Status Finish(bool clean) {
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
        if (connected_)
          source_.Durable(tracker_.ConfirmableLsn()).IgnoreError();
      }
      if (sink_->OutQueueLength() > 0) {
        spdlog::warn("{} events not acknowledged at stop; they will be resent",
                     sink_->OutQueueLength());
      }
    }
    absl::Status s;
    if (connected_) {
      s = source_.Finish(tracker_.ConfirmableLsn(), clean);
      connected_ = false;
    }
    stats_.confirmed = tracker_.ConfirmableLsn().value();
    LogProgress();
    spdlog::info("confirmed position {}",
                 source_.Describe(tracker_.ConfirmableLsn()));
    if (exactly_once_) {
      spdlog::info(
          "exactly-once: {} transactions committed, {} resent events "
          "skipped (at or below the checkpoint)",
          stats_.transactions_committed, stats_.events_skipped);
    }
    // A last transaction that did not commit is not confirmed: exit 1.
    return s.ok() ? final_commit : s;
  }

  using Tracker = BasicAckTracker<SourcePosition>;

  const PublisherOptions options_;  // a copy: callers may pass a temporary
  EventSource& source_;
  metrics::OutboxdMetrics& m_;
  SinkFactory sink_factory_;
  PipelineStats stats_;
  RouterOptions router_;  // options.router plus the source identity
  // options.cloudevents, its default source from the source identity.
  CloudEventsOptions cloudevents_;
  std::string ready_line_;  // the source's, logged once connected
  Tracker tracker_;
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
  // Declared after the tracker: destroyed first, so no delivery report can
  // reach a destroyed tracker.
  std::unique_ptr<Sink> sink_;
  // Asks sink_ whether a topic can take records (names, existence).
  std::unique_ptr<TopicCatalog> catalog_;
  std::string last_topic_wait_;  // the last "cannot tell yet" logged
  // The pending event waits for its topic's state (not for room in the
  // sink, which the sink's descriptor signals): retried on a timer.
  bool waiting_for_topic_ = false;
  bool connected_ = false;
  bool source_connected_once_ = false;
  bool sink_wait_logged_ = false;  // "Kafka not ready yet", until it is
  const std::atomic<bool>* stop_ = nullptr;
  std::optional<Pending> pending_;
  absl::flat_hash_map<uint64_t, PublishedEvent> published_;
  ReservedHeaderLog reserved_header_log_;
  StageLag stages_;
  StallAlarm stall_;
};

Publisher::Publisher(const PublisherOptions& options, EventSource& source,
                     metrics::OutboxdMetrics& metrics, SinkFactory sink_factory)
    : impl_(std::make_unique<Impl>(options, source, metrics,
                                   std::move(sink_factory))) {}

Publisher::~Publisher() = default;

absl::Status Publisher::Run(const std::atomic<bool>& stop) {
  return impl_->Run(stop);
}

const PipelineStats& Publisher::stats() const { return impl_->stats(); }

}  // namespace outboxd
