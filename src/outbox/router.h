// Router: OutboxEvent -> Kafka record (docs/ARCHITECTURE.md, "The record
// contract").
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

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "outbox/event.h"

namespace outboxd {

struct RouterOptions {
  std::string topic_prefix = "outbox.event.";
  // When not empty, every event goes to this topic.
  std::string fixed_topic;
  // Global ordering (--ordering=global): when >= 0, every record goes to
  // this partition (of fixed_topic), so one partition holds the whole stream
  // in (outbox.lsn, outbox.index) order. -1: the partitioner picks by key.
  int32_t fixed_partition = -1;
  // When not empty, the header outbox.source: a stable id of the database
  // and slot the events come from (see SourceIdentity).
  std::string source;
};

struct KafkaRecord {
  std::string topic;
  int32_t partition = -1;  // -1 (RD_KAFKA_PARTITION_UA): by the partitioner
  absl::string_view key;
  std::optional<absl::string_view> value;  // nullopt: tombstone
  int64_t timestamp_ms = 0;
  // id, eventType, the event's own headers, outbox.lsn, outbox.index (or,
  // for a polled event, outbox.seq).
  std::vector<std::pair<std::string, std::string>> headers;
};

// Header names (docs/ARCHITECTURE.md, "The record contract").
inline constexpr absl::string_view kHeaderId = "id";
inline constexpr absl::string_view kHeaderEventType = "eventType";
inline constexpr absl::string_view kHeaderLsn = "outbox.lsn";
inline constexpr absl::string_view kHeaderIndex = "outbox.index";
// Polled events only: the row's seq (unique, not commit order; README).
inline constexpr absl::string_view kHeaderSeq = "outbox.seq";
// Causal ordering: the ids this event depends on, comma-separated.
inline constexpr absl::string_view kHeaderDependsOn = "outbox.depends-on";
// Republished after a lost slot: the last acknowledged position before the
// loss (decimal u64). Its outbox.lsn/outbox.index sort after every event
// delivered before the loss and before every event of the new slot.
inline constexpr absl::string_view kHeaderRepublished = "outbox.republished";
// Published late by the reconciler (a row still in the table, older than
// --reconcile-margin, that outboxd never acknowledged): the position it had
// confirmed then (decimal u64).
inline constexpr absl::string_view kHeaderReconciled = "outbox.reconciled";
// The stream the position belongs to: "<system id>/<dbname>/<slot>".
inline constexpr absl::string_view kHeaderSource = "outbox.source";
// The outbox table of the event, "schema.table" (unquoted); absent for a
// logical decoding message, which has no table.
inline constexpr absl::string_view kHeaderTable = "outbox.table";

// True for the names only outboxd may set: id, eventType and every name
// starting with "outbox." (exact, case-sensitive match, as Kafka headers).
bool IsReservedHeader(absl::string_view name);

// The event's own headers never carry a reserved name: any that slipped
// into event.headers is left out here too.
KafkaRecord Route(const OutboxEvent& event, const RouterOptions& options);

// The longest topic name Kafka accepts.
inline constexpr size_t kMaxTopicNameLength = 249;

// OK when Kafka accepts `topic` as a topic name: 1 to 249 characters of
// [a-zA-Z0-9._-], and neither "." nor "..". Otherwise kInvalidArgument
// saying why (the name is quoted with non-printable bytes escaped). The dev
// broker accepts any name; checking here keeps both brokers alike, and an
// illegal name is never sent to a broker.
absl::Status CheckTopicName(absl::string_view topic);

// A JSON object with the event's fields (payload as text, headers as an
// object): the content of the dead-letter record of an event that could
// not be delivered to its topic, complete enough to replay it.
std::string EventAsJson(const OutboxEvent& event);

}  // namespace outboxd

#endif  // OUTBOXD_OUTBOX_ROUTER_H_
