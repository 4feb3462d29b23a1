#include "outbox/router.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

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
  if (!options.source.empty()) {
    record.headers.emplace_back(kHeaderSource, options.source);
  }
  return record;
}

}  // namespace outboxd
