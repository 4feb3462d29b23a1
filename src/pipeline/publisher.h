// Publisher: the one publishing core behind every source (--source=cdc,
// poll, notify). It owns, on one thread:
//
//   EventSource::Read -> value format -> CloudEvents -> Route
//     (+ outbox.source)
//     -> TopicCatalog -> [exactly-once admission] -> Sink::Produce
//     -> (delivery reports) AckTracker -> EventSource::Durable
//
// plus dead-lettering by InvalidEventPolicy, Kafka transactions
// (--delivery=exactly-once), the reconnect-with-backoff loop, progress
// logs and metrics. The source only connects, hands over transactions of
// events and is told how far they are durable (sources/event_source.h).
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
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kafka/producer.h"
#include "kafka/sink.h"
#include "metrics/outboxd_metrics.h"
#include "outbox/cloudevents.h"
#include "outbox/router.h"
#include "outbox/value_format.h"
#include "pipeline/publisher_options.h"
#include "pipeline/read_coalescer.h"
#include "pipeline/reconnect_backoff.h"
#include "pipeline/transaction_batch.h"
#include "sources/event_source.h"

namespace outboxd {

struct PublisherOptions {
  RouterOptions router;  // outbox.source is the source's identity
  ProducerOptions producer;
  ValueFormat value_format = ValueFormat::kPayload;
  // --cloudevents: the records as CloudEvents (binary or structured). An
  // empty source: DefaultCloudEventsSource of the source's identity.
  CloudEventsOptions cloudevents;
  std::string dlq_topic = "outbox.dlq";
  InvalidEventPolicy on_invalid = InvalidEventPolicy::kDeadLetter;
  DeliveryGuarantee delivery = DeliveryGuarantee::kAtLeastOnce;
  // --delivery=exactly-once: the transactional id (and checkpoint group);
  // empty: "outboxd-" + the source identity ('/' as '-').
  std::string transactional_id;
  TransactionBatchOptions transactions;
  // How long a stop may wait for outstanding acknowledgements.
  absl::Duration shutdown_timeout = absl::Seconds(8);
  // A lost source connection (kUnavailable) is retried with backoff.
  ReconnectOptions reconnect;
  // Events pending and nothing acknowledged for this long: the stall alarm
  // (pipeline/stage_metrics.h); zero disables it.
  absl::Duration stall_timeout = absl::Seconds(60);
  // After a wakeup that read transactions from a live source (one with a
  // descriptor), wait a moment before reading it again, so that a few are
  // read and produced per wakeup instead of one: fewer wakeups per event.
  // The wait grows with the rate (pipeline/read_coalescer.h) up to this
  // maximum, which bounds the latency it adds; below coalesce_min_rate
  // transactions/s, and for the first transaction after a quiet spell,
  // there is none. Zero: read at once.
  absl::Duration coalesce = absl::ZeroDuration();
  double coalesce_min_rate = ReadCoalescer::kMinRate;
  // Readable once `stop` is set (common/stop_signal.h StopSignalFd()), so
  // that the loop's poll() wakes at once; -1: the loop looks at `stop` at
  // least every second instead.
  int stop_fd = -1;
};

// Creates the sink; `on_delivery` must be called once per produced record.
using SinkFactory = std::function<absl::StatusOr<std::unique_ptr<Sink>>(
    const ProducerOptions&, DeliveryCallback on_delivery)>;
// A librdkafka producer (KafkaProducer).
SinkFactory KafkaSinkFactory();

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

// One source of a Publisher with several.
struct PublisherStream {
  EventSource* source = nullptr;
  // Its own metrics (per-source series); nullptr: the Publisher's.
  metrics::OutboxdMetrics* metrics = nullptr;
  // Prefixes its log lines ("[name] "); "" for none.
  std::string name;
};

class Publisher {
 public:
  // `source` and `metrics` must outlive the Publisher.
  Publisher(const PublisherOptions& options, EventSource& source,
            metrics::OutboxdMetrics& metrics,
            SinkFactory sink_factory = KafkaSinkFactory());
  // Several sources, one sink (see above); one only with
  // --delivery=exactly-once (Run says kInvalidArgument). The sources and
  // the metrics must outlive the Publisher.
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
