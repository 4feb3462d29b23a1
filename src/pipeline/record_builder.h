// RecordBuilder: what an event becomes in Kafka, for every path that
// produces one (the Publisher's stream and the republisher after a lost
// slot), so that the two cannot drift apart:
//
//   OutboxEvent -> value format -> CloudEvents -> Route (topic, key, value,
//   headers, outbox.source) -> KafkaRecord
//
// and what an event becomes when it cannot be produced as it is: an
// InvalidEvent (not a CloudEvent, a topic that cannot take it, a record the
// producer or the broker refuses), carried to the dead-letter topic by
// DeadLetter() with the reason, its position and its table as headers.
//
// Pure: no I/O. The topic's state and the producer's refusal come in as a
// Status from the caller (kafka/topic_catalog.h, kafka/sink.h).
// Not thread-safe; cheap to copy.
#ifndef OUTBOXD_PIPELINE_RECORD_BUILDER_H_
#define OUTBOXD_PIPELINE_RECORD_BUILDER_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "outbox/cloudevents.h"
#include "outbox/event.h"
#include "outbox/router.h"
#include "outbox/value_format.h"

namespace outboxd {

struct RecordOptions {
  RouterOptions router;  // router.source: set by SetSource
  ValueFormat value_format = ValueFormat::kPayload;
  // --cloudevents; an empty source: DefaultCloudEventsSource of the
  // source's identity.
  CloudEventsOptions cloudevents;
  std::string dlq_topic = "outbox.dlq";
};

class RecordBuilder {
 public:
  explicit RecordBuilder(RecordOptions options);

  // The identity of the source the events come from (outbox.source, and
  // the default CloudEvents source).
  void SetSource(const std::string& identity);
  const std::string& source() const { return router_.source; }
  const RecordOptions& options() const { return options_; }

  // Applies the value format and CloudEvents to `event` in place.
  // Returns the invalid event it becomes when it cannot be a CloudEvent.
  std::optional<InvalidEvent> Prepare(OutboxEvent& event) const;
  // The record of a prepared event; it borrows from `event`.
  KafkaRecord Route(const OutboxEvent& event) const {
    return outboxd::Route(event, router_);
  }
  // The record that carries `bad` to the dead-letter topic: the original
  // content as the value; the reason, position, table (and after a lost
  // slot outbox.republished) as headers. It borrows from `bad`.
  KafkaRecord DeadLetter(const InvalidEvent& bad) const;

  // An event whose topic cannot take it (an illegal name, a missing
  // topic): the whole event as content, so that it can be replayed.
  static InvalidEvent Misrouted(const OutboxEvent& event,
                                const std::string& topic,
                                const absl::Status& cause);
  // An event the producer or the broker refuses as it is (larger than
  // message.max.bytes, ...): its content without the payload.
  static InvalidEvent Unproducible(const OutboxEvent& event,
                                   const absl::Status& cause);

 private:
  RecordOptions options_;
  RouterOptions router_;            // options_.router + the source
  CloudEventsOptions cloudevents_;  // options_.cloudevents + default
};

// Where an event is, for log lines: a polled row's seq ("row seq 42"), a
// streamed event's commit LSN and index ("at 0/1A2B#3").
template <typename Event>  // OutboxEvent or InvalidEvent
std::string Where(const Event& e) {
  if (e.table_seq.has_value()) return absl::StrCat("row seq ", *e.table_seq);
  return absl::StrCat("at ", e.position.commit_lsn.ToString(), "#",
                      e.position.index);
}

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_RECORD_BUILDER_H_
