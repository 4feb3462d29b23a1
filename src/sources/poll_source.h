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

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

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

class PollSource : public EventSource {
 public:
  // `metrics` must outlive the source.
  PollSource(PollSourceOptions options, metrics::OutboxdMetrics& metrics);
  ~PollSource() override;

  absl::StatusOr<ConnectResult> Connect(const ConnectContext& ctx) override;
  void Disconnect() override;
  absl::StatusOr<SourceRead> Read(absl::Duration wait) override;
  absl::Status Durable(SourcePosition durable) override;
  absl::Status Finish(SourcePosition durable, bool clean) override;
  bool in_transaction() const override { return open_ && !committed_; }
  const std::string& identity() const override { return identity_; }
  std::string ReadyLine() const override;
  std::string Progress() const override;
  std::string Describe(SourcePosition position) const override;
  std::string Where(const OutboxEvent& event) const override;
  std::string Where(const InvalidEvent& event) const override;

 private:
  const char* mode() const {
    return options_.poller.notify_channel.empty() ? "poll" : "notify";
  }
  void CloseBatch();

  const PollSourceOptions options_;
  metrics::OutboxdMetrics& m_;
  std::unique_ptr<OutboxPoller> poller_;
  std::string identity_;
  // The open batch: rows handed over so far, and whether its Begin and
  // Commit were.
  bool open_ = false;
  bool begun_ = false;
  bool committed_ = false;
  bool full_ = false;
  std::vector<PolledRow> rows_;
  size_t next_row_ = 0;
  std::vector<int64_t> seqs_;
  uint64_t batch_number_ = 0;
  absl::Time next_poll_ = absl::InfinitePast();
  uint64_t notifications_ = 0;
  uint64_t rows_completed_ = 0;  // marked or deleted
};

}  // namespace outboxd

#endif  // OUTBOXD_SOURCES_POLL_SOURCE_H_
