#include "pipeline/record_builder.h"

#include <utility>

#include "nlohmann/json.hpp"

namespace outboxd {
namespace {

// The invalid event an event becomes, keeping its position.
InvalidEvent InvalidFrom(const OutboxEvent& e, std::string reason) {
  InvalidEvent bad;
  bad.position = e.position;
  bad.table_seq = e.table_seq;
  bad.commit_time_unix_ms = e.commit_time_unix_ms;
  bad.reason = std::move(reason);
  bad.aggregate_id = e.aggregate_id;
  bad.id = e.id;
  bad.table = e.table;
  bad.republished_after = e.republished_after;
  bad.reconciled_before = e.reconciled_before;
  return bad;
}

}  // namespace

RecordBuilder::RecordBuilder(RecordOptions options)
    : options_(std::move(options)),
      router_(options_.router),
      cloudevents_(options_.cloudevents) {}

void RecordBuilder::SetSource(const std::string& identity) {
  router_.source = identity;
  if (options_.cloudevents.source.empty()) {
    cloudevents_.source = DefaultCloudEventsSource(identity);
  }
}

std::optional<InvalidEvent> RecordBuilder::Prepare(OutboxEvent& event) const {
  if (options_.value_format != ValueFormat::kPayload) {
    // The router publishes the payload as the value: make it the envelope.
    event.payload = EncodeValue(event, options_.value_format);
    event.content_type =
        std::string(ValueFormatContentType(options_.value_format));
  }
  if (cloudevents_.mode != CloudEventsMode::kOff) {
    // Headers (binary) or the value's document (structured) of the
    // CloudEvent; an event that cannot be one is invalid.
    if (absl::Status s = ToCloudEvent(cloudevents_, &event); !s.ok()) {
      InvalidEvent bad =
          InvalidFrom(event, absl::StrCat("not a CloudEvent: ", s.message()));
      bad.content = EventAsJson(event);
      return bad;
    }
  }
  return std::nullopt;
}

KafkaRecord RecordBuilder::DeadLetter(const InvalidEvent& bad) const {
  KafkaRecord r;
  r.topic = options_.dlq_topic;
  r.key = bad.aggregate_id;
  r.value = absl::string_view(bad.content);
  r.timestamp_ms = bad.commit_time_unix_ms;
  r.headers.emplace_back("outbox.error", bad.reason);
  // The event's id, so that a reader (the reconciler after a restart, a
  // consumer of the dead-letter topic) finds where the event went.
  if (!bad.id.empty()) r.headers.emplace_back(std::string(kHeaderId), bad.id);
  if (bad.table_seq.has_value()) {
    r.headers.emplace_back(std::string(kHeaderSeq),
                           absl::StrCat(*bad.table_seq));
  } else {
    r.headers.emplace_back(std::string(kHeaderLsn),
                           absl::StrCat(bad.position.commit_lsn.value()));
    r.headers.emplace_back(std::string(kHeaderIndex),
                           absl::StrCat(bad.position.index));
  }
  if (bad.republished_after.has_value()) {
    r.headers.emplace_back(std::string(kHeaderRepublished),
                           absl::StrCat(bad.republished_after->value()));
  }
  if (bad.reconciled_before.has_value()) {
    r.headers.emplace_back(std::string(kHeaderReconciled),
                           absl::StrCat(bad.reconciled_before->value()));
  }
  if (!bad.table.empty()) {
    r.headers.emplace_back(std::string(kHeaderTable), bad.table);
  }
  return r;
}

InvalidEvent RecordBuilder::Misrouted(const OutboxEvent& e,
                                      const std::string& topic,
                                      const absl::Status& cause) {
  InvalidEvent bad = InvalidFrom(
      e, absl::StrCat("cannot route to ", topic, ": ", cause.message()));
  bad.content = EventAsJson(e);
  return bad;
}

InvalidEvent RecordBuilder::Unproducible(const OutboxEvent& e,
                                         const absl::Status& cause) {
  InvalidEvent bad =
      InvalidFrom(e, absl::StrCat("cannot produce: ", cause.message()));
  nlohmann::ordered_json c = {
      {"id", e.id},
      {"aggregatetype", e.aggregate_type},
      {"aggregateid", e.aggregate_id},
      {"type", e.type},
      {"payload_bytes", e.payload ? e.payload->size() : 0},
  };
  bad.content =
      c.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return bad;
}

}  // namespace outboxd
