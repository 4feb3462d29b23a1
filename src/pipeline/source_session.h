// SourceSession: one source of the Publisher (pipeline/publisher.h) and
// everything kept for it: its connection and reconnect backoff, its
// acknowledgement tracker (and so its own confirmed position), the event
// waiting for room in the sink, the isolation of a failure of its own and
// the recovery from it, its record builder (outbox.source is its identity)
// and its lag by stage. Only the sink, the delivery mode and the topic
// catalog are shared between sessions; what a session needs of them is
// handed to it as functions (SessionSteps), never as the Publisher.
//
// Threading: the Publisher's thread only.
#ifndef OUTBOXD_PIPELINE_SOURCE_SESSION_H_
#define OUTBOXD_PIPELINE_SOURCE_SESSION_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <variant>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "metrics/outboxd_metrics.h"
#include "outbox/event.h"
#include "pipeline/ack_tracker.h"
#include "pipeline/acknowledged_ids.h"
#include "pipeline/read_coalescer.h"
#include "pipeline/reconnect_backoff.h"
#include "pipeline/record_builder.h"
#include "pipeline/reserved_header_log.h"
#include "pipeline/stage_metrics.h"
#include "sources/event_source.h"

namespace outboxd {

struct SessionOptions {
  ReconnectOptions reconnect;
  // Events pending and nothing acknowledged for this long: the stall alarm.
  absl::Duration stall_timeout = absl::Seconds(60);
  absl::Duration coalesce = absl::ZeroDuration();
  double coalesce_min_rate = ReadCoalescer::kMinRate;
};

// What a session needs from the rest of the Publisher while it connects.
struct SessionSteps {
  // Before the source's Connect (the sink made usable first).
  std::function<void()> before_connect;
  // After it, with the source's identity known: the sink exists and the
  // delivery mode is ready. A failure fails the connect.
  std::function<absl::Status(const std::string& identity,
                             const std::string& history)>
      after_connect;
  // The source started over at a new position (ConnectResult::restart_at),
  // before after_connect.
  std::function<void()> restarted;
  // Waits until everything in flight is acknowledged (ConnectContext).
  std::function<absl::Status()> drain_in_flight;
};

class SourceSession {
 public:
  using Tracker = BasicAckTracker<SourcePosition>;

  // What waits to be produced while the sink's queue is full.
  struct Pending {
    std::variant<OutboxEvent, InvalidEvent> item;
    uint64_t sequence;  // the tracker's (Tracker::AddEvent)
    // AcknowledgedIds::Hash of the event's id (nullopt: none kept).
    std::optional<uint64_t> id_hash;
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

  // `source` and `metrics` (the source's) must outlive the session.
  // `name` prefixes its log lines ("" for none).
  SourceSession(EventSource& source, metrics::SourceMetrics& metrics,
                const std::string& name, const SessionOptions& options,
                const RecordOptions& records);
  SourceSession(const SourceSession&) = delete;
  SourceSession& operator=(const SourceSession&) = delete;

  // --- connecting -----------------------------------------------------------

  // One attempt to connect. A failure worth retrying (kUnavailable:
  // connection refused, server restarting, slot active in another process)
  // schedules the next attempt on the session's backoff and returns OK;
  // anything else, or --reconnect-give-up, is returned.
  absl::Status AttemptConnect(const SessionSteps& steps,
                              const std::atomic<bool>& stop);
  // Ends the source's connection (if any).
  void Disconnect();
  // The run ends: the source records its confirmed position and closes
  // (`clean`), or only gives back what is not confirmed.
  absl::Status Finish(bool clean);
  // After a lost connection (Disconnect first): the source hands over
  // again, from the confirmed position, every transaction not yet
  // committed in the tracker; the next attempt is immediate.
  void StartOver();
  // The delivery dropped every event in flight (an aborted Kafka
  // transaction, Delivery::TakeRewind): disconnects and starts over from
  // the confirmed position with a tracker that knows none of them.
  void Rewind();
  // A lost connection, a restarting server or a slot active in another
  // process; not a failed delivery of the session's.
  bool Reconnectable(const absl::Status& s) const {
    return absl::IsUnavailable(s) && tracker_.failure().ok();
  }
  // Stops this source only after a failure of its own, while the others
  // go on: disconnected without confirming past its acknowledged events,
  // outboxd_source_failed 1, retried from its confirmed position from
  // max_backoff on, doubling up to kMaxFailureRetry while the cause recurs.
  void Isolate(const absl::Status& cause);
  // An isolated session may connect again once every report of what it
  // produced arrived (no late report can then reach the fresh tracker);
  // false: not yet.
  bool Recover(absl::Time now);

