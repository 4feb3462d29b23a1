// Value formats: what the Kafka record value of an event is
// (--value-format), and the way back from a consumed record to the event.
//
//   payload        the payload bytes, as Debezium's outbox router (default);
//                  the event's fields travel in the key and headers
//   envelope-json  a JSON object with every field of the event:
//                  {"id","aggregatetype","aggregateid","type",
//                   "payload": string | null (the exact payload text; bytes
//                              that are not UTF-8 as base64, with
//                              "payload_encoding": "base64"),
//                   "headers": {name: value},
//                   "position": {"lsn": "<decimal u64>", "index": n}
//                               (cdc), or {"seq": "<decimal i64>"} (a
//                               polled row, --source=poll|notify: it has
//                               no commit LSN),
//                   "commit_time": "YYYY-MM-DDTHH:MM:SS.mmmZ"}
//   protobuf       outboxd.v1.OutboxEvent (proto/outbox_event.proto)
//
// A NULL payload is a tombstone (null value) in the payload format only; the
// envelope formats always have a value, with the payload absent inside.
// Kafka headers (id, eventType, outbox.lsn and outbox.index or outbox.seq,
// ...) are the same in every format. Decoded, a polled event has table_seq
// set and no position (commit LSN 0, index 0).
//
// Pure functions, thread-safe.
#ifndef OUTBOXD_OUTBOX_VALUE_FORMAT_H_
#define OUTBOXD_OUTBOX_VALUE_FORMAT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "outbox/event.h"

namespace outboxd {

enum class ValueFormat { kPayload, kEnvelopeJson, kProtobuf };

// "payload", "envelope-json", "protobuf"; kInvalidArgument otherwise.
absl::StatusOr<ValueFormat> ParseValueFormat(absl::string_view name);
absl::string_view ValueFormatName(ValueFormat format);
// The media type of an envelope format's value (application/json,
// application/x-protobuf); "" for the payload format, whose value is the
// payload (of the event's own content type).
absl::string_view ValueFormatContentType(ValueFormat format);

// The record value of `event`; nullopt is a tombstone.
std::optional<std::string> EncodeValue(const OutboxEvent& event,
                                       ValueFormat format);

// The parts of a consumed Kafka record that DecodeRecord reads. Borrowed.
struct ConsumedRecordView {
  absl::string_view topic;
  absl::string_view key;
  std::optional<absl::string_view> value;  // nullopt: tombstone
  const std::vector<std::pair<std::string, std::string>>* headers = nullptr;
  int64_t timestamp_ms = 0;
  // Payload format only: the aggregate type is the topic minus this prefix
  // (empty when the topic does not start with it, e.g. with --topic).
  absl::string_view topic_prefix = "outbox.event.";
};

// The event a record carries. In the payload format the fields come from
// the key (aggregate id), the headers (id, eventType, outbox.lsn,
// outbox.index or outbox.seq, the rest as the event's headers), the topic
// (aggregate type) and the timestamp (commit time). kInvalidArgument (with what
// is wrong) for a value or header that is not of the format.
absl::StatusOr<OutboxEvent> DecodeRecord(ValueFormat format,
                                         const ConsumedRecordView& record);

}  // namespace outboxd

#endif  // OUTBOXD_OUTBOX_VALUE_FORMAT_H_
