#include "pipeline/cdc_pipeline.h"

#include <utility>

#include "pipeline/republisher.h"

namespace outboxd {

std::unique_ptr<EventSource> MakeCdcSource(const CdcPipelineOptions& options,
                                           metrics::OutboxdMetrics& metrics,
                                           const std::atomic<bool>& stop) {
  CdcSourceOptions o = options.source;
  if (!o.setup.tables.empty()) {
    // The republisher routes as the Publisher does (topic, key, value
    // format, headers), with a producer of its own.
    const PublisherOptions& p = options.publisher;
    RepublishOptions ro;
    ro.conninfo = o.conninfo;
    ro.tables = o.setup.tables;
    ro.columns = o.mapper.columns;
    ro.margin = o.republish_margin;
    ro.router = p.router;
    ro.producer = p.producer;
    ro.value_format = p.value_format;
    ro.dlq_topic = p.dlq_topic;
    ro.fail_on_invalid = p.on_invalid == InvalidEventPolicy::kFail;
    o.republish = [ro, &stop](const PublisherState& from, Lsn start,
                              const std::string& source) mutable
        -> absl::StatusOr<RepublishCount> {
      ro.router.source = source;
      absl::StatusOr<RepublishResult> r =
          RepublishLostEvents(ro, from, start, stop);
      if (!r.ok()) return r.status();
      return RepublishCount{r->republished, r->dead_lettered};
    };
  }
  return NewCdcSource(std::move(o), metrics);
}

}  // namespace outboxd