  // --- reading --------------------------------------------------------------

  // The tracker's and the stages' part of a read: a transaction's begin or
  // commit, the source's idle position.
  void Track(const SourceRead& read);
  // Once per wakeup: lag by stage, the stall alarm, events in flight.
  void UpdateStageMetrics(absl::Time now);
  // Read coalescing after a wakeup that read `count` items, `commits` of
  // them commits, and ended with `drained`.
  void Coalesce(absl::Time now, int items, int commits);
  // No source transaction is half produced.
  bool AtBoundary() const {
    return !tracker_.transaction_open() && !pending.has_value();
  }
  // Whether to read it at this wakeup at all.
  bool WorthReading(absl::Time now) const;

  EventSource& source() { return source_; }
  const EventSource& source() const { return source_; }
  metrics::SourceMetrics& metrics() { return m_; }
  Tracker& tracker() { return tracker_; }
  const Tracker& tracker() const { return tracker_; }
  RecordBuilder& records() { return records_; }
  StageLag& stages() { return stages_; }
  StallAlarm& stall() { return stall_; }
  ReservedHeaderLog& reserved_headers() { return reserved_headers_; }
  // The ids it acknowledged, for the reconciler; nullptr: none kept.
  AcknowledgedIds* acknowledged() const { return acknowledged_; }
  void set_acknowledged(AcknowledgedIds* ids) { acknowledged_ = ids; }
  const std::string& log_prefix() const { return log_prefix_; }
  bool connected() const { return connected_; }
  bool failed() const { return failed_; }
  absl::Time retry_at() const { return retry_at_; }
  SourcePosition confirmable() const { return tracker_.Confirmable(); }
  std::string DescribeConfirmed() const {
    return source_.Describe(tracker_.Confirmable());
  }

  // The event waiting for room in the sink, and whether it waits for its
  // topic's state instead (retried on a timer).
  std::optional<Pending> pending;
  // Events whose record the broker refused for good (at-least-once): each
  // is produced again alone (the broker refuses a batch whole, so it may
  // have failed only because of a neighbour), and dead-lettered when it is
  // refused alone too. Never confirmed past before that.
  struct Refused {
    uint64_t sequence;  // the tracker's (Tracker::AddEvent)
    OutboxEvent event;
    absl::Status cause;
    bool alone = false;  // refused when it was the only record in flight
  };
  std::deque<Refused> refused;
  // The (tracker's) sequence of the refused event produced alone, until
  // its report.
  std::optional<uint64_t> retrying_alone;
  bool waiting_for_topic = false;
  // This wakeup's reading, and until when it coalesces.
  Drained drained = Drained::kNothing;
  absl::Time read_after = absl::InfinitePast();
  // Whether the last sleep found its descriptor readable (or did not watch
  // it): a session that had nothing is read again only then.
  bool readable = true;

 private:
  absl::Status Connect(const SessionSteps& steps);
  void SetStreaming(bool streaming);
  // The connection is gone: what was handed over of the open transaction
  // is dropped (resent from the confirmed position: duplicates at worst).
  void ForgetOpenTransaction();

  EventSource& source_;
  // Its source's (labelled source="<name>" when it has a name).
  metrics::SourceMetrics& m_;
  const std::string log_prefix_;  // "[name] " with several sources, or ""
  const SessionOptions options_;
  Tracker tracker_;
  RecordBuilder records_;
  bool connected_ = false;
  bool connected_once_ = false;
  // Reconnecting: the next attempt is due at retry_at_; the outage began
  // at down_since_ (--reconnect-give-up).
  ReconnectBackoff backoff_;
  absl::Time retry_at_ = absl::InfinitePast();
  absl::Time down_since_ = absl::InfiniteFuture();
  int attempts_ = 0;
  std::string last_cause_;  // the last "cannot stream yet" logged
  // Isolated by a failure of its own; last_failure_ is the last logged.
  bool failed_ = false;
  std::string last_failure_;
  ReconnectBackoff failure_backoff_;
  ReadCoalescer coalescer_;
  StageLag stages_;
  StallAlarm stall_;
  ReservedHeaderLog reserved_headers_;
  AcknowledgedIds* acknowledged_ = nullptr;
};

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_SOURCE_SESSION_H_
