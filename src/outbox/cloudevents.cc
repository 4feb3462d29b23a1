#include "outbox/cloudevents.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "common/utf8.h"
#include "nlohmann/json.hpp"

namespace outboxd {
namespace {

using Json = nlohmann::ordered_json;

bool IsUnreserved(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

bool IsSubDelim(char c) { return absl::StrContains("!$&'()*+,;=", c); }

// RFC 3986 characters that may stand unencoded in a URI-reference.
bool IsUriChar(char c) {
  return IsUnreserved(c) || IsSubDelim(c) || absl::StrContains(":/?#[]@", c);
}

bool IsHexDigit(char c) {
  return absl::ascii_isxdigit(static_cast<unsigned char>(c));
}

// The media type of a content type, lower case, without parameters
// ("Application/JSON; charset=utf-8" -> "application/json").
std::string MediaType(absl::string_view content_type) {
  absl::string_view type = content_type.substr(0, content_type.find(';'));
  return absl::AsciiStrToLower(absl::StripAsciiWhitespace(type));
}

bool IsJsonMediaType(absl::string_view media_type) {
  return media_type == "application/json" || media_type == "text/json" ||
         absl::EndsWith(media_type, "+json");
}

// type "/" subtype, printable ASCII without spaces in the type part.
bool LooksLikeMediaType(absl::string_view content_type) {
  for (char c : content_type) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return false;
  }
  std::string media = MediaType(content_type);
  size_t slash = media.find('/');
  return slash != std::string::npos && slash > 0 && slash + 1 < media.size() &&
         media.find_first_of(" \t", 0) == std::string::npos;
}

void AppendAttributeHeaders(
    const CloudEventsOptions& options, const OutboxEvent& event,
    bool with_content_type,
    std::vector<std::pair<std::string, std::string>>* headers) {
  headers->emplace_back(kCeHeaderSpecVersion, kCloudEventsSpecVersion);
  headers->emplace_back(kCeHeaderId, event.id);
  headers->emplace_back(kCeHeaderSource, options.source);
  headers->emplace_back(kCeHeaderType, event.type);
  if (event.commit_time_unix_ms > 0) {
    headers->emplace_back(kCeHeaderTime,
                          FormatRfc3339Millis(event.commit_time_unix_ms));
  }
  if (!event.aggregate_id.empty()) {
    headers->emplace_back(kCeHeaderSubject, event.aggregate_id);
  }
  if (with_content_type) {
    headers->emplace_back(kContentTypeHeader, ContentTypeOf(event));
  }
}

// The structured document of an event with a payload.
std::string StructuredDocument(const CloudEventsOptions& options,
                               const OutboxEvent& event) {
  Json doc = {
      {"specversion", std::string(kCloudEventsSpecVersion)},
      {"id", event.id},
      {"source", options.source},
      {"type", event.type},
  };
  if (event.commit_time_unix_ms > 0) {
    doc["time"] = FormatRfc3339Millis(event.commit_time_unix_ms);
  }
  if (!event.aggregate_id.empty()) doc["subject"] = event.aggregate_id;
  const absl::string_view content_type = ContentTypeOf(event);
  doc["datacontenttype"] = std::string(content_type);
  const std::string& payload = *event.payload;
  const std::string media = MediaType(content_type);
  if (IsJsonMediaType(media) && Json::accept(payload)) {
    // The payload's own text, byte for byte: a re-serialised value could
    // round numbers that do not fit a double.
    std::string text = doc.dump();
    text.pop_back();  // '}'
    absl::StrAppend(&text, ",\"data\":", absl::StripAsciiWhitespace(payload),
                    "}");
    return text;
  }
  if (absl::StartsWith(media, "text/") && IsValidUtf8(payload)) {
    doc["data"] = payload;
  } else {
    doc["data_base64"] = absl::Base64Escape(payload);
  }
  return doc.dump();
}

// Where the value of each top-level member of a JSON object starts and
// ends, in `text` (which nlohmann accepted as an object). The last of a
// repeated name wins, as in nlohmann's document.
class TopLevelMembers {
 public:
  explicit TopLevelMembers(absl::string_view text) : text_(text) {}

