// The policies and counters every publisher shares, whatever its source
// (--source=cdc, poll or notify): what happens to an invalid event, which
// delivery guarantee holds, and what a run counts.
#ifndef OUTBOXD_PIPELINE_PUBLISHER_OPTIONS_H_
#define OUTBOXD_PIPELINE_PUBLISHER_OPTIONS_H_

#include <cstdint>

namespace outboxd {

enum class InvalidEventPolicy {
  kDeadLetter,  // produce it to the dead-letter topic, go on
  kFail,        // stop without confirming past it
};

enum class DeliveryGuarantee {
  kAtLeastOnce,  // a restart may resend what Kafka already has
  kExactlyOnce,  // Kafka transactions with a checkpoint of this source's
                 // position; resent events at or below it are skipped
                 // (README "Reliability")
};

struct PipelineStats {
  uint64_t events_produced = 0;
  uint64_t events_acknowledged = 0;
  uint64_t events_dead_lettered = 0;
  // --delivery=exactly-once: resent events found at or below the checkpoint.
  uint64_t events_skipped = 0;
  uint64_t transactions_committed = 0;
  // The newest position confirmed to the source (CDC: an LSN's value;
  // poll/notify: a batch number).
  uint64_t confirmed = 0;
  // The loop's sleeps (poll() calls), and those that ended by their
  // timeout rather than by an event (a source, sink or stop descriptor).
  uint64_t waits = 0;
  uint64_t wait_timeouts = 0;
};

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_PUBLISHER_OPTIONS_H_
