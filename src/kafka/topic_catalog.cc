#include "kafka/topic_catalog.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "outbox/router.h"

namespace outboxd {

absl::Status TopicCatalog::Check(const std::string& topic) {
  const absl::Time now = now_();
  auto it = entries_.find(topic);
  if (it != entries_.end() && now < it->second.valid_until) {
    return it->second.answer;
  }
  if (absl::Status name = CheckTopicName(topic); !name.ok()) {
    entries_[topic] = Entry{name, absl::InfiniteFuture()};
    return name;
  }
  // After a failed lookup the broker gets a rest; the caller retries.
  if (now < no_lookup_until_) return last_failure_;
  ++lookups_;
  absl::StatusOr<TopicState> state = lookup_(topic);
  if (!state.ok()) {
    last_failure_ =
        absl::UnavailableError(absl::StrCat("cannot look up topic ", topic,
                                            " in the broker's "
                                            "metadata: ",
                                            state.status().message()));
    no_lookup_until_ = now + options_.retry_after_failure;
    return last_failure_;
  }
  if (*state == TopicState::kMissing) {
    auto [since, first] = missing_since_.try_emplace(topic, now);
    if (now - since->second < options_.confirm_missing_after) {
      no_lookup_until_ = since->second + options_.confirm_missing_after;
      last_failure_ = absl::UnavailableError(
          absl::StrCat("topic ", topic,
                       " is not in the broker's metadata; looking again "
                       "before treating it as missing"));
      return last_failure_;
    }
  }
  missing_since_.erase(topic);
  Entry entry;
  switch (*state) {
    case TopicState::kExists:
      entry.answer = absl::OkStatus();
      break;
    case TopicState::kMissing:
      entry.answer = absl::NotFoundError(absl::StrCat(
          "topic ", topic,
          " does not exist and the broker does not create it "
          "(auto.create.topics.enable=false or allow.auto.create.topics="
          "false)"));
      entry.valid_until = now + options_.recheck_missing;
      break;
    case TopicState::kIllegal:
      entry.answer = absl::InvalidArgumentError(
          absl::StrCat("the broker refuses the topic name ", topic));
      break;
  }
  entries_[topic] = entry;
  return entry.answer;
}

}  // namespace outboxd
