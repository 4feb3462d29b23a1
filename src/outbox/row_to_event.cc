#include "outbox/row_to_event.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "outbox/message_json.h"
#include "outbox/router.h"

namespace outboxd {
namespace {

using Json = nlohmann::ordered_json;

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Headers from a JSON object of string values; reserved names are dropped
// into event->dropped_headers (README "Reserved headers").
absl::Status ParseHeaders(const Json& value, OutboxEvent* event) {
  if (value.is_null()) return absl::OkStatus();
  if (!value.is_object()) {
    return absl::InvalidArgumentError("headers is not a JSON object");
  }
  for (const auto& [key, v] : value.items()) {
    if (!v.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("header '", key, "' is not a string"));
    }
    if (IsReservedHeader(key)) {
      event->dropped_headers.push_back(key);
      continue;
    }
    event->headers.emplace_back(key, v.get<std::string>());
  }
  return absl::OkStatus();
}

// The text of an outbox column; nullopt for SQL NULL. kInvalidArgument with
// the reason when the column is absent or its value did not arrive.
absl::StatusOr<std::optional<absl::string_view>> CellText(
    absl::Span<const RowCell> row, int index, const std::string& name) {
  if (index < 0 || static_cast<size_t>(index) >= row.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("outbox table has no column '", name, "'"));
  }
  const RowCell& cell = row[index];
  if (cell.unchanged_toast) {
    return absl::InvalidArgumentError(
        absl::StrCat("column '", name, "' arrived as unchanged TOAST"));
  }
  return cell.text;
}

// The row event's decoding; the reason when the row is not an event.
absl::Status Decode(absl::Span<const RowCell> row,
                    const OutboxRowLayout& layout, const OutboxColumns& names,
                    OutboxEvent* event) {
  struct Required {
    int index;
    const std::string& name;
    std::string* target;
  };
  for (const Required& r :
       {Required{layout.aggregate_id, names.aggregate_id, &event->aggregate_id},
        Required{layout.id, names.id, &event->id},
        Required{layout.aggregate_type, names.aggregate_type,
                 &event->aggregate_type},
        Required{layout.type, names.type, &event->type}}) {
    ASSIGN_OR_RETURN(std::optional<absl::string_view> text,
                     CellText(row, r.index, r.name));
    if (!text.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("column '", r.name, "' is NULL"));
    }
    r.target->assign(text->data(), text->size());
  }

  ASSIGN_OR_RETURN(std::optional<absl::string_view> payload,
                   CellText(row, layout.payload, names.payload));
  if (payload.has_value()) {  // NULL: a tombstone
    if (layout.payload_is_bytea) {
      ASSIGN_OR_RETURN(event->payload, DecodeByteaText(*payload));
    } else {
      event->payload.emplace(payload->data(), payload->size());
    }
  }

  if (layout.headers >= 0) {
    ASSIGN_OR_RETURN(std::optional<absl::string_view> headers,
                     CellText(row, layout.headers, names.headers));
    if (headers.has_value()) RETURN_IF_ERROR(ParseHeadersText(*headers, event));
  }
  event->default_content_type = layout.payload_content_type;
  if (layout.content_type >= 0) {
    ASSIGN_OR_RETURN(std::optional<absl::string_view> content_type,
                     CellText(row, layout.content_type, names.content_type));
    if (content_type.has_value() && !content_type->empty()) {
      event->content_type = std::string(*content_type);
    }
  }
  if (layout.depends_on >= 0) {
    ASSIGN_OR_RETURN(std::optional<absl::string_view> deps,
                     CellText(row, layout.depends_on, names.depends_on));
    if (deps.has_value()) {
      auto ids = ParseIdArrayText(*deps);
      if (!ids.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "column '", names.depends_on, "': ", ids.status().message()));
      }
      event->depends_on = *std::move(ids);
    }
  }
  return absl::OkStatus();
}

}  // namespace

