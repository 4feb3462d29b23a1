// TopicCatalog: decides, before a record is produced, whether its topic can
// take it. A real broker refuses illegal names and, with
// auto.create.topics.enable=false, topics that do not exist; a record sent
// there anyway fails only after librdkafka's retries, as a delivery error
// that stops the pipeline, and the restart resends it and stops again while
// the slot pins WAL. Checking first turns both into an answer the pipeline
// can act on (dead-letter the event by --on-invalid), and keeps a failed
// record out of a Kafka transaction.
//
// Answers are cached per topic: a topic found stays found (librdkafka
// handles it from then on). A topic is missing only when two lookups at
// least `confirm_missing_after` apart both say so (a topic created a moment
// ago may not have reached every broker's metadata yet); meanwhile the
// answer is kUnavailable. A missing topic is looked up again after
// `recheck_missing`, so a topic created later starts working. A lookup that
// fails (broker down, timeout) is no answer: kUnavailable, retried after
// `retry_after_failure`, never a reason to dead-letter.
//
// Threading: not thread-safe; the pipeline thread owns it.
#ifndef OUTBOXD_KAFKA_TOPIC_CATALOG_H_
#define OUTBOXD_KAFKA_TOPIC_CATALOG_H_

#include <functional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace outboxd {

// What the broker's metadata says about one topic.
enum class TopicState {
  kExists,   // or is being created (auto-creation): produce to it
  kMissing,  // UNKNOWN_TOPIC_OR_PARTITION: does not exist, not created
  kIllegal,  // the broker refuses the name (INVALID_TOPIC_EXCEPTION)
};

struct TopicCatalogOptions {
  absl::Duration recheck_missing = absl::Seconds(30);
  absl::Duration confirm_missing_after = absl::Seconds(1);
  absl::Duration retry_after_failure = absl::Seconds(1);
};

class TopicCatalog {
 public:
  // Asks the broker about one topic; an error status when it cannot tell.
  using Lookup = std::function<absl::StatusOr<TopicState>(const std::string&)>;
  using Clock = std::function<absl::Time()>;

  explicit TopicCatalog(Lookup lookup, TopicCatalogOptions options = {},
                        Clock now = &absl::Now)
      : lookup_(std::move(lookup)), options_(options), now_(std::move(now)) {}

  // OK: produce to `topic`. kInvalidArgument: an illegal name (never sent to
  // the broker). kNotFound: the topic does not exist. kUnavailable: cannot
  // tell now; try again later (backpressure, not a bad event).
  absl::Status Check(const std::string& topic);

  // Lookups sent to the broker so far (tests).
  int lookups() const { return lookups_; }

 private:
  struct Entry {
    absl::Status answer;  // OK, kInvalidArgument or kNotFound
    absl::Time valid_until = absl::InfiniteFuture();
  };
  Lookup lookup_;
  TopicCatalogOptions options_;
  Clock now_;
  absl::flat_hash_map<std::string, Entry> entries_;
  // Topics one lookup found missing, and when: not yet confirmed.
  absl::flat_hash_map<std::string, absl::Time> missing_since_;
  absl::Time no_lookup_until_ = absl::InfinitePast();
  absl::Status last_failure_;
  int lookups_ = 0;
};

}  // namespace outboxd

#endif  // OUTBOXD_KAFKA_TOPIC_CATALOG_H_
