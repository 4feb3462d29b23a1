// Republisher: after a lost slot (--on-slot-loss=republish), publishes from
// the outbox table every row that may have committed after the last
// acknowledged position, before the new slot streams.
//
// Which rows: those the publisher state (pg/publisher_state.h) cannot prove
// were committed at or before its position:
//   xmin not older than the recorded xmin horizon (no margin needed: every
//   older transaction had committed before the position), OR
//   created_at >= the recorded commit time - margin (covers rows whose xmin
//   was frozen meanwhile; the margin must cover the longest transaction,
//   since created_at is the transaction's start).
// Either being unknown (NULL) takes every row. The query runs after the new
// slot exists, so every row committed before the slot's start is visible
// to it and every later one is streamed: duplicates, never a gap.
//
// Records are routed as streamed ones (topic, key, value format, headers)
// with header outbox.republished and the position (new slot start - 1,
// rank), in created_at, seq order, table after table (the ranks go on
// from one table to the next). Logical decoding messages and rows
// deleted in their own transaction left nothing to republish.
//
// Uses a producer of its own and returns only once Kafka acknowledged every
// record (or with the first failure). Not thread-safe.
#ifndef OUTBOXD_PIPELINE_REPUBLISHER_H_
#define OUTBOXD_PIPELINE_REPUBLISHER_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kafka/producer.h"
#include "outbox/router.h"
#include "outbox/row_to_event.h"
#include "outbox/value_format.h"
#include "pg/identifier.h"
#include "pg/publisher_state.h"

namespace outboxd {

struct RepublishOptions {
  std::string conninfo;
  std::vector<QualifiedName> tables;  // republished one after the other
  OutboxColumns columns;
  std::string created_at_column = "created_at";  // required
  std::string seq_column = "seq";                // optional tie-break
  absl::Duration margin = absl::Hours(1);
  RouterOptions router;  // with the source identity
  ProducerOptions producer;
  ValueFormat value_format = ValueFormat::kPayload;
  std::string dlq_topic = "outbox.dlq";
  bool fail_on_invalid = false;  // --on-invalid=fail
  int fetch_size = 1000;
};

struct RepublishResult {
  uint64_t republished = 0;
  uint64_t dead_lettered = 0;
};

// `from`: the publisher state before the loss; `new_slot_start`: where the
// new slot streams from. kCancelled when `stop` became true.
absl::StatusOr<RepublishResult> RepublishLostEvents(
    const RepublishOptions& options, const PublisherState& from,
    Lsn new_slot_start, const std::atomic<bool>& stop);

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_REPUBLISHER_H_