  // The exact text of member `name`'s value; nullopt when absent.
  std::optional<absl::string_view> Find(absl::string_view name) {
    std::optional<absl::string_view> found;
    pos_ = 0;
    SkipSpace();
    if (!Take('{')) return std::nullopt;
    SkipSpace();
    if (Take('}')) return std::nullopt;
    for (;;) {
      SkipSpace();
      const size_t key_start = pos_;
      SkipString();
      absl::string_view key_token = text_.substr(key_start, pos_ - key_start);
      SkipSpace();
      if (!Take(':')) return std::nullopt;
      SkipSpace();
      const size_t value_start = pos_;
      SkipValue();
      Json key = Json::parse(key_token, nullptr, false);
      if (key.is_string() && key.get<std::string>() == name) {
        found = text_.substr(value_start, pos_ - value_start);
      }
      SkipSpace();
      if (!Take(',')) break;
    }
    return found;
  }

 private:
  bool Take(char c) {
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  void SkipSpace() {
    while (pos_ < text_.size() && absl::StrContains(" \t\r\n", text_[pos_])) {
      ++pos_;
    }
  }
  // At a '"': past the closing one.
  void SkipString() {
    ++pos_;
    while (pos_ < text_.size() && text_[pos_] != '"') {
      pos_ += text_[pos_] == '\\' ? 2 : 1;
    }
    ++pos_;
  }
  void SkipValue() {
    int depth = 0;
    while (pos_ < text_.size()) {
      char c = text_[pos_];
      if (c == '"') {
        SkipString();
      } else if (c == '{' || c == '[') {
        ++depth;
        ++pos_;
      } else if (c == '}' || c == ']') {
        if (depth == 0) return;
        --depth;
        ++pos_;
      } else if (c == ',' && depth == 0) {
        return;
      } else if (depth == 0 && absl::StrContains(" \t\r\n", c)) {
        return;
      } else {
        ++pos_;
      }
      if (depth == 0 && (c == '"' || c == '}' || c == ']')) return;
    }
  }

  absl::string_view text_;
  size_t pos_ = 0;
};

absl::Status Invalid(absl::string_view why) {
  return absl::InvalidArgumentError(why);
}

absl::Status CheckRequired(const CloudEvent& e) {
  if (e.specversion != kCloudEventsSpecVersion) {
    return Invalid(absl::StrCat("specversion is '", e.specversion,
                                "', not 1.0 (missing or unsupported)"));
  }
  using Named = std::pair<const char*, const std::string*>;
  for (const auto& [name, value] :
       {Named{"id", &e.id}, Named{"source", &e.source},
        Named{"type", &e.type}}) {
    if (value->empty()) {
      return Invalid(
          absl::StrCat("attribute '", name, "' is missing or empty"));
    }
  }
  return absl::OkStatus();
}

// The attribute `name` of `e`, for the known ones; null otherwise.
std::string* KnownAttribute(CloudEvent& e, absl::string_view name) {
  if (name == "specversion") return &e.specversion;
  if (name == "id") return &e.id;
  if (name == "source") return &e.source;
  if (name == "type") return &e.type;
  if (name == "time") return &e.time;
  if (name == "subject") return &e.subject;
  if (name == "datacontenttype") return &e.datacontenttype;
  return nullptr;
}

absl::StatusOr<CloudEvent> DecodeBinary(
    const std::vector<std::pair<std::string, std::string>>& headers,
    const std::optional<std::string>& value) {
  CloudEvent e;
  e.mode = CloudEventsMode::kBinary;
  std::vector<std::string> seen;
  for (const auto& [name, v] : headers) {
    if (absl::EqualsIgnoreCase(name, kContentTypeHeader)) {
      e.datacontenttype = v;
      continue;
    }
    if (!absl::StartsWith(name, kCeHeaderPrefix)) continue;
    std::string attribute = name.substr(kCeHeaderPrefix.size());
    for (const std::string& s : seen) {
      if (s == attribute) {
        return Invalid(absl::StrCat("header '", name, "' appears twice"));
      }
    }
    seen.push_back(attribute);
    if (!IsValidUtf8(v)) {
      return Invalid(absl::StrCat("header '", name, "' is not UTF-8"));
    }
    if (std::string* known = KnownAttribute(e, attribute)) {
      *known = v;
    } else {
      e.extensions.emplace_back(std::move(attribute), v);
    }
  }
  if (absl::Status s = CheckRequired(e); !s.ok()) return s;
  e.data = value;
  return e;
}

absl::StatusOr<CloudEvent> DecodeStructured(
    absl::string_view content_type, const std::optional<std::string>& value) {
  const std::string media = MediaType(content_type);
  if (media != "application/cloudevents+json") {
    return Invalid(absl::StrCat("event format '", media,
                                "' is not supported (only "
                                "application/cloudevents+json)"));
  }
  if (!value.has_value()) {
    return Invalid("a structured CloudEvent has no value");
  }
  Json doc = Json::parse(*value, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return Invalid("the value is not a JSON object");
  }
  CloudEvent e;
  e.mode = CloudEventsMode::kStructured;
  for (const auto& [name, v] : doc.items()) {
    // A null attribute is an absent one.
    if (name == "data" || name == "data_base64" || v.is_null()) continue;
    std::string* known = KnownAttribute(e, name);
    if (known != nullptr) {
      if (!v.is_string()) {
        return Invalid(
            absl::StrCat("attribute '", name, "' is not a JSON string"));
      }
      *known = v.get<std::string>();
    } else {
      e.extensions.emplace_back(
          name, v.is_string() ? v.get<std::string>() : v.dump());
    }
  }
  if (absl::Status s = CheckRequired(e); !s.ok()) return s;
  auto data = doc.find("data");
  auto data_base64 = doc.find("data_base64");
  const bool has_data = data != doc.end() && !data->is_null();
  const bool has_base64 = data_base64 != doc.end() && !data_base64->is_null();
  if (has_data && has_base64) {
    return Invalid("both data and data_base64 are present");
  }
  if (has_base64) {
    std::string bytes;
    if (!data_base64->is_string() ||
        !absl::Base64Unescape(data_base64->get<std::string>(), &bytes)) {
      return Invalid("data_base64 is not a base64 string");
    }
    e.data = std::move(bytes);
  } else if (has_data) {
    if (data->is_string() && !IsJsonMediaType(MediaType(e.datacontenttype))) {
      e.data = data->get<std::string>();
    } else {
      std::optional<absl::string_view> raw =
          TopLevelMembers(*value).Find("data");
      if (!raw.has_value()) return absl::InternalError("data member not found");
      e.data = std::string(*raw);
    }
  }
  return e;
}

}  // namespace

absl::StatusOr<CloudEventsMode> ParseCloudEventsMode(absl::string_view name) {
  if (name == "off") return CloudEventsMode::kOff;
  if (name == "binary") return CloudEventsMode::kBinary;
  if (name == "structured") return CloudEventsMode::kStructured;
  return absl::InvalidArgumentError(
      absl::StrCat("must be off, binary or structured, not '", name, "'"));
}

absl::string_view CloudEventsModeName(CloudEventsMode mode) {
  switch (mode) {
    case CloudEventsMode::kOff:
      return "off";
    case CloudEventsMode::kBinary:
      return "binary";
    case CloudEventsMode::kStructured:
      return "structured";
  }
  return "off";
}

std::string DefaultCloudEventsSource(absl::string_view identity) {
  std::string out = "/outboxd/";
  for (char c : identity) {
    if (IsUnreserved(c) || IsSubDelim(c) || c == ':' || c == '@' || c == '/') {
      out.push_back(c);
    } else {
      // Upper-case hex digits, as RFC 3986 recommends.
      absl::StrAppendFormat(&out, "%%%02X", static_cast<unsigned char>(c));
    }
  }
  return out;
}

absl::Status CheckCloudEventsSource(absl::string_view source) {
  if (source.empty()) return Invalid("must not be empty");
  for (size_t i = 0; i < source.size(); ++i) {
    const char c = source[i];
    if (c == '%') {
      if (i + 2 >= source.size() || !IsHexDigit(source[i + 1]) ||
          !IsHexDigit(source[i + 2])) {
        return Invalid(absl::StrCat("'", source,
                                    "' is not a URI-reference: '%' at offset ",
                                    i, " is not followed by two hex digits"));
      }
      i += 2;
      continue;
    }
    if (!IsUriChar(c)) {
      return Invalid(
          absl::StrCat("'", absl::CHexEscape(source),
                       "' is not a URI-reference: the character at offset ", i,
                       " must be percent-encoded"));
    }
  }
  return absl::OkStatus();
}

std::string FormatRfc3339Millis(int64_t unix_ms) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::FromUnixMillis(unix_ms),
                          absl::UTCTimeZone());
}

