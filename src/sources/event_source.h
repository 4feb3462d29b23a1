// EventSource: what the Publisher (pipeline/publisher.h) needs from where
// events come from. A source connects (and reconnects), hands over its
// events in transactions, and is told how far its events are durable in
// Kafka; the Publisher owns everything else (encoding, routing,
// backpressure, dead-lettering, acknowledgement, Kafka transactions,
// metrics, reconnect backoff). What the Publisher can tell by itself is not
// asked here: whether a transaction is open (it saw the SourceBegin), where
// an event is (its own position). docs/ARCHITECTURE.md "Adding a source".
//
//   --source=cdc     sources/cdc_source.h: a logical replication slot; a
//                    transaction is a PostgreSQL transaction, its position
//                    the commit's end LSN.
//   --source=poll    sources/poll_source.h: SELECT ... FOR UPDATE SKIP
//   --source=notify  LOCKED batches; a transaction is one batch, its
//                    position the batch's number.
//
// Waiting: a source that has a file descriptor (WaitFd) is read without
// waiting: the Publisher calls Read(absl::ZeroDuration()) until it says
// "nothing now" (SourceRead::nothing()), then sleeps in one poll() on that
// descriptor, the sink's delivery-report descriptor and the stop
// descriptor, until the earliest of the source's NextDue(), the Kafka
// transaction's deadline and the progress log. A source without one
// (WaitFd() == -1) waits inside Read(wait) itself, at most `wait`.
//
// Threading: the Publisher's thread calls every method.
#ifndef OUTBOXD_SOURCES_EVENT_SOURCE_H_
#define OUTBOXD_SOURCES_EVENT_SOURCE_H_

#include <compare>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <variant>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "outbox/event.h"
#include "outbox/outbox_mapper.h"

namespace outboxd {

// The status payload of WithRetryAfter.
inline constexpr absl::string_view kRetryAfterPayload =
    "type.outboxd/retry-after";

// An ordered position in one source's stream, opaque to the Publisher:
// the CDC source's are LSNs, the polling source's batch numbers. The
// confirmed position never passes an event Kafka has not acknowledged.
class SourcePosition {
 public:
  constexpr SourcePosition() = default;
  constexpr explicit SourcePosition(uint64_t value) : value_(value) {}
  constexpr uint64_t value() const { return value_; }
  friend constexpr auto operator<=>(SourcePosition, SourcePosition) = default;
  static constexpr SourcePosition Max(SourcePosition a, SourcePosition b) {
    return a < b ? b : a;
  }

 private:
  uint64_t value_ = 0;
};

// A source transaction begins: the events up to the next SourceCommit
// belong to it.
struct SourceBegin {};
// The open transaction ends; durable once all its events (and every
// earlier transaction's) are acknowledged.
struct SourceCommit {
  SourcePosition position;
};
// Nothing more until what was handed over is durable (the Publisher serves
// delivery reports meanwhile).
struct AwaitDurable {};

struct SourceRead {
  std::variant<std::monostate, SourceBegin, OutboxEvent, InvalidEvent,
               SourceCommit, AwaitDurable>
      item;
  // With no transaction open: the source's newest position; it becomes
  // durable once nothing before it is in flight (CDC keepalives).
  std::optional<SourcePosition> idle_position;
  // No item, but the source took something in and may hold more already
  // (CDC: a message that maps to no item, such as a Relation message inside
  // a transaction): read again before sleeping on WaitFd(), which only
  // tells about what has not been taken in yet.
  bool more = false;

