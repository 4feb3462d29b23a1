#include "pipeline/cdc_pipeline.h"

#include <utility>

#include "pipeline/publisher.h"
#include "pipeline/republisher.h"
#include "sources/cdc_source.h"

namespace outboxd {

PublisherOptions PublisherOptionsOf(const CdcPipelineOptions& options) {
  PublisherOptions p;
  p.router = options.router;
  p.producer = options.producer;
  p.value_format = options.value_format;
  p.dlq_topic = options.dlq_topic;
  p.on_invalid = options.on_invalid;
  p.delivery = options.delivery;
  p.transactional_id = options.transactional_id;
  p.transactions = options.transactions;
  p.shutdown_timeout = options.shutdown_timeout;
  p.reconnect = options.reconnect;
  return p;
}

std::unique_ptr<EventSource> MakeCdcSource(const CdcPipelineOptions& options,
                                           metrics::OutboxdMetrics& metrics,
                                           const std::atomic<bool>& stop) {
  CdcSourceOptions o;
  o.conninfo = options.conninfo;
  o.setup = options.setup;
  o.mapper = options.mapper;
  o.status_interval = options.status_interval;
  o.on_slot_loss = options.on_slot_loss;
  o.republish_margin = options.republish_margin;
  if (options.setup.table.has_value()) {
    // The republisher routes as the Publisher does (topic, key, value
    // format, headers), with a producer of its own.
    RepublishOptions ro;
    ro.conninfo = options.conninfo;
    ro.table = *options.setup.table;
    ro.columns = options.mapper.columns;
    ro.margin = options.republish_margin;
    ro.router = options.router;
    ro.producer = options.producer;
    ro.value_format = options.value_format;
    ro.dlq_topic = options.dlq_topic;
    ro.fail_on_invalid = options.on_invalid == InvalidEventPolicy::kFail;
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
