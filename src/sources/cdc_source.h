// CdcSource: --source=cdc, events from a logical replication slot
// (sources/event_source.h).
//
//   ReplicationStream -> pgoutput::Decode -> OutboxMapper -> items
//
// Connect asks the SlotKeeper (sources/slot_keeper.h) for the slot (set up,
// judged, created or recovered by policy) and its start position, then
// starts streaming from the durable position. A transaction is a
// PostgreSQL transaction; its position the commit's end LSN; keepalives and
// transactions without events are idle positions. Durable() records the
// durable position in the publisher state (through the keeper) and sends
// standby status updates on the timer (never past the record); the
// walsender buffers while the Publisher does not read. WaitFd() is the
// replication socket; NextDue() the next status update (now, when a
// keepalive asked for a reply).
//
// Threading: the Publisher's thread only.
#ifndef OUTBOXD_SOURCES_CDC_SOURCE_H_
#define OUTBOXD_SOURCES_CDC_SOURCE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "metrics/outboxd_metrics.h"
#include "outbox/outbox_mapper.h"
#include "pg/replication_setup.h"
#include "sources/event_source.h"
#include "sources/slot_keeper.h"
#include "sources/slot_loss.h"

namespace outboxd {

struct CdcSourceOptions {
  std::string conninfo;
  ReplicationSetupOptions setup;
  OutboxMapperOptions mapper;
  absl::Duration status_interval = absl::Seconds(1);
  // While the slot is active in another process (this instance is a
  // standby), how often one query asks whether it still is; a takeover
  // starts within about this long of the slot's release.
  absl::Duration standby_poll_interval = absl::Milliseconds(20);
  // A slot outboxd streamed from that is gone, invalidated or replaced:
  // stop (kDataLoss), or re-create it and call `republish`.
  SlotLossPolicy on_slot_loss = SlotLossPolicy::kFail;
  absl::Duration republish_margin = absl::Hours(1);  // for the log line
  RepublishFn republish;
  // Run once, at the first connect, on the checks' connection (e.g. that a
  // republish could read the table); its failure stops outboxd.
  std::function<absl::Status(PgConnection&)> check_at_start;
};

// The --source=cdc EventSource. `metrics` (its source's) must outlive it.
std::unique_ptr<EventSource> NewCdcSource(CdcSourceOptions options,
                                          metrics::SourceMetrics& metrics);

}  // namespace outboxd

#endif  // OUTBOXD_SOURCES_CDC_SOURCE_H_