  // Nothing at all now (no item, no position, nothing taken in): the
  // reader may sleep.
  bool nothing() const {
    return std::holds_alternative<std::monostate>(item) &&
           !idle_position.has_value() && !more;
  }
};

// Given to Connect.
struct ConnectContext {
  // True for the first connection, false for a reconnection.
  bool first = true;
  // The durable position so far (where a continued stream resumes).
  SourcePosition durable;
  // Waits until everything in flight is acknowledged (before a source
  // starts over, e.g. after a lost slot); fails like the Publisher would,
  // kCancelled when stopped.
  std::function<absl::Status()> drain_in_flight;
};

struct ConnectResult {
  // Set when the stream starts over at this position (a new slot, or the
  // first connection): nothing before it is tracked any more. Unset: the
  // stream continues from `durable`.
  std::optional<SourcePosition> restart_at;
  // outbox.source: a stable id of the stream, the same across reconnects
  // to the same database.
  std::string identity;
  // The history the positions belong to (CDC: the server's timeline; ""
  // for a source whose positions have one history). A position of another
  // history (e.g. an exactly-once checkpoint written before a failover)
  // says nothing about this one's events.
  std::string history;
  // The line the Publisher logs once the connect is complete ("streaming
  // from slot ...", "publishing from ..."): operators and tests wait for it.
  std::string ready_line;
};

// A Connect that fails with kUnavailable may say when to try again: a
// source that can tell cheaply when it is worth it (CDC: a standby asks
// whether the slot is still active in another process) is tried again
// after `after`, without the Publisher's growing backoff, and its repeated
// cause is logged once.
inline absl::Status WithRetryAfter(absl::Status s, absl::Duration after) {
  s.SetPayload(kRetryAfterPayload,
               absl::Cord(absl::StrCat(absl::ToInt64Microseconds(after))));
  return s;
}
inline std::optional<absl::Duration> RetryAfter(const absl::Status& s) {
  auto p = s.GetPayload(kRetryAfterPayload);
  int64_t us = 0;
  if (!p.has_value() || !absl::SimpleAtoi(std::string(*p), &us) || us < 0) {
    return std::nullopt;
  }
  return absl::Microseconds(us);
}

class EventSource {
 public:
  virtual ~EventSource() = default;

  // Connects (ctx.first) or reconnects after Disconnect. kUnavailable means
  // "try again later" (the Publisher backs off, or waits what
  // WithRetryAfter says); anything else stops.
  virtual absl::StatusOr<ConnectResult> Connect(const ConnectContext& ctx) = 0;
  // The connection is gone or abandoned: forget what was handed over of the
  // open transaction (it is handed over again after Connect).
  virtual void Disconnect() = 0;

  // The next item, waiting at most `wait` for one (zero: what is there
  // already, without blocking; SourceRead::nothing() when there is none).
  virtual absl::StatusOr<SourceRead> Read(absl::Duration wait) = 0;
  // A descriptor that is readable when Read(0) may have something, or -1:
  // Read(wait) waits by itself. Valid while connected.
  virtual int WaitFd() const { return -1; }
  // Read(0) may have something although WaitFd() is not readable: input
  // read into the source's own buffer outside Read (CDC: while a status
  // update waited for a full socket). The Publisher reads such a source
  // without waiting for its descriptor.
  virtual bool InputMayBeBuffered() const { return false; }
  // When Durable() has periodic work next (CDC: the standby status update);
  // the Publisher calls it by then even when nothing else happens.
  virtual absl::Time NextDue() const { return absl::InfiniteFuture(); }
  // Everything up to `durable` is in Kafka. Called once per wakeup of the
  // Publisher's loop (not per item), by NextDue(), and while it blocks (Kafka
  // transactional calls), so that the source's periodic work goes on (CDC:
  // record the position and send the standby status update when due; poll:
  // complete the batch). kUnavailable: the connection is lost.
  virtual absl::Status Durable(SourcePosition durable) = 0;
  // The run ends: record what is durable and close cleanly (`clean`), or
  // only give back what is not (after a failure).
  virtual absl::Status Finish(SourcePosition durable, bool clean) = 0;

  // The source-specific part of the progress line.
  virtual std::string Progress() const = 0;
  // A position as the source's users know it ("0/1A2B", "batch 7").
  virtual std::string Describe(SourcePosition position) const = 0;
  // --delivery=exactly-once: OK when `checkpoint` can belong to this
  // source's history (CDC: not past the database's WAL).
  virtual absl::Status CheckCheckpoint(const EventPosition& checkpoint) {
    return absl::OkStatus();
  }
};

}  // namespace outboxd

#endif  // OUTBOXD_SOURCES_EVENT_SOURCE_H_
