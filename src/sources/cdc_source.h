// CdcSource: --source=cdc, events from a logical replication slot
// (sources/event_source.h).
//
//   ReplicationStream -> pgoutput::Decode -> OutboxMapper -> items
//
// Connect sets up the publication and the slot, judges whether the slot is
// still the one outboxd streamed from (sources/slot_loss.h) and recovers a
// lost one by policy, then starts streaming from the durable position. A
// transaction is a PostgreSQL transaction; its position the commit's end
// LSN; keepalives and transactions without events are idle positions.
// Durable() records the durable position in the publisher state
// (pg/publisher_state.h) and sends standby status updates on the timer
// (never past the record); the walsender buffers while the Publisher does
// not read.
//
// Threading: the Publisher's thread only.
#ifndef OUTBOXD_SOURCES_CDC_SOURCE_H_
#define OUTBOXD_SOURCES_CDC_SOURCE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/time/time.h"
#include "metrics/outboxd_metrics.h"
#include "outbox/outbox_mapper.h"
#include "pg/connection.h"
#include "pg/publisher_state.h"
#include "pg/replication_setup.h"
#include "pg/replication_stream.h"
#include "sources/event_source.h"
#include "sources/slot_loss.h"

namespace outboxd {

// What a republish after a lost slot did.
struct RepublishCount {
  uint64_t republished = 0;
  uint64_t dead_lettered = 0;
};
// Publishes again, from the outbox table, every row that may have committed
// after `from` (pipeline/republisher.h), tagged with `source`; returns once
// Kafka acknowledged them.
using RepublishFn = std::function<absl::StatusOr<RepublishCount>(
    const PublisherState& from, Lsn new_slot_start, const std::string& source)>;

struct CdcSourceOptions {
  std::string conninfo;
  ReplicationSetupOptions setup;
  OutboxMapperOptions mapper;
  absl::Duration status_interval = absl::Seconds(1);
  // A slot outboxd streamed from that is gone, invalidated or replaced:
  // stop (kDataLoss), or re-create it and call `republish`.
  SlotLossPolicy on_slot_loss = SlotLossPolicy::kFail;
  absl::Duration republish_margin = absl::Hours(1);  // for the log line
  RepublishFn republish;
};

class CdcSource : public EventSource {
 public:
  // `metrics` must outlive the source.
  CdcSource(CdcSourceOptions options, metrics::OutboxdMetrics& metrics);
  ~CdcSource() override;

  absl::StatusOr<ConnectResult> Connect(const ConnectContext& ctx) override;
  void Disconnect() override;
  absl::StatusOr<SourceRead> Read(absl::Duration wait) override;
  absl::Status Durable(SourcePosition durable) override;
  absl::Status Finish(SourcePosition durable, bool clean) override;
  bool in_transaction() const override { return mapper_.in_transaction(); }
  const std::string& identity() const override { return identity_; }
  std::string ReadyLine() const override;
  std::string Progress() const override;
  std::string Describe(SourcePosition position) const override;
  std::string Where(const OutboxEvent& event) const override;
  std::string Where(const InvalidEvent& event) const override;
  absl::Status CheckCheckpoint(const EventPosition& checkpoint) override;

 private:
  absl::StatusOr<Lsn> RecoverLostSlot(PgConnection& conn,
                                      const std::optional<SlotInfo>& slot,
                                      const PublisherState& recorded,
                                      const SlotVerdict& verdict,
                                      const ConnectContext& ctx);
  absl::Status SendStatusIfDue(bool force);
  absl::Status RecordProgress(absl::Time now, bool reply_requested);

  const CdcSourceOptions options_;
  metrics::OutboxdMetrics& m_;
  OutboxMapper mapper_;
  std::string identity_;  // outbox.source: "<system id>/<dbname>/<slot>"
  std::unique_ptr<ReplicationStream> stream_;
  // outboxd's record of its position; opened by the first Connect.
  std::unique_ptr<PublisherStateStore> state_;
  // (end LSN, commit time) of decoded transactions not yet recorded.
  std::deque<std::pair<Lsn, int64_t>> commit_times_;
  int64_t commit_time_ = 0;  // of the transaction being decoded, unix us
  absl::Time next_record_ = absl::InfinitePast();
  absl::Time next_idle_record_ = absl::InfinitePast();
  absl::Time next_status_ = absl::InfinitePast();
  // START_REPLICATION failed because the slot is invalidated.
  bool start_said_invalidated_ = false;
  bool finishing_ = false;
  bool reply_requested_ = false;  // a keepalive asked for a status update
  Lsn durable_;   // the last durable position the Publisher gave
  Lsn received_;  // newest server position seen
  Lsn reported_;  // last flush position reported
};

}  // namespace outboxd

#endif  // OUTBOXD_SOURCES_CDC_SOURCE_H_
