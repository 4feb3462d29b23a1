#include "outbox/message_json.h"

#include <cstdint>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "outbox/json_reader.h"
#include "outbox/router.h"

namespace outboxd {
namespace {

// A string value's text: the raw text, or the decoded one when escaped.
bool StringValue(JsonReader& r, std::string* target) {
  absl::string_view raw;
  bool escaped = false;
  if (!r.String(&raw, &escaped, target)) return false;
  if (!escaped) target->assign(raw.data(), raw.size());
  return true;
}

using HeaderList = std::vector<std::pair<std::string, std::string>>;

// A headers value: null, or an object of string values (keys decoded, no
// duplicates), appended to *headers, reserved names to *dropped.
bool Headers(JsonReader& r, HeaderList* headers,
             std::vector<std::string>* dropped) {
  if (r.ConsumeWord("null")) return true;
  if (!r.Consume('{')) return false;
  r.SkipSpace();
  if (r.Consume('}')) return true;
  const size_t headers_before = headers->size();
  const size_t dropped_before = dropped->size();
  for (;;) {
    r.SkipSpace();
    std::string name;
    if (!r.Peek('"') || !StringValue(r, &name) ||
        headers->size() - headers_before + dropped->size() - dropped_before ==
            JsonReader::kMaxObjectKeys) {
      return false;
    }
    for (size_t i = headers_before; i < headers->size(); ++i) {
      if ((*headers)[i].first == name) return false;
    }
    for (size_t i = dropped_before; i < dropped->size(); ++i) {
      if ((*dropped)[i] == name) return false;
    }
    r.SkipSpace();
    if (!r.Consume(':')) return false;
    r.SkipSpace();
    std::string value;
    if (!r.Peek('"') || !StringValue(r, &value)) return false;
    if (IsReservedHeader(name)) {
      dropped->push_back(std::move(name));
    } else {
      headers->emplace_back(std::move(name), std::move(value));
    }
    r.SkipSpace();
    if (r.Consume('}')) return true;
    if (!r.Consume(',')) return false;
  }
}

}  // namespace

bool FastParseHeadersText(absl::string_view text, OutboxEvent* event) {
  HeaderList headers;
  std::vector<std::string> dropped;
  JsonReader r(text);
  r.SkipSpace();
  if (!Headers(r, &headers, &dropped)) return false;
  r.SkipSpace();
  if (!r.AtEnd()) return false;
  for (auto& h : headers) event->headers.push_back(std::move(h));
  for (auto& d : dropped) event->dropped_headers.push_back(std::move(d));
  return true;
}

bool AppendCompactJson(absl::string_view json, std::string* out) {
  const size_t size = out->size();
  JsonReader r(json);
  r.SkipSpace();
  bool ok = r.Value(out, 0);
  if (ok) {
    r.SkipSpace();
    ok = r.AtEnd();
  }
  if (!ok) out->resize(size);
  return ok;
}

bool FastParseMessageEvent(absl::string_view content, OutboxEvent* event) {
  struct Fields {
    std::string id, aggregate_type, aggregate_id, type;
    std::optional<std::string> payload;
    std::vector<std::pair<std::string, std::string>> headers;
    std::vector<std::string> dropped_headers;
    std::vector<std::string> depends_on;
  } f;
  enum Seen : unsigned {
    kId = 1,
    kAggregateType = 2,
    kAggregateId = 4,
    kType = 8,
    kPayload = 16,
    kHeaders = 32,
    kDependsOn = 64,
  };
  unsigned seen = 0;
  // Marks a field seen; false for the second time (a duplicate key, whose
  // last value nlohmann would take).
  auto first_time = [&seen](Seen s) {
    if (seen & s) return false;
    seen |= s;
    return true;
  };

  JsonReader r(content);
  r.SkipSpace();
  if (!r.Consume('{')) return false;
  r.SkipSpace();
  if (!r.Consume('}')) {
    for (;;) {
      r.SkipSpace();
      absl::string_view key;
      bool escaped = false;
      if (!r.String(&key, &escaped, nullptr) || escaped) return false;
      r.SkipSpace();
      if (!r.Consume(':')) return false;
      r.SkipSpace();
      std::string* target = nullptr;
      Seen which{};
      if (key == "id") {
        target = &f.id;
        which = kId;
      } else if (key == "aggregatetype") {
        target = &f.aggregate_type;
        which = kAggregateType;
      } else if (key == "aggregateid") {
        target = &f.aggregate_id;
        which = kAggregateId;
      } else if (key == "type") {
        target = &f.type;
        which = kType;
      }
      if (target != nullptr) {
        if (!first_time(which) || !r.Peek('"') || !StringValue(r, target)) {
          return false;
        }
      } else if (key == "payload") {
        if (!first_time(kPayload)) return false;
        if (r.ConsumeWord("null")) {
          f.payload.reset();
        } else {
          f.payload.emplace();
          // The compact form is never longer than the text it comes from.
          f.payload->reserve(r.Remaining());
          if (!r.Value(&*f.payload, 0)) return false;
        }
      } else if (key == "headers") {
        if (!first_time(kHeaders)) return false;
        if (!Headers(r, &f.headers, &f.dropped_headers)) return false;
      } else if (key == "depends_on") {
        if (!first_time(kDependsOn)) return false;
        if (!r.ConsumeWord("null")) {
          // An array of non-empty strings.
          if (!r.Consume('[')) return false;
          r.SkipSpace();
          if (!r.Consume(']')) {
            for (;;) {
              r.SkipSpace();
              std::string id;
              if (!r.Peek('"') || !StringValue(r, &id) || id.empty()) {
                return false;
              }
              f.depends_on.push_back(std::move(id));
              r.SkipSpace();
              if (r.Consume(']')) break;
              if (!r.Consume(',')) return false;
            }
          }
        }
      } else {
        // Another key: only checked (nlohmann rejects the whole content
        // when any part is malformed).
        if (!r.Value(nullptr, 0)) return false;
      }
      r.SkipSpace();
      if (r.Consume('}')) break;
      if (!r.Consume(',')) return false;
    }
  }
  r.SkipSpace();
  if (!r.AtEnd()) return false;
  constexpr unsigned kRequired = kId | kAggregateType | kAggregateId | kType;
  if ((seen & kRequired) != kRequired) return false;

  event->id = std::move(f.id);
  event->aggregate_type = std::move(f.aggregate_type);
  event->aggregate_id = std::move(f.aggregate_id);
  event->type = std::move(f.type);
  event->payload = std::move(f.payload);
  for (auto& h : f.headers) event->headers.push_back(std::move(h));
  for (auto& d : f.dropped_headers) {
    event->dropped_headers.push_back(std::move(d));
  }
  for (auto& d : f.depends_on) event->depends_on.push_back(std::move(d));
  return true;
}

}  // namespace outboxd
