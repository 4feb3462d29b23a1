// DeadLetterSink: where the inbox's failed records go. Each is produced to
// the dead-letter topic with the inbox's headers added (inbox.error,
// inbox.attempts, inbox.topic, inbox.partition, inbox.offset, inbox.group)
// and Send waits for the broker's acknowledgement: the caller marks the
// record handled only after that, so a crash in between sends it again
// (at-least-once to the dead-letter topic), never loses it.
//
// The producer is created on the first Send: an inbox that never
// dead-letters never connects a producer.
//
// Threading: not thread-safe; one thread (the inbox's Run thread).
#ifndef OUTBOXD_CONSUMER_DEAD_LETTER_SINK_H_
#define OUTBOXD_CONSUMER_DEAD_LETTER_SINK_H_

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "consumer/inbox_record.h"
#include "kafka/producer.h"
#include "kafka/sink.h"
#include "outbox/router.h"

namespace outboxd {

struct DeadLetterOptions {
  std::string brokers;
  std::string topic = "inbox.dlq";
  std::string group_id;  // header inbox.group
  // The consumer's librdkafka properties: the connection and security ones
  // (bootstrap.*, security.*, sasl.*, ssl.*) apply to the producer too.
  std::vector<std::pair<std::string, std::string>> kafka_properties;
  // How long Send waits for queue space and for the acknowledgement.
  absl::Duration timeout = absl::Seconds(30);
};

// The dead-letter record of `record`: its key, value, timestamp and
// headers, plus the inbox's headers. Borrows `record`'s key and value.
KafkaRecord DeadLetterRecord(const InboxRecord& record,
                             const DeadLetterOptions& options,
                             const std::string& error, int attempts);

// The properties of the dead-letter producer: the connection and security
// properties of `consumer_properties` (consumer-only ones would only
// produce warnings in a producer), and its client.id.
std::vector<std::pair<std::string, std::string>> DeadLetterProducerProperties(
    const std::vector<std::pair<std::string, std::string>>&
        consumer_properties);

class DeadLetterSink {
 public:
  // Makes its producer (kafka/producer.h; a test passes a fake). Without a
  // factory the producer is a KafkaProducer.
  explicit DeadLetterSink(DeadLetterOptions options,
                          SinkFactory factory = nullptr);
  DeadLetterSink(const DeadLetterSink&) = delete;
  DeadLetterSink& operator=(const DeadLetterSink&) = delete;

  // Produces the dead-letter record of `record` and waits for its
  // acknowledgement. kUnavailable when none came within the timeout,
  // kResourceExhausted when the queue stayed full that long; otherwise the
  // error of the produce or of the delivery.
  absl::Status Send(const InboxRecord& record, const std::string& error,
                    int attempts);

  const std::string& topic() const { return options_.topic; }

 private:
  const DeadLetterOptions options_;
  const SinkFactory factory_;
  std::unique_ptr<Sink> producer_;
  bool delivered_ = false;
  absl::Status delivery_;
};

}  // namespace outboxd

#endif  // OUTBOXD_CONSUMER_DEAD_LETTER_SINK_H_
