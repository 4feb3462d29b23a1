#include "outbox/router.h"

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace outboxd {

bool IsReservedHeader(absl::string_view name) {
  return name == kHeaderId || name == kHeaderEventType ||
         absl::StartsWith(name, "outbox.");
}

KafkaRecord Route(const OutboxEvent& event, const RouterOptions& options) {
  KafkaRecord record;
  record.topic = options.fixed_topic.empty()
                     ? absl::StrCat(options.topic_prefix, event.aggregate_type)
                     : options.fixed_topic;
  record.partition = options.fixed_partition;
  record.key = event.aggregate_id;
  if (event.payload.has_value()) record.value = *event.payload;
  record.timestamp_ms = event.commit_time_unix_ms;

  record.headers.reserve(event.headers.size() + 4);
  record.headers.emplace_back(kHeaderId, event.id);
  record.headers.emplace_back(kHeaderEventType, event.type);
  for (const auto& [name, value] : event.headers) {
    if (IsReservedHeader(name)) continue;
    record.headers.emplace_back(name, value);
  }
  if (event.table_seq.has_value()) {
    record.headers.emplace_back(kHeaderSeq, absl::StrCat(*event.table_seq));
  } else {
    record.headers.emplace_back(
        kHeaderLsn, absl::StrCat(event.position.commit_lsn.value()));
    record.headers.emplace_back(kHeaderIndex,
                                absl::StrCat(event.position.index));
  }
  if (!event.depends_on.empty()) {
    record.headers.emplace_back(kHeaderDependsOn,
                                absl::StrJoin(event.depends_on, ","));
  }
  if (event.republished_after.has_value()) {
    record.headers.emplace_back(kHeaderRepublished,
                                absl::StrCat(event.republished_after->value()));
  }
  if (event.reconciled_before.has_value()) {
    record.headers.emplace_back(kHeaderReconciled,
                                absl::StrCat(event.reconciled_before->value()));
  }
  if (!options.source.empty()) {
    record.headers.emplace_back(kHeaderSource, options.source);
  }
  if (!event.table.empty()) {
    record.headers.emplace_back(kHeaderTable, event.table);
  }
  return record;
}

absl::Status CheckTopicName(absl::string_view topic) {
  auto illegal = [&](absl::string_view why) {
    // CHexEscape: a reason must stay one printable line.
    std::string shown = topic.size() > 60
                            ? absl::StrCat(topic.substr(0, 60), "...")
                            : std::string(topic);
    return absl::InvalidArgumentError(absl::StrCat(
        "illegal Kafka topic name \"", absl::CHexEscape(shown), "\": ", why));
  };
  if (topic.empty()) return illegal("empty");
  if (topic.size() > kMaxTopicNameLength) {
    return illegal(absl::StrCat(topic.size(), " characters (at most ",
                                kMaxTopicNameLength, ")"));
  }
  if (topic == "." || topic == "..")
    return illegal("\".\" and \"..\" are reserved");
  for (char c : topic) {
    bool legal = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                 (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!legal) {
      return illegal(
          "only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
  }
  return absl::OkStatus();
}

std::string EventAsJson(const OutboxEvent& event) {
  nlohmann::ordered_json headers = nlohmann::ordered_json::object();
  for (const auto& [name, value] : event.headers) headers[name] = value;
  nlohmann::ordered_json j = {
      {"id", event.id},
      {"aggregatetype", event.aggregate_type},
      {"aggregateid", event.aggregate_id},
      {"type", event.type},
      {"payload", event.payload.has_value()
                      ? nlohmann::ordered_json(*event.payload)
                      : nlohmann::ordered_json(nullptr)},
      {"headers", headers},
  };
  if (event.table_seq.has_value()) j["seq"] = *event.table_seq;
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace outboxd