OutboxRowLayout LocateOutboxColumns(absl::Span<const std::string> cell_names,
                                    const OutboxColumns& names) {
  OutboxRowLayout layout;
  for (size_t i = 0; i < cell_names.size(); ++i) {
    const std::string& n = cell_names[i];
    const int idx = static_cast<int>(i);
    if (n == names.id) layout.id = idx;
    if (n == names.aggregate_type) layout.aggregate_type = idx;
    if (n == names.aggregate_id) layout.aggregate_id = idx;
    if (n == names.type) layout.type = idx;
    if (n == names.payload) layout.payload = idx;
    if (!names.headers.empty() && n == names.headers) layout.headers = idx;
    if (!names.depends_on.empty() && n == names.depends_on) {
      layout.depends_on = idx;
    }
    if (!names.content_type.empty() && n == names.content_type) {
      layout.content_type = idx;
    }
  }
  return layout;
}

absl::string_view PayloadContentType(uint32_t type_oid) {
  constexpr uint32_t kJsonTypeOid = 114;
  constexpr uint32_t kJsonbTypeOid = 3802;
  constexpr uint32_t kXmlTypeOid = 142;
  switch (type_oid) {
    case kJsonTypeOid:
    case kJsonbTypeOid:
      return "application/json";
    case kByteaTypeOid:
      return "application/octet-stream";
    case kXmlTypeOid:
      return "application/xml";
    default:
      return "text/plain";
  }
}

void SetPayloadType(uint32_t type_oid, OutboxRowLayout* layout) {
  layout->payload_is_bytea = type_oid == kByteaTypeOid;
  layout->payload_content_type = PayloadContentType(type_oid);
}

RowEvent RowToEvent(absl::Span<const RowCell> row,
                    const OutboxRowLayout& layout, const OutboxColumns& names,
                    const RowOrigin& origin) {
  OutboxEvent event;
  absl::Status s = Decode(row, layout, names, &event);
  if (!s.ok()) return InvalidRow(row, layout, origin, std::string(s.message()));
  event.position = origin.position;
  event.table_seq = origin.table_seq;
  event.commit_time_unix_ms = origin.commit_time_unix_ms;
  event.table = origin.table;
  return event;
}

InvalidEvent InvalidRow(absl::Span<const RowCell> row,
                        const OutboxRowLayout& layout, const RowOrigin& origin,
                        std::string reason) {
  InvalidEvent bad;
  bad.position = origin.position;
  bad.table_seq = origin.table_seq;
  bad.commit_time_unix_ms = origin.commit_time_unix_ms;
  bad.table = origin.table;
  bad.reason = std::move(reason);
  Json content = Json::object();
  for (const RowCell& cell : row) {
    if (cell.text.has_value() && !cell.unchanged_toast) {
      content[std::string(cell.name)] = std::string(*cell.text);
    } else {
      content[std::string(cell.name)] = nullptr;
    }
  }
  bad.content = content.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (layout.aggregate_id >= 0 &&
      static_cast<size_t>(layout.aggregate_id) < row.size()) {
    const RowCell& cell = row[layout.aggregate_id];
    if (cell.text.has_value() && !cell.unchanged_toast) {
      bad.aggregate_id = std::string(*cell.text);
    }
  }
  return bad;
}

const std::string& AggregateIdOf(const RowEvent& event) {
  return std::visit(
      [](const auto& e) -> const std::string& { return e.aggregate_id; },
      event);
}

absl::Status ParseHeadersText(absl::string_view text, OutboxEvent* event) {
  if (FastParseHeadersText(text, event)) return absl::OkStatus();
  Json doc = Json::parse(text.begin(), text.end(), nullptr, false);
  if (doc.is_discarded()) {
    return absl::InvalidArgumentError("headers is not valid JSON");
  }
  return ParseHeaders(doc, event);
}

