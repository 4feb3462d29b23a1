// GroupConsumer: a librdkafka consumer in a consumer group (RAII: the
// destructor leaves the group). It owns the rd_kafka_t, the subscription,
// the rebalance callbacks, poll, pause/resume and the commit of the offsets
// its owner says are processed. It knows nothing of what is done with a
// message: no SQL, no retries.
//
// Offsets: nothing is committed automatically. The owner marks a partition
// processed up to an offset (MarkProcessed) once the effect is durable;
// Poll commits what is marked asynchronously at most every
// `commit_interval`, and Close and every revocation commit it
// synchronously. Where a newly assigned partition starts is the listener's
// answer (e.g. an offset stored with the effects), else the group's
// committed offset.
//
// Threading: not thread-safe. Every call, and every RebalanceListener call
// (made inside Poll and Close), happens on the owner's thread.
#ifndef OUTBOXD_KAFKA_GROUP_CONSUMER_H_
#define OUTBOXD_KAFKA_GROUP_CONSUMER_H_

#include <compare>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

// librdkafka's handle, kept out of the users' includes.
typedef struct rd_kafka_s rd_kafka_t;
struct rd_kafka_message_s;

namespace outboxd {

struct TopicPartition {
  std::string topic;
  int32_t partition = 0;
  friend auto operator<=>(const TopicPartition&,
                          const TopicPartition&) = default;
};

// "topic[partition]", as the logs print it.
std::string TopicPartitionName(const TopicPartition& tp);

// One consumed record. Owns its bytes.
struct ConsumedMessage {
  std::string topic;
  int32_t partition = 0;
  int64_t offset = 0;
  std::optional<std::string> key;
  std::optional<std::string> value;  // nullopt: tombstone
  int64_t timestamp_ms = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // in order
};

// `m` (a rd_kafka_message_t without an error) copied into a
// ConsumedMessage: a null header value reads as "".
ConsumedMessage ToConsumedMessage(const rd_kafka_message_s* m);

struct GroupConsumerOptions {
  std::string brokers;
  std::string group_id;
  std::vector<std::string> topics;  // "^regex" allowed, as librdkafka
  std::string client_id = "outbox-consumer";
  // Static group membership (group.instance.id) when not empty: a member
  // restarted with the same id takes its partitions back at once.
  std::string instance_id;
  // How long the coordinator waits for a silent member; heartbeats go at a
  // third of it (at most librdkafka's 3 s default).
  absl::Duration session_timeout = absl::Seconds(10);
  absl::Duration commit_interval = absl::Seconds(1);
  // librdkafka properties applied after the consumer's defaults
  // (enable.auto.commit=false, auto.offset.reset=earliest, ...).
  std::vector<std::pair<std::string, std::string>> properties;
};

// Told about rebalances, inside GroupConsumer::Poll or Close.
class RebalanceListener {
 public:
  virtual ~RebalanceListener() = default;
  // `tp` is assigned to this member: the offset it starts at, or nullopt
  // for the group's committed offset. An error stops the consumer: the
  // partition starts at the committed offset and Poll returns the error.
  virtual absl::StatusOr<std::optional<int64_t>> OnAssigned(
      const TopicPartition& tp) = 0;
  // `tp` is taken away (after the processed offsets were committed).
  virtual void OnRevoked(const TopicPartition& tp) = 0;
};

class GroupConsumer {
 public:
  // Creates the consumer and subscribes. `listener` must outlive it.
  // kInvalidArgument for a bad property.
  static absl::StatusOr<std::unique_ptr<GroupConsumer>> Create(
      const GroupConsumerOptions& options, RebalanceListener* listener);
  // Closes (see Close) when not closed yet.
  ~GroupConsumer();
  GroupConsumer(const GroupConsumer&) = delete;
  GroupConsumer& operator=(const GroupConsumer&) = delete;

  // Waits at most `timeout` for a record (nullopt: none came, or an
  // informational error was logged). A failure the consumer must not go on
  // after is returned: a fatal librdkafka error, an error of the listener,
  // a session timeout the broker refuses. Also commits the processed
  // offsets when `commit_interval` has passed.
  absl::StatusOr<std::optional<ConsumedMessage>> Poll(absl::Duration timeout);

  // The effects up to `next_offset` - 1 of `tp` are durable.
  void MarkProcessed(const TopicPartition& tp, int64_t next_offset);
  // Commits the processed offsets (asynchronously or not). A failure is
  // logged at debug level only: the owner's store holds the offsets that
  // count, Kafka's are for tools (lag) and a fallback.
  void CommitProcessed(bool async);

  // Stops (or restarts) fetching `tp`; records already fetched may be
  // delivered again after a resume.
  void Pause(const TopicPartition& tp);
  void Resume(const TopicPartition& tp);

  // Commits the processed offsets, leaves the group (the listener hears of
  // the revocation) and destroys the client. Idempotent.
  void Close();
  bool closed() const { return rk_ == nullptr; }

 private:
  GroupConsumer(const GroupConsumerOptions& options,
                RebalanceListener* listener);
  // librdkafka's callbacks and the rebalance steps, in group_consumer.cc.
  struct Callbacks;
  void SetPaused(const TopicPartition& tp, bool pause);

  const GroupConsumerOptions options_;
  RebalanceListener* const listener_;
  rd_kafka_t* rk_ = nullptr;
  // The first failure seen by a callback (rebalance, error).
  absl::Status fatal_;
  // Next offsets whose effects are durable, not committed to Kafka yet.
  std::map<TopicPartition, int64_t> to_commit_;
  absl::Time next_commit_ = absl::InfinitePast();
};

}  // namespace outboxd

#endif  // OUTBOXD_KAFKA_GROUP_CONSUMER_H_
