#include "pipeline/cdc_pipeline.h"

#include <utility>

#include "flags/flags.h"
#include "pipeline/republisher.h"

namespace outboxd {

std::unique_ptr<EventSource> MakeCdcSource(const CdcPipelineOptions& options,
                                           metrics::SourceMetrics& metrics,
                                           const std::atomic<bool>& stop,
                                           SinkFactory sink_factory) {
  CdcSourceOptions o = options.source;
  if (!o.setup.tables.empty()) {
    // The republisher builds its records as the Publisher does (the same
    // RecordBuilder options), with a sink of its own.
    const PublisherOptions& p = options.publisher;
    RepublishOptions ro;
    ro.conninfo = o.conninfo;
    ro.tables = o.setup.tables;
    ro.columns = o.mapper.columns;
    ro.margin = o.republish_margin;
    ro.records = p.records;
    ro.producer = p.producer;
    ro.fail_on_invalid = p.on_invalid == InvalidEventPolicy::kFail;
    ro.acknowledged = options.acknowledged;
    if (o.on_slot_loss == SlotLossPolicy::kRepublish) {
      // A table a republish cannot read is a bad command line, told at
      // start rather than when the slot is lost.
      o.check_at_start = [ro](PgConnection& conn) {
        absl::Status s = CheckRepublishable(conn, ro);
        if (absl::IsFailedPrecondition(s)) return flags::WithExitCode(s, 2);
        return s;
      };
    }
    o.republish =
        [ro, &stop, sink_factory = std::move(sink_factory)](
            const PublisherState& from, Lsn start,
            const std::string& source) -> absl::StatusOr<RepublishCount> {
      absl::StatusOr<RepublishResult> r =
          RepublishLostEvents(ro, sink_factory, source, from, start, stop);
      if (!r.ok()) return r.status();
      return RepublishCount{r->republished, r->dead_lettered};
    };
  }
  return NewCdcSource(std::move(o), metrics);
}

}  // namespace outboxd
