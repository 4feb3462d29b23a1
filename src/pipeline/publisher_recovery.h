// PublisherRecovery: how the Publisher (pipeline/publisher.h) goes on after
// a failure, never confirming past what the failure may have lost. It
// decides whether a failure is recovered from and starts the sources over:
//
//  - a source's lost connection (Reconnect): what the open Kafka
//    transaction holds is committed first, then the source starts over from
//    its confirmed position;
//  - an exactly-once Kafka transaction aborted for a cause that may pass
//    (Rewound, Delivery::TakeRewind): every source starts over from its
//    confirmed position and resends; the checkpoint skips what Kafka has;
//  - at-least-once, a producer that failed for good (ReplaceFailedSink): it
//    is replaced and every source resends (duplicates, never a loss), at
//    most kMaxSinkReplacements times in a row;
//  - a failure of one source's own (IsolateOrStop): that source stops alone
//    while the others go on, or the run stops.
//
// A source that starts over is one reconnect (outboxd_reconnects_total),
// also when the commit before its reconnect aborts and rewinds it.
//
// Not thread-safe: the Publisher's loop thread only.
#ifndef OUTBOXD_PIPELINE_PUBLISHER_RECOVERY_H_
#define OUTBOXD_PIPELINE_PUBLISHER_RECOVERY_H_

#include <atomic>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kafka/sink.h"
#include "pipeline/delivery.h"
#include "pipeline/source_session.h"

namespace outboxd {

class PublisherRecovery {
 public:
  // Failed sinks replaced in a row (no event acknowledged between them)
  // before the run stops.
  static constexpr int kMaxSinkReplacements = 3;

  // `sessions` and `sink` are the Publisher's, seen as they change;
  // `new_sink` drops the failed sink (and what was produced into it) and
  // makes a new one. Each must outlive the recovery.
  PublisherRecovery(Delivery& delivery,
                    const std::vector<std::unique_ptr<SourceSession>>& sessions,
                    const std::unique_ptr<Sink>& sink,
                    std::function<absl::Status()> new_sink)
      : delivery_(delivery),
        sessions_(sessions),
        sink_(sink),
        new_sink_(std::move(new_sink)) {}
  PublisherRecovery(const PublisherRecovery&) = delete;
  PublisherRecovery& operator=(const PublisherRecovery&) = delete;

  // The run's stop flag (set before any other call).
  void set_stop(const std::atomic<bool>& stop) { stop_ = &stop; }

  // `s` of Delivery::Check or Commit: OK when the delivery dropped what
  // was in flight to have it resent (Delivery::TakeRewind): every session
  // then starts over from its confirmed position.
  absl::Status Rewound(absl::Status s);
  // Commits what the open Kafka transaction holds (no deadline), then
  // Rewound. True when the commit aborted and every session was rewound.
  absl::StatusOr<bool> Commit();

  // A lost connection, a restarting server or a slot active in another
  // process; not a broken producer or a failed delivery.
  bool Reconnectable(const SourceSession& st, const absl::Status& s) const;
  // `st`'s connection was lost (`cause`, Reconnectable): it disconnects,
  // the open Kafka transaction is committed (exactly-once: the source
  // resends from the confirmed position, and the checkpoint tells which of
  // those events Kafka has), and it starts over; its next attempt is
  // immediate.
  absl::Status Reconnect(SourceSession& st, const absl::Status& cause);

  // A failure of a session's own that is not worth a reconnect (a failed
  // delivery of its event, an invalid event under --on-invalid=fail, a lost
  // slot under --on-slot-loss=fail, a refused login or a missing database)
  // stops that source only while others go on and the shared producer is
  // sound (SourceSession::Isolate); otherwise, or when no other source is
  // left, it stops the run (returned).
  absl::Status IsolateOrStop(SourceSession& st, absl::Status cause);

  // At-least-once: a producer that failed for good (librdkafka's fatal
  // error, e.g. the idempotent producer's OUT_OF_ORDER_SEQUENCE_NUMBER
  // after a broker died) is replaced by a new one, and every source starts
  // over from its confirmed position: what the old one had in flight is
  // resent. Its fatal error stops the run after kMaxSinkReplacements in a
  // row, or where the delivery says a fatal error is a fencing.
  bool FailedSinkReplaceable() const;
  // OK and nothing done unless FailedSinkReplaceable.
  absl::Status ReplaceFailedSink();
  // A delivery report said OK: the replacements in a row start over.
  void Delivered() { sink_replacements_ = 0; }

 private:
  void RewindAll();

  Delivery& delivery_;
  const std::vector<std::unique_ptr<SourceSession>>& sessions_;
  const std::unique_ptr<Sink>& sink_;
  std::function<absl::Status()> new_sink_;
  const std::atomic<bool>* stop_ = nullptr;
  int sink_replacements_ = 0;  // in a row (ReplaceFailedSink)
};

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_PUBLISHER_RECOVERY_H_
