#include "outbox/value_format.h"

#include <algorithm>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/utf8.h"
#include "nlohmann/json.hpp"
#include "outbox/router.h"
#include "outbox_event.pb.h"

namespace outboxd {
namespace {

using Json = nlohmann::ordered_json;

constexpr char kTimeFormat[] = "%Y-%m-%dT%H:%M:%E3SZ";

std::string FormatCommitTime(int64_t unix_ms) {
  return absl::FormatTime(kTimeFormat, absl::FromUnixMillis(unix_ms),
                          absl::UTCTimeZone());
}

std::string EncodeEnvelopeJson(const OutboxEvent& e) {
  Json j;
  j["id"] = e.id;
  j["aggregatetype"] = e.aggregate_type;
  j["aggregateid"] = e.aggregate_id;
  j["type"] = e.type;
  if (!e.payload.has_value()) {
    j["payload"] = nullptr;
  } else if (IsValidUtf8(*e.payload)) {
    j["payload"] = *e.payload;
  } else {
    j["payload"] = absl::Base64Escape(*e.payload);
    j["payload_encoding"] = "base64";
  }
  Json headers = Json::object();
  for (const auto& [name, value] : e.headers) headers[name] = value;
  j["headers"] = std::move(headers);
  if (e.table_seq.has_value()) {
    // A polled row has no commit LSN: its position is the row's seq.
    j["position"] = {{"seq", absl::StrCat(*e.table_seq)}};
  } else {
    j["position"] = {{"lsn", absl::StrCat(e.position.commit_lsn.value())},
                     {"index", e.position.index}};
  }
  j["commit_time"] = FormatCommitTime(e.commit_time_unix_ms);
  // Fields other than the payload come from PostgreSQL text and are UTF-8;
  // `replace` keeps a broken one from throwing.
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string EncodeProtobuf(const OutboxEvent& e) {
  outboxd::v1::OutboxEvent m;
  m.set_id(e.id);
  m.set_aggregate_type(e.aggregate_type);
  m.set_aggregate_id(e.aggregate_id);
  m.set_type(e.type);
  if (e.payload.has_value()) m.set_payload(*e.payload);
  for (const auto& [name, value] : e.headers) {
    auto* h = m.add_headers();
    h->set_name(name);
    h->set_value(value);
  }
  if (e.table_seq.has_value()) {
    m.mutable_position()->set_seq(*e.table_seq);  // a polled row: no LSN
  } else {
    m.mutable_position()->set_lsn(e.position.commit_lsn.value());
    m.mutable_position()->set_index(e.position.index);
  }
  m.set_commit_time_unix_ms(e.commit_time_unix_ms);
  return m.SerializeAsString();
}

absl::Status Invalid(absl::string_view format, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(format, " value: ", what));
}

absl::StatusOr<std::string> StringField(const Json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end() || !it->is_string()) {
    return Invalid("envelope-json",
                   absl::StrCat("\"", name, "\" is not a string"));
  }
  return it->get<std::string>();
}

absl::StatusOr<OutboxEvent> DecodeEnvelopeJson(absl::string_view value) {
  Json j = Json::parse(value.begin(), value.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return Invalid("envelope-json", "not a JSON object");
  }
  OutboxEvent e;
  for (auto [field, name] : {std::pair{&e.id, "id"},
                             {&e.aggregate_type, "aggregatetype"},
                             {&e.aggregate_id, "aggregateid"},
                             {&e.type, "type"}}) {
    auto v = StringField(j, name);
    if (!v.ok()) return v.status();
    *field = *std::move(v);
  }
  auto payload = j.find("payload");
  if (payload == j.end() || payload->is_null()) {
    e.payload.reset();
  } else if (!payload->is_string()) {
    return Invalid("envelope-json", "\"payload\" is not a string or null");
  } else if (j.value("payload_encoding", "") == "base64") {
    std::string bytes;
    if (!absl::Base64Unescape(payload->get<std::string>(), &bytes)) {
      return Invalid("envelope-json", "\"payload\" is not base64");
    }
    e.payload = std::move(bytes);
  } else {
    e.payload = payload->get<std::string>();
  }
  if (auto h = j.find("headers"); h != j.end() && !h->is_null()) {
    if (!h->is_object()) return Invalid("envelope-json", "bad \"headers\"");
    for (const auto& [name, v] : h->items()) {
      if (!v.is_string()) {
        return Invalid("envelope-json", "a header value is not a string");
      }
      e.headers.emplace_back(name, v.get<std::string>());
    }
  }
  auto pos = j.find("position");
  if (pos == j.end() || !pos->is_object()) {
    return Invalid("envelope-json", "no \"position\"");
  }
  if (auto seq = pos->find("seq"); seq != pos->end()) {
    // A polled row's position: {"seq": "<decimal>"}, nothing else.
    int64_t value = 0;
    if (pos->size() != 1 || !seq->is_string() ||
        !absl::SimpleAtoi(seq->get<std::string>(), &value)) {
      return Invalid("envelope-json", "bad \"position\"");
    }
    e.table_seq = value;
  } else {
    uint64_t lsn = 0;
    if (!pos->contains("lsn") || !(*pos)["lsn"].is_string() ||
        !absl::SimpleAtoi((*pos)["lsn"].get<std::string>(), &lsn) ||
        !pos->contains("index") || !(*pos)["index"].is_number_unsigned()) {
      return Invalid("envelope-json", "bad \"position\"");
    }
    e.position.commit_lsn = Lsn(lsn);
    e.position.index = (*pos)["index"].get<uint32_t>();
  }
  auto time = StringField(j, "commit_time");
  if (!time.ok()) return time.status();
  absl::Time t;
  std::string err;
  if (!absl::ParseTime(absl::RFC3339_full, *time, &t, &err)) {
    return Invalid("envelope-json", absl::StrCat("bad \"commit_time\": ", err));
  }
  e.commit_time_unix_ms = absl::ToUnixMillis(t);
  return e;
}

absl::StatusOr<OutboxEvent> DecodeProtobuf(absl::string_view value) {
  outboxd::v1::OutboxEvent m;
  if (!m.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
    return Invalid("protobuf", "not an outboxd.v1.OutboxEvent");
  }
  OutboxEvent e;
  e.id = m.id();
  e.aggregate_type = m.aggregate_type();
  e.aggregate_id = m.aggregate_id();
  e.type = m.type();
  if (m.has_payload()) e.payload = m.payload();
  for (const auto& h : m.headers()) e.headers.emplace_back(h.name(), h.value());
  if (m.position().has_seq()) {
    // A polled row's position; it has no LSN to go with it.
    if (m.position().lsn() != 0 || m.position().index() != 0) {
      return Invalid("protobuf", "position has both a seq and an lsn");
    }
    e.table_seq = m.position().seq();
  } else {
    e.position.commit_lsn = Lsn(m.position().lsn());
    e.position.index = m.position().index();
  }
  e.commit_time_unix_ms = m.commit_time_unix_ms();
  return e;
}

absl::StatusOr<OutboxEvent> DecodePayload(const ConsumedRecordView& r) {
  OutboxEvent e;
  e.aggregate_id = std::string(r.key);
  if (r.value.has_value()) e.payload = std::string(*r.value);
  e.commit_time_unix_ms = r.timestamp_ms;
  if (absl::StartsWith(r.topic, r.topic_prefix) && !r.topic_prefix.empty()) {
    e.aggregate_type = std::string(r.topic.substr(r.topic_prefix.size()));
  }
  bool have_id = false, have_type = false, have_lsn = false;
  if (r.headers != nullptr) {
    std::vector<absl::string_view> reserved_seen;
    for (const auto& [name, value] : *r.headers) {
      // outboxd sets each reserved header once: twice is ambiguous.
      if (IsReservedHeader(name) &&
          std::find(reserved_seen.begin(), reserved_seen.end(), name) !=
              reserved_seen.end()) {
        return Invalid("payload", absl::StrCat("reserved header '", name,
                                               "' appears more than once"));
      }
      if (IsReservedHeader(name)) reserved_seen.push_back(name);
      if (name == kHeaderId) {
        e.id = value;
        have_id = true;
      } else if (name == kHeaderEventType) {
        e.type = value;
        have_type = true;
      } else if (name == kHeaderLsn) {
        uint64_t lsn;
        if (!absl::SimpleAtoi(value, &lsn)) {
          return Invalid("payload", "header outbox.lsn is not a number");
        }
        e.position.commit_lsn = Lsn(lsn);
        have_lsn = true;
      } else if (name == kHeaderIndex) {
        if (!absl::SimpleAtoi(value, &e.position.index)) {
          return Invalid("payload", "header outbox.index is not a number");
        }
        have_lsn = true;
      } else if (name == kHeaderSeq) {
        int64_t seq;
        if (!absl::SimpleAtoi(value, &seq)) {
          return Invalid("payload", "header outbox.seq is not a number");
        }
        e.table_seq = seq;
      } else if (!absl::StartsWith(name, "outbox.")) {
        e.headers.emplace_back(name, value);
      }
    }
  }
  if (!have_id || !have_type) {
    return Invalid("payload", "headers id and eventType are required");
  }
  // A polled record's position is outbox.seq alone: with outbox.lsn or
  // outbox.index beside it, which one is meant is ambiguous.
  if (e.table_seq.has_value() && have_lsn) {
    return Invalid("payload", "headers outbox.seq and outbox.lsn together");
  }
  return e;
}

}  // namespace