absl::StatusOr<std::string> DecodeByteaText(absl::string_view text) {
  std::string out;
  if (text.size() >= 2 && text[0] == '\\' && text[1] == 'x') {
    if ((text.size() - 2) % 2 != 0) {
      return absl::InvalidArgumentError("bytea hex text has odd length");
    }
    out.reserve((text.size() - 2) / 2);
    for (size_t i = 2; i < text.size(); i += 2) {
      int hi = HexDigit(text[i]);
      int lo = HexDigit(text[i + 1]);
      if (hi < 0 || lo < 0) {
        return absl::InvalidArgumentError("bytea hex text has a non-hex digit");
      }
      out.push_back(static_cast<char>(hi * 16 + lo));
    }
    return out;
  }
  // Escape format: \\ is a backslash, \ooo an octal byte.
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\\') {
      out.push_back(text[i]);
    } else if (i + 1 < text.size() && text[i + 1] == '\\') {
      out.push_back('\\');
      ++i;
    } else if (i + 3 < text.size() && text[i + 1] >= '0' &&
               text[i + 1] <= '3' && text[i + 2] >= '0' && text[i + 2] <= '7' &&
               text[i + 3] >= '0' && text[i + 3] <= '7') {
      out.push_back(static_cast<char>((text[i + 1] - '0') * 64 +
                                      (text[i + 2] - '0') * 8 +
                                      (text[i + 3] - '0')));
      i += 3;
    } else {
      return absl::InvalidArgumentError("bytea escape text has a bad escape");
    }
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> ParseIdArrayText(
    absl::string_view text) {
  if (text.size() < 2 || text.front() != '{' || text.back() != '}') {
    return absl::InvalidArgumentError("not an array literal '{...}'");
  }
  std::vector<std::string> ids;
  absl::string_view inner = text.substr(1, text.size() - 2);
  if (inner.empty()) return ids;
  for (absl::string_view part : absl::StrSplit(inner, ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (part.size() >= 2 && part.front() == '"' && part.back() == '"') {
      part = part.substr(1, part.size() - 2);
    } else if (part == "NULL") {
      return absl::InvalidArgumentError("array has a NULL element");
    }
    if (part.empty() || absl::StrContains(part, '"') ||
        absl::StrContains(part, '{') || absl::StrContains(part, '\\')) {
      return absl::InvalidArgumentError(
          "array element is empty, nested or escaped");
    }
    ids.emplace_back(part);
  }
  return ids;
}

absl::Status ParseMessageEvent(absl::string_view content, OutboxEvent* event) {
  // One pass without a document for the usual content; anything else
  // (and every error) through nlohmann as before (message_json.h).
  if (FastParseMessageEvent(content, event)) return absl::OkStatus();
  Json doc = Json::parse(content.begin(), content.end(), nullptr,
                         /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return absl::InvalidArgumentError("message content is not valid JSON");
  }
  if (!doc.is_object()) {
    return absl::InvalidArgumentError("message content is not a JSON object");
  }
  struct Field {
    const char* name;
    std::string* target;
  };
  for (const Field& f :
       {Field{"id", &event->id}, Field{"aggregatetype", &event->aggregate_type},
        Field{"aggregateid", &event->aggregate_id},
        Field{"type", &event->type}}) {
    auto it = doc.find(f.name);
    if (it == doc.end() || !it->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "message field '", f.name, "' is missing or not a string"));
    }
    *f.target = it->get<std::string>();
  }
  auto payload = doc.find("payload");
  if (payload == doc.end() || payload->is_null()) {
    event->payload.reset();
  } else {
    event->payload = payload->dump();
  }
  auto headers = doc.find("headers");
  if (headers != doc.end()) RETURN_IF_ERROR(ParseHeaders(*headers, event));
  auto deps = doc.find("depends_on");
  if (deps != doc.end() && !deps->is_null()) {
    if (!deps->is_array()) {
      return absl::InvalidArgumentError("depends_on is not a JSON array");
    }
    for (const auto& d : *deps) {
      if (!d.is_string() || d.get<std::string>().empty()) {
        return absl::InvalidArgumentError(
            "depends_on has an element that is not a non-empty string");
      }
      event->depends_on.push_back(d.get<std::string>());
    }
  }
  return absl::OkStatus();
}

}  // namespace outboxd