absl::string_view ContentTypeOf(const OutboxEvent& event) {
  return event.content_type.empty() ? event.default_content_type
                                    : absl::string_view(event.content_type);
}

bool IsCloudEventsHeader(absl::string_view name) {
  for (absl::string_view n :
       {kCeHeaderSpecVersion, kCeHeaderId, kCeHeaderSource, kCeHeaderType,
        kCeHeaderTime, kCeHeaderSubject, kContentTypeHeader,
        absl::string_view("ce_datacontenttype")}) {
    if (absl::EqualsIgnoreCase(name, n)) return true;
  }
  return false;
}

absl::Status ToCloudEvent(const CloudEventsOptions& options,
                          OutboxEvent* event) {
  if (event->id.empty()) return Invalid("the event id is empty");
  if (event->type.empty()) return Invalid("the event type is empty");
  using Named = std::pair<const char*, const std::string*>;
  for (const auto& [what, text] :
       {Named{"event id", &event->id}, Named{"event type", &event->type},
        Named{"aggregate id", &event->aggregate_id},
        Named{"content type", &event->content_type}}) {
    if (!IsValidUtf8(*text)) {
      return Invalid(absl::StrCat("the ", what,
                                  " is not UTF-8 (CloudEvents attributes "
                                  "are UTF-8 strings)"));
    }
  }
  if (!event->content_type.empty() &&
      !LooksLikeMediaType(event->content_type)) {
    return Invalid(absl::StrCat("the content type '",
                                absl::CHexEscape(event->content_type),
                                "' is not a media type (type/subtype)"));
  }

  auto& headers = event->headers;
  for (auto it = headers.begin(); it != headers.end();) {
    if (IsCloudEventsHeader(it->first)) {
      event->dropped_headers.push_back(std::move(it->first));
      it = headers.erase(it);
    } else {
      ++it;
    }
  }
  if (options.mode == CloudEventsMode::kStructured &&
      event->payload.has_value()) {
    event->payload = StructuredDocument(options, *event);
    headers.emplace_back(std::string(kContentTypeHeader),
                         std::string(kCloudEventsJsonContentType));
    return absl::OkStatus();
  }
  // Binary mode, and a tombstone in structured mode: no data, so no
  // content-type.
  AppendAttributeHeaders(options, *event, event->payload.has_value(), &headers);
  return absl::OkStatus();
}

