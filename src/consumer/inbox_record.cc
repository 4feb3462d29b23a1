#include "consumer/inbox_record.h"

#include <cstdint>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "outbox/router.h"

namespace outboxd {
namespace {

// With an envelope format the event travels inside the value: take the
// payload, id, position and dependencies from it.
void DecodeEnvelope(ValueFormat format, InboxRecord& r) {
  ConsumedRecordView view;
  view.topic = r.topic;
  if (r.key.has_value()) view.key = *r.key;
  if (r.value.has_value()) view.value = absl::string_view(*r.value);
  view.headers = &r.headers;
  view.timestamp_ms = r.timestamp_ms;
  absl::StatusOr<OutboxEvent> event = DecodeRecord(format, view);
  if (!event.ok()) {
    r.decode_status = absl::InvalidArgumentError(
        absl::StrCat("value is not ", ValueFormatName(format), ": ",
                     event.status().message()));
    return;
  }
  r.value = event->payload;
  if (!event->id.empty()) r.event_id = event->id;
  if (event->table_seq.has_value()) {
    // A polled event: its seq is its position, never an LSN of 0.
    r.seq = event->table_seq;
    r.lsn.reset();
    r.index.reset();
  } else if (event->position.commit_lsn.valid()) {
    r.lsn = event->position.commit_lsn.value();
    r.index = event->position.index;
    r.seq.reset();
  }
  if (!event->depends_on.empty()) r.depends_on = event->depends_on;
}

}  // namespace

std::optional<std::string> InboxRecord::Header(absl::string_view name) const {
  for (const auto& [n, v] : headers) {
    if (n == name) return v;
  }
  return std::nullopt;
}

std::string InboxRecord::HeadersJson() const {
  nlohmann::json object = nlohmann::json::object();
  // The first occurrence of a name, as Header().
  for (const auto& [n, v] : headers) {
    if (!object.contains(n)) object[n] = v;
  }
  return object.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

InboxRecord InboxRecordFromMessage(ConsumedMessage message,
                                   ValueFormat format) {
  InboxRecord r;
  static_cast<ConsumedMessage&>(r) = std::move(message);
  // One rule for reserved headers: outboxd sets each at most once, so a
  // record carrying one twice (an older outboxd let a headers column forge
  // them) is ambiguous. It is not guessed at: it fails like a bad value
  // (retried, then dead-lettered or stopped, per --on-failure).
  for (size_t i = 0; i < r.headers.size() && r.decode_status.ok(); ++i) {
    const std::string& name = r.headers[i].first;
    if (!IsReservedHeader(name)) continue;
    for (size_t j = i + 1; j < r.headers.size(); ++j) {
      if (r.headers[j].first == name) {
        r.decode_status = absl::InvalidArgumentError(absl::StrCat(
            "reserved header '", name,
            "' appears more than once: which one is outboxd's is ambiguous"));
        break;
      }
    }
  }
  if (CloudEventsModeOf(r.headers) != CloudEventsMode::kOff &&
      r.decode_status.ok()) {
    absl::StatusOr<CloudEvent> ce = DecodeCloudEvent(r.headers, r.value);
    if (ce.ok()) {
      r.value = ce->data;
      r.cloudevent = *std::move(ce);
    } else {
      r.decode_status = absl::InvalidArgumentError(
          absl::StrCat("not a valid CloudEvent: ", ce.status().message()));
    }
  }
  auto id = r.Header(kHeaderId);
  if (id.has_value() && !id->empty()) {
    r.event_id = *id;
  } else if (r.cloudevent.has_value()) {
    r.event_id = r.cloudevent->id;
  } else {
    r.event_id = absl::StrCat(r.topic, "/", r.partition, "/", r.offset);
  }
  if (auto deps = r.Header(kHeaderDependsOn); deps.has_value()) {
    for (absl::string_view d : absl::StrSplit(*deps, ',', absl::SkipEmpty())) {
      r.depends_on.emplace_back(d);
    }
  }
  if (auto source = r.Header(kHeaderSource)) r.source = *source;
  uint64_t lsn;
  uint32_t index;
  if (auto h = r.Header(kHeaderLsn); h && absl::SimpleAtoi(*h, &lsn)) {
    r.lsn = lsn;
  }
  if (auto h = r.Header(kHeaderIndex); h && absl::SimpleAtoi(*h, &index)) {
    r.index = index;
  }
  int64_t seq;
  if (auto h = r.Header(kHeaderSeq); h && absl::SimpleAtoi(*h, &seq)) {
    r.seq = seq;
  }
  if (r.seq.has_value() && (r.lsn.has_value() || r.index.has_value()) &&
      r.decode_status.ok()) {
    // outboxd gives a record one kind of position: both is ambiguous.
    r.decode_status = absl::InvalidArgumentError(
        "headers outbox.seq and outbox.lsn together: which position is "
        "outboxd's is ambiguous");
  }
  if (format != ValueFormat::kPayload && r.decode_status.ok()) {
    DecodeEnvelope(format, r);
  }
  return r;
}

}  // namespace outboxd
