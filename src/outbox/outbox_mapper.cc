#include "outbox/outbox_mapper.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/pg_time.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "outbox/router.h"

namespace outboxd {
namespace {

constexpr uint32_t kByteaOid = 17;

using pgoutput::TupleValue;

int64_t PgTimeToUnixMillis(int64_t pg_micros) {
  return absl::ToUnixMillis(FromPgTimestamp(pg_micros));
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Text of one tuple column, nullopt for SQL NULL. An unchanged-TOAST marker
// cannot appear in an insert; it is reported as an error.
absl::StatusOr<std::optional<absl::string_view>> ColumnText(
    const pgoutput::TupleData& tuple, int index, absl::string_view name) {
  const TupleValue& v = tuple.values[index];
  switch (v.kind) {
    case TupleValue::Kind::kNull:
      return std::optional<absl::string_view>();
    case TupleValue::Kind::kText:
    case TupleValue::Kind::kBinary:
      return std::optional<absl::string_view>(v.data);
    case TupleValue::Kind::kUnchangedToast:
      return absl::InvalidArgumentError(
          absl::StrCat("column ", name, " arrived as unchanged TOAST"));
  }
  return absl::InternalError("unreachable tuple kind");
}

// JSON rendering of a row for the dead-letter topic: column -> text or null.
std::string RowAsJson(const std::vector<std::string>& names,
                      const pgoutput::TupleData& tuple) {
  nlohmann::ordered_json row = nlohmann::ordered_json::object();
  for (size_t i = 0; i < tuple.values.size() && i < names.size(); ++i) {
    const TupleValue& v = tuple.values[i];
    if (v.kind == TupleValue::Kind::kText ||
        v.kind == TupleValue::Kind::kBinary) {
      row[names[i]] = std::string(v.data);
    } else {
      row[names[i]] = nullptr;
    }
  }
  return row.dump(-1, ' ', false,
                  nlohmann::ordered_json::error_handler_t::replace);
}

// Headers from a JSON object of string values; reserved names are dropped
// into event->dropped_headers (README "Reserved headers").
absl::Status ParseHeaders(const nlohmann::ordered_json& value,
                          OutboxEvent* event) {
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

}  // namespace

absl::Status ParseHeadersText(absl::string_view text, OutboxEvent* event) {
  nlohmann::ordered_json doc =
      nlohmann::ordered_json::parse(text.begin(), text.end(), nullptr, false);
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
  nlohmann::ordered_json doc = nlohmann::ordered_json::parse(
      content.begin(), content.end(), nullptr, /*allow_exceptions=*/false);
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

OutboxMapper::OutboxMapper(OutboxMapperOptions options)
    : options_(std::move(options)) {}

absl::Status OutboxMapper::RequireTransaction(absl::string_view what) const {
  if (in_transaction_) return absl::OkStatus();
  return absl::DataLossError(
      absl::StrCat("protocol violation: ", what, " outside a transaction"));
}

absl::StatusOr<const OutboxMapper::CachedRelation*> OutboxMapper::FindRelation(
    uint32_t relation_id) {
  auto it = relations_.find(relation_id);
  if (it == relations_.end()) {
    return absl::DataLossError(
        absl::StrCat("protocol violation: no Relation message for relation id ",
                     relation_id));
  }
  return &it->second;
}

absl::StatusOr<MappedMessage> OutboxMapper::Apply(
    const pgoutput::PgOutputMessage& msg) {
  if (const auto* begin = std::get_if<pgoutput::Begin>(&msg)) {
    if (in_transaction_) {
      return absl::DataLossError(
          "protocol violation: Begin inside a transaction");
    }
    in_transaction_ = true;
    commit_lsn_ = begin->final_lsn;
    commit_time_unix_ms_ = PgTimeToUnixMillis(begin->commit_time);
    next_index_ = 0;
    return TransactionBegin{
        commit_lsn_, commit_time_unix_ms_,
        begin->commit_time + kPgEpochOffsetSeconds * 1000000};
  }
  if (const auto* commit = std::get_if<pgoutput::Commit>(&msg)) {
    RETURN_IF_ERROR(RequireTransaction("Commit"));
    if (commit->commit_lsn != commit_lsn_) {
      return absl::DataLossError(absl::StrCat(
          "protocol violation: Commit at ", commit->commit_lsn.ToString(),
          " for a transaction begun with commit LSN ", commit_lsn_.ToString()));
    }
    in_transaction_ = false;
    ++counters_.transactions;
    return TransactionCommit{commit->end_lsn};
  }
  if (const auto* rel = std::get_if<pgoutput::Relation>(&msg)) {
    return OnRelation(*rel);
  }
  if (const auto* insert = std::get_if<pgoutput::Insert>(&msg)) {
    return OnInsert(*insert);
  }
  if (const auto* message = std::get_if<pgoutput::Message>(&msg)) {
    return OnMessage(*message);
  }
  if (const auto* update = std::get_if<pgoutput::Update>(&msg)) {
    RETURN_IF_ERROR(RequireTransaction("Update"));
    RETURN_IF_ERROR(FindRelation(update->relation_id).status());
    ++counters_.ignored_updates;
    return MappedMessage();
  }
  if (const auto* del = std::get_if<pgoutput::Delete>(&msg)) {
    RETURN_IF_ERROR(RequireTransaction("Delete"));
    RETURN_IF_ERROR(FindRelation(del->relation_id).status());
    ++counters_.ignored_deletes;
    return MappedMessage();
  }
  if (std::holds_alternative<pgoutput::Truncate>(msg)) {
    RETURN_IF_ERROR(RequireTransaction("Truncate"));
    ++counters_.ignored_truncates;
    return MappedMessage();
  }
  // Origin and Type carry nothing the outbox needs.
  return MappedMessage();
}

absl::StatusOr<MappedMessage> OutboxMapper::OnRelation(
    const pgoutput::Relation& rel) {
  ++counters_.relations;
  CachedRelation cached;
  cached.nspname = rel.nspname;
  cached.relname = rel.relname;
  cached.column_count = rel.columns.size();
  cached.column_names.reserve(rel.columns.size());
  for (const auto& c : rel.columns) cached.column_names.push_back(c.name);

  const auto& table = options_.table;
  if (table.has_value() && rel.nspname == table->schema &&
      rel.relname == table->name) {
    OutboxLayout layout;
    const OutboxColumns& names = options_.columns;
    for (size_t i = 0; i < rel.columns.size(); ++i) {
      const std::string& n = rel.columns[i].name;
      int idx = static_cast<int>(i);
      if (n == names.id) layout.id = idx;
      if (n == names.aggregate_type) layout.aggregate_type = idx;
      if (n == names.aggregate_id) layout.aggregate_id = idx;
      if (n == names.type) layout.type = idx;
      if (n == names.payload) {
        layout.payload = idx;
        layout.payload_type_oid = rel.columns[i].type_oid;
      }
      if (!names.headers.empty() && n == names.headers) layout.headers = idx;
      if (!names.depends_on.empty() && n == names.depends_on) {
        layout.depends_on = idx;
      }
    }
    cached.outbox = layout;
  }
  relations_.insert_or_assign(rel.relation_id, std::move(cached));
  return MappedMessage();
}

absl::StatusOr<MappedMessage> OutboxMapper::OnInsert(
    const pgoutput::Insert& insert) {
  RETURN_IF_ERROR(RequireTransaction("Insert"));
  ASSIGN_OR_RETURN(const CachedRelation* rel, FindRelation(insert.relation_id));
  if (insert.new_tuple.values.size() != rel->column_count) {
    return absl::DataLossError(
        absl::StrCat("protocol violation: Insert into ", rel->nspname, ".",
                     rel->relname, " has ", insert.new_tuple.values.size(),
                     " columns, its Relation ", rel->column_count));
  }
  if (!rel->outbox.has_value()) {
    ++counters_.ignored_other_tables;
    return MappedMessage();
  }
  const OutboxLayout& layout = *rel->outbox;
  const OutboxColumns& names = options_.columns;
  const pgoutput::TupleData& tuple = insert.new_tuple;

  OutboxEvent event;
  event.position = NextPosition();
  event.commit_time_unix_ms = commit_time_unix_ms_;

  auto invalid = [&](std::string reason) -> MappedMessage {
    ++counters_.invalid_events;
    InvalidEvent bad;
    bad.position = event.position;
    bad.commit_time_unix_ms = commit_time_unix_ms_;
    bad.reason = std::move(reason);
    bad.content = RowAsJson(rel->column_names, tuple);
    bad.aggregate_id = event.aggregate_id;
    return bad;
  };

  // Required text columns.
  struct Required {
    int index;
    const std::string& name;
    std::string* target;
  };
  for (const Required& r :
       {Required{layout.aggregate_id, names.aggregate_id, &event.aggregate_id},
        Required{layout.id, names.id, &event.id},
        Required{layout.aggregate_type, names.aggregate_type,
                 &event.aggregate_type},
        Required{layout.type, names.type, &event.type}}) {
    if (r.index < 0) {
      return invalid(absl::StrCat("outbox table has no column '", r.name, "'"));
    }
    auto text = ColumnText(tuple, r.index, r.name);
    if (!text.ok()) return invalid(std::string(text.status().message()));
    if (!text->has_value()) {
      return invalid(absl::StrCat("column '", r.name, "' is NULL"));
    }
    r.target->assign((*text)->data(), (*text)->size());
  }

  if (layout.payload < 0) {
    return invalid(
        absl::StrCat("outbox table has no column '", names.payload, "'"));
  }
  auto payload = ColumnText(tuple, layout.payload, names.payload);
  if (!payload.ok()) return invalid(std::string(payload.status().message()));
  if (payload->has_value()) {
    if (layout.payload_type_oid == kByteaOid) {
      auto raw = DecodeByteaText(**payload);
      if (!raw.ok()) return invalid(std::string(raw.status().message()));
      event.payload = *std::move(raw);
    } else {
      event.payload.emplace((*payload)->data(), (*payload)->size());
    }
  }

  if (layout.headers >= 0) {
    auto headers = ColumnText(tuple, layout.headers, names.headers);
    if (!headers.ok()) return invalid(std::string(headers.status().message()));
    if (headers->has_value()) {
      absl::Status s = ParseHeadersText(**headers, &event);
      if (!s.ok()) return invalid(std::string(s.message()));
    }
  }
  if (layout.depends_on >= 0) {
    auto deps = ColumnText(tuple, layout.depends_on, names.depends_on);
    if (!deps.ok()) return invalid(std::string(deps.status().message()));
    if (deps->has_value()) {
      auto ids = ParseIdArrayText(**deps);
      if (!ids.ok()) {
        return invalid(absl::StrCat("column '", names.depends_on,
                                    "': ", ids.status().message()));
      }
      event.depends_on = *std::move(ids);
    }
  }
  ++counters_.events;
  return event;
}

absl::StatusOr<MappedMessage> OutboxMapper::OnMessage(
    const pgoutput::Message& message) {
  if (!message.transactional) {
    // Not atomic with the business change: not an event.
    ++counters_.ignored_nontransactional_messages;
    return MappedMessage();
  }
  RETURN_IF_ERROR(RequireTransaction("transactional Message"));
  if (options_.message_prefix.empty() ||
      message.prefix != options_.message_prefix) {
    ++counters_.ignored_other_prefix_messages;
    return MappedMessage();
  }
  OutboxEvent event;
  event.position = NextPosition();
  event.commit_time_unix_ms = commit_time_unix_ms_;
  absl::Status s = ParseMessageEvent(message.content, &event);
  if (!s.ok()) {
    ++counters_.invalid_events;
    InvalidEvent bad;
    bad.position = event.position;
    bad.commit_time_unix_ms = commit_time_unix_ms_;
    bad.reason = std::string(s.message());
    bad.content = std::string(message.content);
    bad.aggregate_id = event.aggregate_id;
    return bad;
  }
  ++counters_.events;
  return event;
}

}  // namespace outboxd