absl::StatusOr<ValueFormat> ParseValueFormat(absl::string_view name) {
  if (name == "payload") return ValueFormat::kPayload;
  if (name == "envelope-json") return ValueFormat::kEnvelopeJson;
  if (name == "protobuf") return ValueFormat::kProtobuf;
  return absl::InvalidArgumentError(absl::StrCat(
      "value format must be payload, envelope-json or protobuf, not '", name,
      "'"));
}

absl::string_view ValueFormatName(ValueFormat format) {
  switch (format) {
    case ValueFormat::kPayload:
      return "payload";
    case ValueFormat::kEnvelopeJson:
      return "envelope-json";
    case ValueFormat::kProtobuf:
      return "protobuf";
  }
  return "?";
}

absl::string_view ValueFormatContentType(ValueFormat format) {
  switch (format) {
    case ValueFormat::kPayload:
      return "";
    case ValueFormat::kEnvelopeJson:
      return "application/json";
    case ValueFormat::kProtobuf:
      return "application/x-protobuf";
  }
  return "";
}

std::optional<std::string> EncodeValue(const OutboxEvent& event,
                                       ValueFormat format) {
  switch (format) {
    case ValueFormat::kPayload:
      return event.payload;
    case ValueFormat::kEnvelopeJson:
      return EncodeEnvelopeJson(event);
    case ValueFormat::kProtobuf:
      return EncodeProtobuf(event);
  }
  return event.payload;
}

absl::StatusOr<OutboxEvent> DecodeRecord(ValueFormat format,
                                         const ConsumedRecordView& record) {
  if (format == ValueFormat::kPayload) return DecodePayload(record);
  if (!record.value.has_value()) {
    return Invalid(ValueFormatName(format), "a tombstone carries no event");
  }
  return format == ValueFormat::kEnvelopeJson
             ? DecodeEnvelopeJson(*record.value)
             : DecodeProtobuf(*record.value);
}

}  // namespace outboxd
