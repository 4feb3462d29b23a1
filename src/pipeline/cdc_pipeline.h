// CdcPipeline: the options of --source=cdc and the wiring of a CdcSource
// (sources/cdc_source.h) into the Publisher (pipeline/publisher.h).
#ifndef OUTBOXD_PIPELINE_CDC_PIPELINE_H_
#define OUTBOXD_PIPELINE_CDC_PIPELINE_H_

#include <atomic>
#include <memory>

#include "metrics/outboxd_metrics.h"
#include "pipeline/acknowledged_ids.h"
#include "pipeline/publisher.h"
#include "sources/cdc_source.h"
#include "sources/event_source.h"

namespace outboxd {

// One CDC stream's options: the Publisher's and its source's.
struct CdcPipelineOptions {
  PublisherOptions publisher;
  // Its `republish` is left empty: MakeCdcSource sets it.
  CdcSourceOptions source;
  // The stream's acknowledged ids (the reconciler's), which republished
  // rows join; nullptr: none.
  AcknowledgedIds* acknowledged = nullptr;
};

// The CDC source of `options`: options.source, and with a table the
// republisher of --on-slot-loss=republish, which builds its records as
// options.publisher says, on a sink of `sink_factory`. `metrics` and `stop`
// must outlive it.
std::unique_ptr<EventSource> MakeCdcSource(
    const CdcPipelineOptions& options, metrics::SourceMetrics& metrics,
    const std::atomic<bool>& stop,
    SinkFactory sink_factory = KafkaSinkFactory());

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_CDC_PIPELINE_H_
