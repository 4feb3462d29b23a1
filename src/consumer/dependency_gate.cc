#include "consumer/dependency_gate.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"

namespace outboxd {

DependencyGate::DependencyGate(const Options& options, Host* host,
                               InboxStats* stats)
    : options_(options), host_(host), stats_(stats) {}

void DependencyGate::Assign(const TopicPartition& tp,
                            std::optional<int64_t> next_offset) {
  PartitionState& st = partitions_[tp];
  st = PartitionState{};
  if (next_offset.has_value() && *next_offset >= 0) {
    st.next_expected = *next_offset;
  }
}

void DependencyGate::Revoke(const TopicPartition& tp) {
  auto it = partitions_.find(tp);
  if (it == partitions_.end()) return;
  if (!it->second.queue.empty()) {
    spdlog::info(
        "{} revoked with {} deferred records; its next owner resumes from "
        "the stored offset",
        TopicPartitionName(tp), it->second.queue.size());
  }
  partitions_.erase(it);
}

size_t DependencyGate::waiting() const {
  size_t n = 0;
  for (const auto& [tp, st] : partitions_) n += st.queue.size();
  return n;
}

absl::StatusOr<bool> DependencyGate::Ready(const InboxRecord& record) {
  if (record.depends_on.empty()) return true;
  return host_->DependenciesApplied(record.depends_on);
}

absl::Status DependencyGate::Offer(InboxRecord record, absl::Time now) {
  TopicPartition tp{record.topic, record.partition};
  auto it = partitions_.find(tp);
  if (it == partitions_.end()) return absl::OkStatus();  // not ours now
  PartitionState& st = it->second;
  if (st.next_expected >= 0 && record.offset < st.next_expected) {
    return absl::OkStatus();  // already taken (redelivered after resume)
  }
  const int64_t next = record.offset + 1;
  if (!st.queue.empty()) {
    // Order within the partition: behind the record that waits.
    st.next_expected = next;
    st.queue.push_back(Deferred{std::move(record), std::nullopt});
    if (!st.paused && st.queue.size() >= options_.max_deferred_per_partition) {
      host_->Pause(tp);
      st.paused = true;
    }
    return absl::OkStatus();
  }
  // Taken (next_expected moves) only once applied or queued: after an
  // error the same record may be offered again.
  ASSIGN_OR_RETURN(bool ready, Ready(record));
  if (ready) {
    RETURN_IF_ERROR(host_->Apply(record));
    st.next_expected = next;
    return absl::OkStatus();
  }
  st.next_expected = next;
  ++stats_->deferred;
  spdlog::info("event {} ({}@{}) waits for {}", record.event_id,
               TopicPartitionName(tp), record.offset,
               absl::StrJoin(record.depends_on, ","));
  st.queue.push_back(Deferred{std::move(record), now});
  return absl::OkStatus();
}

absl::Status DependencyGate::GiveUpWaiting(const InboxRecord& record) {
  std::string why = absl::StrCat("dependencies not applied within ",
                                 absl::FormatDuration(options_.dependency_wait),
                                 ": ", absl::StrJoin(record.depends_on, ","));
  if (options_.on_missing_dependency == MissingDependencyPolicy::kProceed) {
    spdlog::warn("event {}: {}; applying it anyway", record.event_id, why);
    ++stats_->applied_without_dependencies;
    return host_->Apply(record);
  }
  return host_->DeadLetter(record, why);
}

absl::Status DependencyGate::ServeWaiting(absl::Time now,
                                          const std::atomic<bool>& stop) {
  if (!progress_ && now < next_check_) return absl::OkStatus();
  progress_ = false;
  next_check_ = now + options_.recheck_interval;
  for (auto& [tp, st] : partitions_) {
    while (!st.queue.empty() && !stop.load(std::memory_order_relaxed)) {
      Deferred& head = st.queue.front();
      ASSIGN_OR_RETURN(bool ready, Ready(head.record));
      if (ready) {
        RETURN_IF_ERROR(host_->Apply(head.record));
      } else {
        if (!head.waiting_since.has_value()) {
          head.waiting_since = now;
          ++stats_->deferred;
        }
        if (now - *head.waiting_since < options_.dependency_wait) break;
        RETURN_IF_ERROR(GiveUpWaiting(head.record));
      }
      st.queue.pop_front();
    }
    if (st.paused &&
        st.queue.size() < options_.max_deferred_per_partition / 2 + 1) {
      host_->Resume(tp);
      st.paused = false;
    }
  }
  return absl::OkStatus();
}

}  // namespace outboxd
