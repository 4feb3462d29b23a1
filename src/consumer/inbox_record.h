// InboxRecord: one consumed Kafka record as the inbox's handler sees it,
// and the pure rule that reads one from a consumed message (headers,
// reserved-header checks, the event id, dependencies, position, and the
// envelope of an envelope value format).
#ifndef OUTBOXD_CONSUMER_INBOX_RECORD_H_
#define OUTBOXD_CONSUMER_INBOX_RECORD_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "kafka/group_consumer.h"
#include "outbox/cloudevents.h"
#include "outbox/value_format.h"

namespace outboxd {

// One Kafka record as the handler sees it: the consumed message (topic,
// partition, offset, key, value, timestamp, headers; owns its bytes) and
// what the inbox reads from its headers.
struct InboxRecord : ConsumedMessage {
  // Header `id`; "<topic>/<partition>/<offset>" when the record has none
  // (then only offsets deduplicate it).
  std::string event_id;
  // Header outbox.depends-on, split at commas.
  std::vector<std::string> depends_on;
  // Headers outbox.source, outbox.lsn, outbox.index when present (or, with
  // an envelope value format, the envelope's position).
  std::string source;
  std::optional<uint64_t> lsn;
  std::optional<uint32_t> index;
  // A polled record's position (--source=poll|notify): header outbox.seq,
  // the outbox row's seq. Such a record has no lsn or index: seq is not a
  // commit LSN, and is not commit order either.
  std::optional<int64_t> seq;
  // A CloudEvent (outboxd's --cloudevents, or any producer of the Kafka
  // binding): its attributes, mode and data. `value` is then the event's
  // data: the payload (a structured document's data or data_base64
  // decoded), nullopt for an event without data. When the record has no
  // `id` header, event_id is the CloudEvent's id. Unset for a plain record.
  std::optional<CloudEvent> cloudevent;
  // Not OK when the value could not be decoded in the configured
  // value format; the handler is not run and the record fails its attempts
  // (then goes to the dead-letter topic, or stops the inbox, by policy).
  absl::Status decode_status;

  // First header with that name.
  std::optional<std::string> Header(absl::string_view name) const;
  // The headers as a JSON object of strings (a repeated name: the first).
  std::string HeadersJson() const;
};

// The record `message` carries, its value encoded in `format` (outboxd's
// --value-format), in either CloudEvents mode or none (CloudEventsModeOf).
// Never fails: what cannot be read (a reserved header repeated, a value not
// in `format`, a record that claims to be a CloudEvent and is not a valid
// one) is in decode_status.
InboxRecord InboxRecordFromMessage(ConsumedMessage message, ValueFormat format);

}  // namespace outboxd

#endif  // OUTBOXD_CONSUMER_INBOX_RECORD_H_
