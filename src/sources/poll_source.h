// PollSource: --source=poll and --source=notify, events from the outbox
// table by query (sources/event_source.h).
//
// A transaction is one OutboxPoller batch (one PostgreSQL transaction, its
// rows locked FOR UPDATE SKIP LOCKED); its position is the batch's number
// (1, 2, ...: not an LSN). The batch's rows are handed over in seq order,
// then the source waits (AwaitDurable) until the Publisher says the batch
// is durable: only then are its rows marked or deleted and the transaction
// committed, and only then is the next batch fetched. A batch that is not
// durable when the connection is lost or the run ends is rolled back: its
// rows stay unpublished and are taken again (at-least-once).
//
// outbox.source of a polled event: "<system id>/<dbname>/<schema.table>".
//
// Threading: the Publisher's thread only.
#ifndef OUTBOXD_SOURCES_POLL_SOURCE_H_
#define OUTBOXD_SOURCES_POLL_SOURCE_H_

#include <memory>

#include "absl/time/time.h"
#include "metrics/outboxd_metrics.h"
#include "sources/event_source.h"
#include "sources/outbox_poller.h"

namespace outboxd {

struct PollSourceOptions {
  OutboxPollerOptions poller;  // notify_channel set: --source=notify
  // Time between polls when the last batch was not full; in notify mode the
  // safety net for lost notifications.
  absl::Duration poll_interval = absl::Seconds(1);
};

// The --source=poll / notify EventSource. `metrics` must outlive it.
std::unique_ptr<EventSource> NewPollSource(PollSourceOptions options,
                                           metrics::OutboxdMetrics& metrics);

}  // namespace outboxd

#endif  // OUTBOXD_SOURCES_POLL_SOURCE_H_
