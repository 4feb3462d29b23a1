// CloudEvents 1.0 over Kafka (the CloudEvents Kafka protocol binding), both
// content modes (--cloudevents, README "CloudEvents"):
//
//   binary      the value stays the payload; the attributes travel as
//               headers ce_specversion, ce_id, ce_source, ce_type, ce_time,
//               ce_subject, and datacontenttype as `content-type`
//   structured  the value is one application/cloudevents+json document
//               {specversion, id, source, type, time, subject,
//                datacontenttype, data | data_base64}; header
//               `content-type: application/cloudevents+json; charset=UTF-8`
//
// The attributes of an outbox event: id = the event id, source =
// --cloudevents-source (default "/outboxd/<outbox.source>"), type = the
// event type, time = the commit time (RFC 3339, UTC, milliseconds), subject
// = the aggregate id, datacontenttype = the event's content type (the
// content_type column, or what the payload column's type implies).
//
// A tombstone (NULL payload) stays a tombstone in both modes: a record
// with no value and the binary-mode headers (no content-type), which is the
// binding's binary-mode CloudEvent without data. A structured document
// would not be a tombstone, so compaction would never drop the key.
//
// Here too, the way back: a consumed record's mode and its CloudEvent
// (the inbox, consumer/inbox_record).
//
// Pure functions, thread-safe.
#ifndef OUTBOXD_OUTBOX_CLOUDEVENTS_H_
#define OUTBOXD_OUTBOX_CLOUDEVENTS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "outbox/event.h"

namespace outboxd {

enum class CloudEventsMode { kOff, kBinary, kStructured };

// "off", "binary", "structured"; kInvalidArgument otherwise.
absl::StatusOr<CloudEventsMode> ParseCloudEventsMode(absl::string_view name);
absl::string_view CloudEventsModeName(CloudEventsMode mode);

struct CloudEventsOptions {
  CloudEventsMode mode = CloudEventsMode::kOff;
  // The `source` attribute, a URI-reference (CheckCloudEventsSource).
  std::string source;
};

inline constexpr absl::string_view kCloudEventsSpecVersion = "1.0";

// Header names of the binary mode (and of a tombstone in either mode).
inline constexpr absl::string_view kCeHeaderPrefix = "ce_";
inline constexpr absl::string_view kCeHeaderSpecVersion = "ce_specversion";
inline constexpr absl::string_view kCeHeaderId = "ce_id";
inline constexpr absl::string_view kCeHeaderSource = "ce_source";
inline constexpr absl::string_view kCeHeaderType = "ce_type";
inline constexpr absl::string_view kCeHeaderTime = "ce_time";
inline constexpr absl::string_view kCeHeaderSubject = "ce_subject";
// The binding maps datacontenttype to this header, never to
// ce_datacontenttype.
inline constexpr absl::string_view kContentTypeHeader = "content-type";

// The structured mode's content-type header.
inline constexpr absl::string_view kCloudEventsJsonContentType =
    "application/cloudevents+json; charset=UTF-8";

// The default content types of a payload (row_to_event.h picks one by the
// payload column's type; logical decoding messages are JSON).
inline constexpr absl::string_view kJsonContentType = "application/json";
inline constexpr absl::string_view kOctetStreamContentType =
    "application/octet-stream";
inline constexpr absl::string_view kTextContentType = "text/plain";

// The default --cloudevents-source of a stream whose outbox.source is
// `identity`: "/outboxd/<identity>", every byte of the identity that RFC
// 3986 does not allow in a path segment percent-encoded ('/' kept).
std::string DefaultCloudEventsSource(absl::string_view identity);

// OK when `source` is a non-empty URI-reference (RFC 3986 characters only,
// '%' followed by two hex digits); kInvalidArgument saying what is wrong.
absl::Status CheckCloudEventsSource(absl::string_view source);

// "YYYY-MM-DDTHH:MM:SS.mmmZ" (RFC 3339, UTC).
std::string FormatRfc3339Millis(int64_t unix_ms);

// The event's datacontenttype: its content_type, or its
// default_content_type when that is empty.
absl::string_view ContentTypeOf(const OutboxEvent& event);

// True for the header names that --cloudevents sets (the ce_ attributes
// above and content-type, matched case-insensitively): an event's own
// `headers` column cannot set them in a CloudEvents mode.
bool IsCloudEventsHeader(absl::string_view name);

// Turns `event` into the CloudEvent of `options.mode` (not kOff): appends
// the mode's headers, and in structured mode makes the payload the JSON
// document (a tombstone stays one, with the binary-mode headers). `time` is
// left out when the commit time is unknown (0). Event
// headers that IsCloudEventsHeader names move to event->dropped_headers.
// kInvalidArgument (event untouched) when the event cannot be a CloudEvent:
// an empty id or type, an id, type, aggregate id or content type that is not
// UTF-8, a content type that is not a media type.
//
// Structured data: a JSON content type (application/json, text/json,
// */*+json) and a payload that is one JSON value: "data" with the payload's
// exact text; a text/* content type and a UTF-8 payload: "data" as a JSON
// string; anything else: "data_base64".
absl::Status ToCloudEvent(const CloudEventsOptions& options,
                          OutboxEvent* event);

// --- the way back: a consumed record
// ------------------------------------------

// A CloudEvent read from a Kafka record.
struct CloudEvent {
  CloudEventsMode mode = CloudEventsMode::kBinary;
  std::string specversion;
  std::string id;
  std::string source;
  std::string type;
  // Optional attributes; "" when absent.
  std::string time;
  std::string subject;
  std::string datacontenttype;
  // Any other attribute (extensions), in the record's order; a structured
  // document's non-string values as their JSON text.
  std::vector<std::pair<std::string, std::string>> extensions;
  // The data: binary mode, the value; structured mode, "data" (a string's
  // content when the content type is not JSON, otherwise the member's exact
  // JSON text) or "data_base64" decoded. nullopt: no data (a tombstone).
  std::optional<std::string> data;
};

// The content mode of a record with these headers: structured when its
// content-type starts with "application/cloudevents" (case-insensitive),
// binary when it has a ce_specversion header, kOff for a plain record.
CloudEventsMode CloudEventsModeOf(
    const std::vector<std::pair<std::string, std::string>>& headers);

// The CloudEvent a record of mode CloudEventsModeOf(headers) (not kOff)
// carries. kInvalidArgument saying what is wrong: a specversion other than
// 1.0, a missing or empty id, source or type, a repeated ce_ header, a
// structured value that is not a JSON object of the JSON format (or of
// another event format), both data and data_base64, bad base64.
absl::StatusOr<CloudEvent> DecodeCloudEvent(
    const std::vector<std::pair<std::string, std::string>>& headers,
    const std::optional<std::string>& value);

// The attributes as a JSON object (specversion, id, source, type, then the
// optional ones present and the extensions), for handlers that take text.
std::string CloudEventAttributesJson(const CloudEvent& event);

}  // namespace outboxd

#endif  // OUTBOXD_OUTBOX_CLOUDEVENTS_H_
