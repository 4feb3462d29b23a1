// RowToEvent: the one place that decides whether an outbox table row is an
// event, and turns it into an OutboxEvent or an InvalidEvent.
//
// Every publisher reads rows its own way: the CDC mapper from pgoutput
// tuples (outbox_mapper.h), the polling sources and the republisher from
// text query results (sources/outbox_table.h). Each gathers the row's
// column values as RowCells, says where it is (RowOrigin) and leaves the
// rest here: the required columns, the bytea payload, headers, depends_on,
// and the dead-letter content and reason of a row that is not an event.
//
// Also here, for the same reason: the parsers of the column texts and of a
// logical decoding message's JSON content.
//
// Pure: no I/O, no state.
#ifndef OUTBOXD_OUTBOX_ROW_TO_EVENT_H_
#define OUTBOXD_OUTBOX_ROW_TO_EVENT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "outbox/event.h"

namespace outboxd {

// PostgreSQL's type oid of bytea: a payload of this type is published as
// its raw bytes.
inline constexpr uint32_t kByteaTypeOid = 17;

// The content type an event gets from its payload column's type oid when
// its content_type column is absent or NULL: application/json for json and
// jsonb, application/octet-stream for bytea, application/xml for xml,
// text/plain for text and every other type (PostgreSQL prints it as text).
absl::string_view PayloadContentType(uint32_t type_oid);

// Column names of the outbox table (README "Using it with your database"),
// Debezium's names by default; each is configurable by flag.
struct OutboxColumns {
  std::string id = "id";
  std::string aggregate_type = "aggregatetype";
  std::string aggregate_id = "aggregateid";
  std::string type = "type";
  std::string payload = "payload";
  std::string headers = "headers";  // optional column
  // Optional uuid[] (or text[]) column of event ids this event depends on;
  // header outbox.depends-on. "" to ignore.
  std::string depends_on = "depends_on";
  // Optional text column: the payload's media type, per row (the
  // CloudEvents datacontenttype). "" to ignore.
  std::string content_type = "content_type";
};

// One column of a row as received. The views must outlive the call.
struct RowCell {
  absl::string_view name;
  std::optional<absl::string_view> text;  // nullopt: SQL NULL
  // The value did not arrive (pgoutput's unchanged-TOAST marker, which an
  // insert cannot carry): a row with such an outbox column is invalid.
  bool unchanged_toast = false;
};

// Where the outbox columns are among a row's cells; -1 when absent.
struct OutboxRowLayout {
  int id = -1;
  int aggregate_type = -1;
  int aggregate_id = -1;
  int type = -1;
  int payload = -1;
  int headers = -1;
  int depends_on = -1;
  int content_type = -1;
  bool payload_is_bytea = false;  // the payload text is bytea output
  // The event's content type when the row has none (PayloadContentType's,
  // static storage).
  absl::string_view payload_content_type = "application/json";
};

// The layout of a row whose cells have these names, in this order. Leaves
// the payload's type at its default (jsonb): the caller knows the column
// types and calls SetPayloadType.

OutboxRowLayout LocateOutboxColumns(absl::Span<const std::string> cell_names,
                                    const OutboxColumns& names);

// Records the payload column's type oid in `layout` (payload_is_bytea,
// payload_content_type).
void SetPayloadType(uint32_t type_oid, OutboxRowLayout* layout);

// Where a row stands in its stream; copied into the event or invalid event.
struct RowOrigin {
  EventPosition position;
  std::optional<int64_t> table_seq;
  int64_t commit_time_unix_ms = 0;
  std::string table;  // "schema.table", unquoted (OutboxEvent::table)
};

using RowEvent = std::variant<OutboxEvent, InvalidEvent>;

// The event of one outbox row, or why it is not one: a required column
// (aggregate id, id, aggregate type, type, payload) absent, NULL or
// unchanged TOAST; a bad bytea text; headers that are not a JSON object of
// strings; a depends_on that is not an array of ids. The payload may be
// NULL (a tombstone); headers, depends_on and content_type may be absent or
// NULL (an empty content_type counts as NULL).
RowEvent RowToEvent(absl::Span<const RowCell> row,
                    const OutboxRowLayout& layout, const OutboxColumns& names,
                    const RowOrigin& origin);

// The InvalidEvent of a row, for callers that reject it before RowToEvent
// (e.g. a row whose position cannot be read): content is the row as a JSON
// object of column -> text or null, aggregate_id the aggregate id cell's
// text when there is one.
InvalidEvent InvalidRow(absl::Span<const RowCell> row,
                        const OutboxRowLayout& layout, const RowOrigin& origin,
                        std::string reason);

// The aggregate id of either kind of row event ("" when unknown).
const std::string& AggregateIdOf(const RowEvent& event);

// Parses the text of a `headers` value (a JSON object of string values, or
// null) into event->headers, in the object's order. Reserved names
// (IsReservedHeader: id, eventType, outbox.*) do not reach event->headers:
// they are listed in event->dropped_headers. kInvalidArgumentError with the
// reason for anything else than an object of strings.
absl::Status ParseHeadersText(absl::string_view text, OutboxEvent* event);

// Parses the JSON content of a logical decoding message into `event`'s
// fields (id, aggregatetype, aggregateid, type, payload, headers,
// depends_on); the position and commit time are left alone. kInvalidArgument
// with the reason when the content is not such an object.
absl::Status ParseMessageEvent(absl::string_view content, OutboxEvent* event);

// Parses an array of ids as PostgreSQL prints it ('{a,b}', elements
// optionally double-quoted) into its elements. kInvalidArgument for a NULL
// element, an empty element or text that is not a one-dimensional array.
absl::StatusOr<std::vector<std::string>> ParseIdArrayText(
    absl::string_view text);

// Decodes a bytea value as PostgreSQL prints it (hex `\x...` or escape
// format) into raw bytes.
absl::StatusOr<std::string> DecodeByteaText(absl::string_view text);

}  // namespace outboxd

#endif  // OUTBOXD_OUTBOX_ROW_TO_EVENT_H_
