#include "sources/poll_source.h"

#include <atomic>
#include <utility>
#include <variant>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "pg/connection.h"
#include "pg/replication_setup.h"

namespace outboxd {

PollSource::PollSource(PollSourceOptions options,
                       metrics::OutboxdMetrics& metrics)
    : options_(std::move(options)), m_(metrics) {}

PollSource::~PollSource() = default;

absl::StatusOr<ConnectResult> PollSource::Connect(const ConnectContext& ctx) {
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
  return r;
}

void PollSource::CloseBatch() {
  open_ = begun_ = committed_ = false;
  rows_.clear();
  seqs_.clear();
  next_row_ = 0;
}

void PollSource::Disconnect() {
  // Closing the connection rolls the open batch back.
  poller_.reset();
  CloseBatch();
}

absl::StatusOr<SourceRead> PollSource::Read(absl::Duration wait) {
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

absl::Status PollSource::Durable(SourcePosition durable) {
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

absl::Status PollSource::Finish(SourcePosition durable, bool clean) {
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

std::string PollSource::ReadyLine() const {
  return absl::StrCat(
      "publishing from ", options_.poller.table.ToString(), " (source ", mode(),
      ", batch size ", options_.poller.batch_size, ", cleanup ",
      options_.poller.cleanup == PollCleanup::kMark ? "mark" : "delete",
      ", interval ", absl::FormatDuration(options_.poll_interval), ")");
}

std::string PollSource::Progress() const {
  return absl::StrCat("rows completed ", rows_completed_, ", batches ",
                      batch_number_, ", notifications ", notifications_);
}

std::string PollSource::Describe(SourcePosition position) const {
  return absl::StrCat("batch ", position.value());
}

std::string PollSource::Where(const OutboxEvent& event) const {
  return absl::StrCat("row seq ", event.table_seq.value_or(0));
}

std::string PollSource::Where(const InvalidEvent& event) const {
  return absl::StrCat("row seq ", event.table_seq.value_or(0));
}

}  // namespace outboxd
