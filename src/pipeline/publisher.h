// Publisher: the one publishing core behind every source (--source=cdc,
// poll, notify). It owns the loop, on one thread:
//
//   EventSource::Read -> RecordBuilder (value format, CloudEvents, route)
//     -> TopicCatalog -> Delivery (exactly-once admission) -> Sink::Produce
//     -> (delivery reports) Delivery -> AckTracker -> EventSource::Durable
//
// and its pieces each own one concern: pipeline/record_builder.h (what an
// event becomes in Kafka, dead-letter records), pipeline/delivery.h (how a
// record becomes acknowledged: at-least-once or Kafka transactions),
// pipeline/source_session.h (one source: connect, backoff, tracker,
// pending event, isolation), pipeline/publisher_recovery.h (how the run
// goes on after a failure: reconnect, rewind, a new producer, isolate or
// stop). The source only connects, hands over
// transactions of events and is told how far they are durable
// (sources/event_source.h).
//
// Backpressure has one shape: an event the sink cannot queue stays pending,
// and the source is not read while it is (the source's own buffer, e.g. the
// walsender's, holds the rest); the source's keep-alive work goes on.
//
// The confirmed-position rule: the position given to
// EventSource::Durable never passes an event Kafka has not acknowledged
// (or, exactly-once, whose transaction has not committed). A failed
// delivery, a fatal producer, an invalid event under --on-invalid=fail or a
// dead-letter topic that cannot take a record stops the run without
// confirming past it.
//
// Waking: one thread, woken by events rather than timers. Per wakeup it
// reads the clock once, serves the sink's delivery reports (Sink::Poll(0)),
// tells the source what is durable (EventSource::Durable) and then reads
// everything the source holds without waiting (bounded per wakeup); then it
// sleeps in one poll() on the source's descriptor (not while an event waits
// for room in the sink: backpressure), the sink's delivery-report
// descriptor and the stop descriptor, until the earliest of the source's
// NextDue() (CDC: the standby status update), the Kafka transaction's
// deadline and the progress log.
//
// Several sources (--databases): one sink, shared, and per source its own
// acknowledgement tracker (so each source is confirmed only up to its own
// acknowledged events), pending event, connection and reconnect backoff,
// lag by stage and stall alarm, all on the same thread and in the same
// poll(): a source that loses its connection, or waits for a slot active
// in another process, reconnects on its own backoff while the others go
// on. The sequence each record carries through the sink names its source
// (high bits), so a delivery report finds its tracker. A failure of one
// source's own that no reconnect cures (a failed delivery of its event, a
// lost slot, --on-invalid=fail, a refused login) stops that source only:
// never confirmed past it, outboxd_source_failed 1, retried from its
// confirmed position on a slower backoff once its reports are in; the run
// ends when every source has failed. With one source such a failure stops
// the run, and so does anything that breaks the shared sink (a fatal
// producer error).
//
// Threading: Run() on the calling thread; `stop` may be set from a signal
// handler. Not thread-safe otherwise.
#ifndef OUTBOXD_PIPELINE_PUBLISHER_H_
#define OUTBOXD_PIPELINE_PUBLISHER_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "kafka/producer.h"
#include "metrics/outboxd_metrics.h"
#include "pipeline/acknowledged_ids.h"
#include "pipeline/delivery.h"
#include "pipeline/publisher_options.h"
#include "pipeline/record_builder.h"
#include "pipeline/source_session.h"
#include "sources/event_source.h"

namespace outboxd {

struct PublisherOptions {
  // Value format, CloudEvents, route, dead-letter topic.
  RecordOptions records;
  ProducerOptions producer;
  InvalidEventPolicy on_invalid = InvalidEventPolicy::kDeadLetter;
  DeliveryGuarantee delivery = DeliveryGuarantee::kAtLeastOnce;
  // --delivery=exactly-once: the transactional id and the batches.
  TransactionalOptions transactions;
  // How long a stop may wait for outstanding acknowledgements.
  absl::Duration shutdown_timeout = absl::Seconds(8);
  // Reconnect backoff, stall alarm and read coalescing of each source
  // (pipeline/source_session.h). After a wakeup that read transactions
  // from a live source (one with a descriptor), the source is read again a
  // moment later, so that a few are read and produced per wakeup; the wait
  // grows with the rate (pipeline/read_coalescer.h) up to
  // session.coalesce. Zero: read at once.
  SessionOptions session;
  // Readable once `stop` is set (common/stop_signal.h StopSignalFd()), so
  // that the loop's poll() wakes at once; -1: the loop looks at `stop` at
  // least every second instead.
  int stop_fd = -1;
};

// The metrics of one run: the caller's, or (metrics off) the null object
// (OutboxdMetrics on a private registry nobody serves), so that no stage
// needs a null check.
class RunMetrics {
 public:
  explicit RunMetrics(metrics::OutboxdMetrics* given);
  metrics::OutboxdMetrics& get() { return *metrics_; }

 private:
  std::unique_ptr<metrics::OutboxdMetrics> own_;
  metrics::OutboxdMetrics* metrics_;
};

// One source of the Publisher.
struct PublisherStream {
  EventSource* source = nullptr;
  // Prefixes its log lines ("[name] ") and names its metrics
  // (metrics.ForSource(name): labelled source="<name>"); "" for neither,
  // the one source of a process without names.
  std::string name;
  // Where the ids of its acknowledged events go (the reconciler's,
  // pipeline/reconciler.h); nullptr: nowhere. Must outlive the Publisher.
  AcknowledgedIds* acknowledged = nullptr;
};

class Publisher {
 public:
  // One sink for every source (see above); one source is a list of one.
  // With --delivery=exactly-once, one only (Run says kInvalidArgument).
  // The sources and the metrics must outlive the Publisher.
  Publisher(const PublisherOptions& options,
            std::vector<PublisherStream> streams,
            metrics::OutboxdMetrics& metrics,
            SinkFactory sink_factory = KafkaSinkFactory());
  ~Publisher();
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  // Publishes until `stop`, then waits (at most shutdown_timeout) for what
  // is in flight, confirms what is acknowledged, ends the source cleanly
  // and returns OK. Returns the cause when something fails, never having
  // confirmed past an unacknowledged event.
  absl::Status Run(const std::atomic<bool>& stop);

  const PipelineStats& stats() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_PUBLISHER_H_
