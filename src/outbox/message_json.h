// A fast path for the JSON content of logical decoding messages (and for
// the text of an outbox row's `headers` column).
//
// ParseMessageEvent (row_to_event.h) parses a message's content with
// nlohmann::ordered_json and re-serialises the payload with dump(); that
// parse and dump cost about as much as the rest of an event's path. The
// functions here read the content in one pass without building a document,
// and write the payload straight in the form dump() gives (no whitespace,
// nlohmann's string escapes).
//
// They never decide that content is invalid: whatever they do not handle
// exactly as the nlohmann path does (malformed JSON, a missing or non-string
// field, duplicate keys, floating-point numbers, escaped object keys, very
// deep nesting, ...) makes them return false, and the caller falls back to
// the nlohmann path, which gives the result or the error as before. When
// they return true, the result is the one the nlohmann path gives.
//
// Pure, thread-safe.
#ifndef OUTBOXD_OUTBOX_MESSAGE_JSON_H_
#define OUTBOXD_OUTBOX_MESSAGE_JSON_H_

#include <string>

#include "absl/strings/string_view.h"
#include "outbox/event.h"

namespace outboxd {

// Appends to *out what nlohmann::ordered_json::parse(json).dump() gives and
// returns true, or returns false (leaving *out as it was) when `json` is
// outside the subset handled here. `json` is one value, with optional
// whitespace around it.
bool AppendCompactJson(absl::string_view json, std::string* out);

// Fills event's id, aggregate_type, aggregate_id, type and payload and
// appends to its headers, dropped_headers and depends_on exactly as
// ParseMessageEvent does for valid content, and returns true; returns false
// without touching *event when the content is not handled here (the caller
// then runs the nlohmann path).
bool FastParseMessageEvent(absl::string_view content, OutboxEvent* event);

// Appends to event's headers and dropped_headers exactly as ParseHeadersText
// does for a valid `headers` column text (an object of strings, or null),
// and returns true; returns false without touching *event otherwise.
bool FastParseHeadersText(absl::string_view text, OutboxEvent* event);

}  // namespace outboxd

#endif  // OUTBOXD_OUTBOX_MESSAGE_JSON_H_
