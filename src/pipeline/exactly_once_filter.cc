#include "pipeline/exactly_once_filter.h"

#include "common/status_macros.h"
#include "spdlog/spdlog.h"

namespace outboxd {

absl::StatusOr<ExactlyOnceFilter::Decision> ExactlyOnceFilter::Admit(
    const std::string& topic, absl::string_view key,
    const EventPosition& position, int32_t fixed_partition) {
  Decision d;
  if (fixed_partition >= 0) {
    d.partition = fixed_partition;
  } else {
    auto count_it = partition_counts_.find(topic);
    if (count_it == partition_counts_.end()) {
      ASSIGN_OR_RETURN(int32_t count, source_->PartitionCount(topic));
      count_it = partition_counts_.emplace(topic, count).first;
    }
    d.partition = Murmur2Partition(key, count_it->second);
  }
  auto wm_key = std::make_pair(topic, d.partition);
  auto wm_it = watermarks_.find(wm_key);
  if (wm_it == watermarks_.end()) {
    ASSIGN_OR_RETURN(std::optional<EventPosition> last,
                     source_->LastPosition(topic, d.partition));
    if (last.has_value()) {
      spdlog::info("exactly-once: {}[{}] ends at {}#{}", topic, d.partition,
                   last->commit_lsn.ToString(), last->index);
    } else {
      spdlog::info("exactly-once: {}[{}] is empty", topic, d.partition);
    }
    wm_it = watermarks_.emplace(std::move(wm_key), last).first;
  }
  if (wm_it->second.has_value() && position <= *wm_it->second) {
    d.produce = false;
    ++skipped_;
    spdlog::debug("exactly-once: {}#{} is already in {}[{}]",
                  position.commit_lsn.ToString(), position.index, topic,
                  d.partition);
  }
  return d;
}

void ExactlyOnceFilter::Produced(const std::string& topic, int32_t partition,
                                 const EventPosition& position) {
  std::optional<EventPosition>& wm = watermarks_[{topic, partition}];
  if (!wm.has_value() || *wm < position) wm = position;
}

}  // namespace outboxd