CloudEventsMode CloudEventsModeOf(
    const std::vector<std::pair<std::string, std::string>>& headers) {
  bool binary = false;
  for (const auto& [name, value] : headers) {
    if (absl::EqualsIgnoreCase(name, kContentTypeHeader) &&
        absl::StartsWithIgnoreCase(absl::StripLeadingAsciiWhitespace(value),
                                   "application/cloudevents")) {
      return CloudEventsMode::kStructured;
    }
    if (name == kCeHeaderSpecVersion) binary = true;
  }
  return binary ? CloudEventsMode::kBinary : CloudEventsMode::kOff;
}

absl::StatusOr<CloudEvent> DecodeCloudEvent(
    const std::vector<std::pair<std::string, std::string>>& headers,
    const std::optional<std::string>& value) {
  switch (CloudEventsModeOf(headers)) {
    case CloudEventsMode::kOff:
      return Invalid("not a CloudEvent (no ce_specversion header)");
    case CloudEventsMode::kBinary:
      return DecodeBinary(headers, value);
    case CloudEventsMode::kStructured:
      break;
  }
  std::string content_type;
  for (const auto& [name, v] : headers) {
    if (absl::EqualsIgnoreCase(name, kContentTypeHeader)) {
      content_type = v;
      break;
    }
  }
  return DecodeStructured(content_type, value);
}

std::string CloudEventAttributesJson(const CloudEvent& event) {
  Json j = {{"specversion", event.specversion},
            {"id", event.id},
            {"source", event.source},
            {"type", event.type}};
  if (!event.time.empty()) j["time"] = event.time;
  if (!event.subject.empty()) j["subject"] = event.subject;
  if (!event.datacontenttype.empty()) {
    j["datacontenttype"] = event.datacontenttype;
  }
  for (const auto& [name, value] : event.extensions) j[name] = value;
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace outboxd
