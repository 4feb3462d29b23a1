// Router: OutboxEvent -> Kafka record (DESIGN.md section 2).
//
// Pure. A KafkaRecord borrows the key, value and header values of the event
// it was routed from: the event must remain live while the record is in use.
#ifndef OUTBOXD_OUTBOX_ROUTER_H_
#define OUTBOXD_OUTBOX_ROUTER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "outbox/event.h"

namespace outboxd {

struct RouterOptions {
  std::string topic_prefix = "outbox.event.";
  // When not empty, every event goes to this topic.
  std::string fixed_topic;
};

struct KafkaRecord {
  std::string topic;
  absl::string_view key;
  std::optional<absl::string_view> value;  // nullopt: tombstone
  int64_t timestamp_ms = 0;
  // id, eventType, the event's own headers, outbox.lsn, outbox.index.
  std::vector<std::pair<std::string, std::string>> headers;
};

// Header names of DESIGN.md section 2.
inline constexpr absl::string_view kHeaderId = "id";
inline constexpr absl::string_view kHeaderEventType = "eventType";
inline constexpr absl::string_view kHeaderLsn = "outbox.lsn";
inline constexpr absl::string_view kHeaderIndex = "outbox.index";

KafkaRecord Route(const OutboxEvent& event, const RouterOptions& options);

}  // namespace outboxd

#endif  // OUTBOXD_OUTBOX_ROUTER_H_
