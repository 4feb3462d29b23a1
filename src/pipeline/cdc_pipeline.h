// CdcPipeline: the options of --source=cdc and the wiring of a CdcSource
// (sources/cdc_source.h) into the Publisher (pipeline/publisher.h).
#ifndef OUTBOXD_PIPELINE_CDC_PIPELINE_H_
#define OUTBOXD_PIPELINE_CDC_PIPELINE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "kafka/producer.h"
#include "metrics/outboxd_metrics.h"
#include "outbox/outbox_mapper.h"
#include "outbox/router.h"
#include "outbox/value_format.h"
#include "pg/replication_setup.h"
#include "pipeline/publisher.h"
#include "pipeline/publisher_options.h"
#include "pipeline/reconnect_backoff.h"
#include "pipeline/transaction_batch.h"
#include "sources/slot_loss.h"

namespace outboxd {

struct CdcPipelineOptions {
  std::string conninfo;
  ReplicationSetupOptions setup;
  OutboxMapperOptions mapper;
  RouterOptions router;
  ProducerOptions producer;
  absl::Duration status_interval = absl::Seconds(1);
  std::string dlq_topic = "outbox.dlq";
  InvalidEventPolicy on_invalid = InvalidEventPolicy::kDeadLetter;
  // The record value of each event (--value-format).
  ValueFormat value_format = ValueFormat::kPayload;
  // Updated from the pipeline thread when not null; must outlive the run.
  metrics::OutboxdMetrics* metrics = nullptr;
  // How long a stop may wait for outstanding acknowledgements.
  absl::Duration shutdown_timeout = absl::Seconds(8);
  // Lost replication connections (kUnavailable) are retried with backoff.
  ReconnectOptions reconnect;
  DeliveryGuarantee delivery = DeliveryGuarantee::kAtLeastOnce;
  // --delivery=exactly-once: the transactional id (and checkpoint group);
  // empty: "outboxd-" + the source identity (system id, database, slot).
  std::string transactional_id;
  // --delivery=exactly-once: when a Kafka transaction is committed.
  TransactionBatchOptions transactions;
  // A slot outboxd streamed from that is gone, invalidated or replaced
  // (sources/slot_loss.h): stop (kDataLoss), or re-create it and
  // republish from the outbox table (pipeline/republisher.h) with this
  // margin on the recorded commit time.
  SlotLossPolicy on_slot_loss = SlotLossPolicy::kFail;
  absl::Duration republish_margin = absl::Hours(1);
};

// The Publisher's share of `options`.
PublisherOptions PublisherOptionsOf(const CdcPipelineOptions& options);

// The CDC source of `options`; `metrics` and `stop` must outlive it.
std::unique_ptr<EventSource> MakeCdcSource(const CdcPipelineOptions& options,
                                           metrics::OutboxdMetrics& metrics,
                                           const std::atomic<bool>& stop);

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_CDC_PIPELINE_H_
