// EventProducer: a session's events into the shared sink, one at a time:
// the record (pipeline/record_builder.h), the topic's state
// (kafka/topic_catalog.h), admission by the delivery mode (already in
// Kafka? a Kafka transaction open? pipeline/delivery.h), and what an event
// becomes when it cannot go where it should: dead-lettered, or the run
// stopped, by --on-invalid. An event the sink's queue cannot take, or whose
// topic's state is not known yet, stays the session's pending event
// (backpressure: the Publisher does not read that source meanwhile).
// It also keeps what the metrics of each delivery report need.
//
// Threading: the Publisher's thread only.
#ifndef OUTBOXD_PIPELINE_EVENT_PRODUCER_H_
#define OUTBOXD_PIPELINE_EVENT_PRODUCER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "kafka/sink.h"
#include "kafka/topic_catalog.h"
#include "metrics/outboxd_metrics.h"
#include "outbox/event.h"
#include "pipeline/delivery.h"
#include "pipeline/publisher_options.h"
#include "pipeline/source_session.h"

namespace outboxd {

class EventProducer {
 public:
  // `delivery` and `stats` must outlive the producer.
  // `keep_refused`: an event whose record the broker refuses for good is
  // kept (ObserveReport returns it) to be retried alone and dead-lettered
  // (RetryRefused); each event stays in memory until its report.
  EventProducer(InvalidEventPolicy on_invalid, Delivery& delivery,
                PipelineStats& stats, bool keep_refused)
      : on_invalid_(on_invalid),
        delivery_(delivery),
        stats_(stats),
        keep_refused_(keep_refused) {}

  // The sink was made; it must outlive the producer.
  void Attach(Sink& sink);
  TopicCatalog& catalog() { return *catalog_; }

  // The session's next event, or invalid event, from its source; `tag` is
  // the session's part of every sequence the sink carries.
  absl::Status Publish(SourceSession& st, uint64_t tag, OutboxEvent event);
  // `id_hash`: the id's AcknowledgedIds::Hash when the event had one.
  absl::Status PublishInvalid(SourceSession& st, uint64_t tag, InvalidEvent bad,
                              std::optional<uint64_t> id_hash = std::nullopt);
  // Produces st.pending; leaves it in place when the queue is full or the
  // topic's state is not known yet.
  absl::Status TryProducePending(SourceSession& st, uint64_t tag);

  // The metrics of the delivery report of `tagged`, a record of `st`.
  // Returns its event when the broker refused it for good
  // (IsPermanentRefusal) and the event was kept.
  std::optional<OutboxEvent> ObserveReport(SourceSession& st, uint64_t tagged,
                                           const absl::Status& status);
  // The sink was replaced: reports of what it had in flight never come.
  void ForgetInFlight() { published_.clear(); }
  // The next of st.refused, once nothing else is in flight: produced again
  // alone, or, when it was refused alone already, dead-lettered with the
  // broker's reason (as an event the producer refuses). Its tracker
  // sequence is the one it had: nothing past it is confirmed before its
  // record (or its dead-letter record) is acknowledged.
  absl::Status RetryRefused(SourceSession& st, uint64_t tag);

 private:
  // Counts and logs an invalid event; the error that stops the run under
  // --on-invalid=fail, OK when it is to be dead-lettered.
  absl::Status ReportInvalid(SourceSession& st, const InvalidEvent& bad);
  absl::Status ProduceEvent(SourceSession& st, uint64_t tagged, bool& done);
  absl::Status ProduceDeadLetter(SourceSession& st, uint64_t tagged,
                                 bool& done);
  // The hash of `id` when the session keeps acknowledged ids.
  static std::optional<uint64_t> IdHash(const SourceSession& st,
                                        const std::string& id);
  // The event of `id_hash` is acknowledged (the reconciler's ids).
  static void NoteAcknowledged(SourceSession& st,
                               std::optional<uint64_t> id_hash);
  // The catalog's answer for `topic`; kUnavailable (cannot tell yet) is
  // logged once per distinct cause, the caller keeps the event pending.
  absl::Status CheckTopic(SourceSession& st, const std::string& topic);

  // A produced event's topic counter and commit time (metrics of its
  // delivery report), and its id's hash (the reconciler's acknowledged
  // ids). A dead-letter record has neither counter nor commit time.
  struct PublishedEvent {
    metrics::Counter* published_to = nullptr;
    std::optional<uint64_t> id_hash;
    int64_t commit_time_unix_ms = 0;
    uint64_t commit_lsn = 0;           // the value of a CDC event's commit LSN
    std::optional<OutboxEvent> event;  // with keep_refused_
  };

  const InvalidEventPolicy on_invalid_;
  Delivery& delivery_;
  PipelineStats& stats_;
  const bool keep_refused_;
  Sink* sink_ = nullptr;
  std::unique_ptr<TopicCatalog> catalog_;  // asks sink_
  std::string last_topic_wait_;            // the last "cannot tell yet" logged
  absl::flat_hash_map<uint64_t, PublishedEvent> published_;  // by tagged seq
};

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_EVENT_PRODUCER_H_
