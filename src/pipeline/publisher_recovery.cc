#include "pipeline/publisher_recovery.h"

#include <string>
#include <utility>

#include "absl/time/time.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace outboxd {

absl::Status PublisherRecovery::Rewound(absl::Status s) {
  if (s.ok() || !delivery_.TakeRewind()) return s;
  spdlog::warn("{}", std::string(s.message()));
  RewindAll();
  return absl::OkStatus();
}

absl::StatusOr<bool> PublisherRecovery::Commit() {
  absl::Status s = delivery_.Commit(absl::InfiniteFuture());
  const bool failed = !s.ok();
  RETURN_IF_ERROR(Rewound(std::move(s)));
  return failed;  // and yet OK: rewound
}

bool PublisherRecovery::Reconnectable(const SourceSession& st,
                                      const absl::Status& s) const {
  if (!st.Reconnectable(s) || delivery_.failed()) return false;
  return sink_ == nullptr || sink_->fatal_error().ok();
}

absl::Status PublisherRecovery::Reconnect(SourceSession& st,
                                          const absl::Status& cause) {
  spdlog::warn("{}{}; reconnecting", st.log_prefix(),
               std::string(cause.message()));
  st.Disconnect();
  ASSIGN_OR_RETURN(const bool rewound, Commit());
  // A rewind started every session over, this one too: one reconnect.
  if (!rewound) st.StartOver();
  return absl::OkStatus();
}

absl::Status PublisherRecovery::IsolateOrStop(SourceSession& st,
                                              absl::Status cause) {
  if (sessions_.size() < 2 || !delivery_.IsolatesSources() || stop_->load() ||
      sink_ == nullptr || !sink_->fatal_error().ok()) {
    return cause;
  }
  bool others = false;
  for (const auto& other : sessions_) {
    if (other.get() != &st && !other->failed()) others = true;
  }
  if (!others) return cause;  // every source failed
  st.Isolate(cause);
  return absl::OkStatus();
}

bool PublisherRecovery::FailedSinkReplaceable() const {
  return sink_ != nullptr && !sink_->fatal_error().ok() &&
         delivery_.ReplacesFailedSink();
}

absl::Status PublisherRecovery::ReplaceFailedSink() {
  if (!FailedSinkReplaceable()) return absl::OkStatus();
  absl::Status fatal = sink_->fatal_error();
  if (++sink_replacements_ > kMaxSinkReplacements) return fatal;
  spdlog::error(
      "the Kafka producer failed for good ({}); replacing it (attempt {} "
      "of {}): every source resends from its confirmed position",
      std::string(fatal.message()), sink_replacements_, kMaxSinkReplacements);
  RewindAll();
  return new_sink_();
}

void PublisherRecovery::RewindAll() {
  for (const std::unique_ptr<SourceSession>& st : sessions_) st->Rewind();
}

}  // namespace outboxd
