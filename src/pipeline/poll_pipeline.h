// PollPipeline: the polling publishers (--source=poll and --source=notify).
// Wires, on one thread:
//
//   OutboxPoller (a batch = one transaction, rows locked) -> Route
//     -> KafkaProducer -> (delivery reports) AckTracker
//     -> OutboxPoller::CompleteBatch (mark / delete + COMMIT)
//
// The same router, producer and tracker as the CDC pipeline, and the same
// rule (DESIGN.md section 3): a row is marked published (or deleted) only
// after Kafka acknowledged it; a batch not fully acknowledged is rolled back
// and its rows are published again later (at-least-once). Each batch is one
// "transaction" of the tracker, at the position of its batch number.
//
// Threading: RunPollPipeline runs on the calling thread; `stop` may be set
// from a signal handler.
#ifndef OUTBOXD_PIPELINE_POLL_PIPELINE_H_
#define OUTBOXD_PIPELINE_POLL_PIPELINE_H_

#include <atomic>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "kafka/producer.h"
#include "metrics/outboxd_metrics.h"
#include "outbox/router.h"
#include "pipeline/publisher_options.h"
#include "pipeline/reconnect_backoff.h"
#include "sources/outbox_poller.h"

namespace outboxd {

struct PollPipelineOptions {
  OutboxPollerOptions poller;  // notify_channel set: --source=notify
  RouterOptions router;
  ProducerOptions producer;
  // Time between polls when the last batch was not full; in notify mode the
  // safety net for lost notifications.
  absl::Duration poll_interval = absl::Seconds(1);
  std::string dlq_topic = "outbox.dlq";
  InvalidEventPolicy on_invalid = InvalidEventPolicy::kDeadLetter;
  // How long a stop may wait for the open batch's acknowledgements before
  // rolling it back.
  absl::Duration shutdown_timeout = absl::Seconds(8);
  // Reconnection after a lost connection (and at start), as --source=cdc:
  // the open batch is rolled back and its rows are sent again.
  ReconnectOptions reconnect;
  // May be null (metrics off); must outlive the run.
  metrics::OutboxdMetrics* metrics = nullptr;
};

// Publishes until `stop`, then finishes the open batch if it is acknowledged
// within shutdown_timeout (else rolls it back) and returns OK. A lost
// connection (kUnavailable) is retried with `reconnect`'s backoff. Returns
// the cause on failure (kFailedPrecondition for a missing table or column,
// kUnavailable once reconnect.give_up_after is spent, the delivery error for
// a failed delivery), never having marked an unacknowledged row.
absl::Status RunPollPipeline(const PollPipelineOptions& options,
                             const std::atomic<bool>& stop,
                             PipelineStats* stats = nullptr);

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_POLL_PIPELINE_H_
