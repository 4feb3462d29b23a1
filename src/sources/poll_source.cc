#include "sources/poll_source.h"

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "pg/connection.h"
#include "pg/replication_setup.h"

namespace outboxd {
namespace {

class PollSource final : public EventSource {
 public:
  PollSource(PollSourceOptions options, metrics::OutboxdMetrics& metrics)
      : options_(std::move(options)), m_(metrics) {}

  absl::StatusOr<ConnectResult> Connect(const ConnectContext& ctx) override {
    ASSIGN_OR_RETURN(poller_, OutboxPoller::Connect(options_.poller));
    if (identity_.empty()) {
      // The database's identity, as the CDC source's, with the table in
      // place of the slot: stable across restarts and reconnects.
      ASSIGN_OR_RETURN(auto conn,
                       PgConnection::Connect(options_.poller.conninfo,
                                             PgConnection::Mode::kNormal));
      ASSIGN_OR_RETURN(std::string source,
                       SourceIdentity(*conn, options_.poller.table.ToString()));
      identity_ = std::move(source);
    }
    CloseBatch();
    next_poll_ = absl::InfinitePast();
    ConnectResult r;
    // Batch numbers go on across reconnects: a batch of the lost connection
    // can never be taken for a later one.
    if (ctx.first) r.restart_at = SourcePosition(batch_number_);
    r.identity = identity_;
    r.ready_line = absl::StrCat(
        "publishing from ", options_.poller.table.ToString(), " (source ",
        mode(), ", batch size ", options_.poller.batch_size, ", cleanup ",
        options_.poller.cleanup == PollCleanup::kMark ? "mark" : "delete",
        ", interval ", absl::FormatDuration(options_.poll_interval), ")");
    return r;
  }

  void Disconnect() override {
    // Closing the connection rolls the open batch back.
    poller_.reset();
    CloseBatch();
  }

  absl::StatusOr<SourceRead> Read(absl::Duration wait) override {
    SourceRead out;
    if (open_) {
      if (!begun_) {
        begun_ = true;
        out.item = SourceBegin{};
      } else if (next_row_ < rows_.size()) {
        PolledRow& row = rows_[next_row_++];
        if (auto* event = std::get_if<OutboxEvent>(&row.event)) {
          out.item = std::move(*event);
        } else {
          out.item = std::move(std::get<InvalidEvent>(row.event));
        }
      } else if (!committed_) {
        committed_ = true;
        out.item = SourceCommit{SourcePosition(batch_number_)};
      } else {
        out.item = AwaitDurable{};
      }
      return out;
    }
    const absl::Time now = absl::Now();
    if (now < next_poll_) {
      static const std::atomic<bool> kNoStop{false};
      ASSIGN_OR_RETURN(
          bool notified,
          poller_->WaitForWork(std::min(now + wait, next_poll_), kNoStop));
      if (notified) {
        ++notifications_;
      } else if (absl::Now() < next_poll_) {
        return out;
      }
    }
    ASSIGN_OR_RETURN(PolledBatch batch, poller_->FetchBatch());
    m_.QueriedBy(mode()).Increment();
    if (batch.rows.empty()) {
      // Nothing, or everything held back behind an older row still locked.
      RETURN_IF_ERROR(poller_->AbortBatch());
      next_poll_ = absl::Now() + options_.poll_interval;
      return out;
    }
    ++batch_number_;
    spdlog::debug("batch {}: {} rows in flight ({} held back)", batch_number_,
                  batch.rows.size(), batch.held_back);
    open_ = true;
    full_ = batch.full;
    rows_ = std::move(batch.rows);
    seqs_.reserve(rows_.size());
    for (const PolledRow& row : rows_) seqs_.push_back(row.seq);
    begun_ = true;
    out.item = SourceBegin{};
    return out;
  }

  absl::Status Durable(SourcePosition durable) override {
    if (!open_ || !committed_ || durable < SourcePosition(batch_number_)) {
      return absl::OkStatus();
    }
    RETURN_IF_ERROR(poller_->CompleteBatch(seqs_));
    rows_completed_ += seqs_.size();
    // A full batch: more is waiting, no sleep.
    next_poll_ =
        full_ ? absl::InfinitePast() : absl::Now() + options_.poll_interval;
    CloseBatch();
    return absl::OkStatus();
  }

  absl::Status Finish(SourcePosition durable, bool clean) override {
    if (poller_ == nullptr) return absl::OkStatus();
    absl::Status s;
    if (open_ && committed_ && durable >= SourcePosition(batch_number_)) {
      s = Durable(durable);
    } else if (open_) {
      if (clean) {
        spdlog::warn(
            "batch of {} rows not acknowledged at stop: rolled back, the rows "
            "stay unpublished and will be published again",
            seqs_.size());
      }
      s = poller_->AbortBatch();
      CloseBatch();
    }
    poller_.reset();
    return s;
  }

  std::string Progress() const override {
    return absl::StrCat("rows completed ", rows_completed_, ", batches ",
                        batch_number_, ", notifications ", notifications_);
  }

  std::string Describe(SourcePosition position) const override {
    return absl::StrCat("batch ", position.value());
  }

 private:
  const char* mode() const {
    return options_.poller.notify_channel.empty() ? "poll" : "notify";
  }

  void CloseBatch() {
    open_ = begun_ = committed_ = false;
    rows_.clear();
    seqs_.clear();
    next_row_ = 0;
  }

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

}  // namespace

std::unique_ptr<EventSource> NewPollSource(PollSourceOptions options,
                                           metrics::OutboxdMetrics& metrics) {
  return std::make_unique<PollSource>(std::move(options), metrics);
}

}  // namespace outboxd
