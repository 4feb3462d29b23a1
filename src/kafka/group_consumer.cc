#include "kafka/group_consumer.h"

#include <librdkafka/rdkafka.h>

#include <algorithm>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "kafka/kafka_status.h"
#include "kafka/rdkafka_callbacks.h"
#include "kafka/rdkafka_conf.h"
#include "spdlog/spdlog.h"

namespace outboxd {
namespace {

// The consumer's defaults, applied before the user's properties.
constexpr std::pair<const char*, const char*> kConsumerDefaults[] = {
    // Offsets are committed by the owner, after its effects are durable.
    {"enable.auto.commit", "false"},
    {"enable.auto.offset.store", "false"},
    // A new group starts from the beginning: no record is skipped.
    {"auto.offset.reset", "earliest"},
    {"enable.partition.eof", "false"},
};

using ListPtr = PartitionListPtr;
using ConfDeleter = RdKafkaConfDeleter;

}  // namespace

ConsumedMessage ToConsumedMessage(const rd_kafka_message_t* m) {
  ConsumedMessage r;
  r.topic = rd_kafka_topic_name(m->rkt);
  r.partition = m->partition;
  r.offset = m->offset;
  if (m->key != nullptr) {
    r.key.emplace(static_cast<const char*>(m->key), m->key_len);
  }
  if (m->payload != nullptr) {
    r.value.emplace(static_cast<const char*>(m->payload), m->len);
  }
  rd_kafka_timestamp_type_t ts_type;
  r.timestamp_ms = rd_kafka_message_timestamp(m, &ts_type);
  rd_kafka_headers_t* headers = nullptr;
  if (rd_kafka_message_headers(m, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR) {
    const char* name;
    const void* value;
    size_t size;
    for (size_t i = 0;
         rd_kafka_header_get_all(headers, i, &name, &value, &size) ==
         RD_KAFKA_RESP_ERR_NO_ERROR;
         ++i) {
      r.headers.emplace_back(
          name, value != nullptr
                    ? std::string(static_cast<const char*>(value), size)
                    : std::string());
    }
  }
  return r;
}

std::string TopicPartitionName(const TopicPartition& tp) {
  return absl::StrCat(tp.topic, "[", tp.partition, "]");
}

// librdkafka's callbacks: `opaque` is the GroupConsumer. They run inside
// rd_kafka_consumer_poll / rd_kafka_consumer_close, on the owner's thread
// (rd_kafka_poll_set_consumer); the log callback is the shared one.
struct GroupConsumer::Callbacks {
  static void OnRebalance(rd_kafka_t* rk, rd_kafka_resp_err_t err,
                          rd_kafka_topic_partition_list_t* parts,
                          void* opaque) {
    auto* self = static_cast<GroupConsumer*>(opaque);
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
      Assign(self, parts);
    } else {
      Revoke(self, parts);
    }
  }

  // Each partition starts where the listener says.
  static void Assign(GroupConsumer* self,
                     rd_kafka_topic_partition_list_t* parts) {
    std::vector<std::string> names;
    for (int i = 0; i < parts->cnt; ++i) {
      rd_kafka_topic_partition_t& p = parts->elems[i];
      TopicPartition tp{p.topic, p.partition};
      absl::StatusOr<std::optional<int64_t>> start =
          self->listener_->OnAssigned(tp);
      int64_t next = RD_KAFKA_OFFSET_INVALID;  // the committed offset
      if (!start.ok()) {
        if (self->fatal_.ok()) self->fatal_ = start.status();
      } else if (start->has_value() && **start >= 0) {
        next = **start;
      }
      p.offset = next;
      names.push_back(absl::StrCat(
          TopicPartitionName(tp), "@",
          next >= 0 ? absl::StrCat(next) : std::string("committed")));
    }
    spdlog::info("assigned {} partitions: {}", parts->cnt,
                 absl::StrJoin(names, " "));
    rd_kafka_resp_err_t err = rd_kafka_assign(self->rk_, parts);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR && self->fatal_.ok()) {
      self->fatal_ = KafkaErrorToStatus(err, "assign");
    }
  }

  static void Revoke(GroupConsumer* self,
                     rd_kafka_topic_partition_list_t* parts) {
    self->CommitProcessed(/*async=*/false);
    for (int i = 0; i < parts->cnt; ++i) {
      self->listener_->OnRevoked(
          {parts->elems[i].topic, parts->elems[i].partition});
    }
    spdlog::info("revoked {} partitions", parts->cnt);
    rd_kafka_assign(self->rk_, nullptr);
  }

  static void OnError(rd_kafka_t* rk, int err, const char* reason,
                      void* opaque) {
    RecordRdKafkaError(rk, err, reason,
                       &static_cast<GroupConsumer*>(opaque)->fatal_);
  }
};

GroupConsumer::GroupConsumer(const GroupConsumerOptions& options,
                             RebalanceListener* listener)
    : options_(options), listener_(listener) {}

GroupConsumer::~GroupConsumer() { Close(); }

absl::StatusOr<std::unique_ptr<GroupConsumer>> GroupConsumer::Create(
    const GroupConsumerOptions& options, RebalanceListener* listener) {
  std::unique_ptr<GroupConsumer> self(new GroupConsumer(options, listener));
  std::unique_ptr<rd_kafka_conf_t, ConfDeleter> conf(rd_kafka_conf_new());
  char errstr[512];
  auto set = [&](const std::string& k, const std::string& v) {
    if (rd_kafka_conf_set(conf.get(), k.c_str(), v.c_str(), errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK) {
      return absl::InvalidArgumentError(
          absl::StrCat("kafka property ", k, ": ", errstr));
    }
    return absl::OkStatus();
  };
  absl::Status s = set("bootstrap.servers", options.brokers);
  if (s.ok()) s = set("group.id", options.group_id);
  if (s.ok()) s = set("client.id", options.client_id);
  for (const auto& [k, v] : kConsumerDefaults) {
    if (s.ok()) s = set(k, v);
  }
  // Heartbeats at a third of the session timeout (at most librdkafka's 3 s
  // default), so a live member is never dropped.
  const int64_t session_ms = absl::ToInt64Milliseconds(options.session_timeout);
  if (s.ok()) s = set("session.timeout.ms", absl::StrCat(session_ms));
  if (s.ok()) {
    s = set("heartbeat.interval.ms",
            absl::StrCat(std::clamp<int64_t>(session_ms / 3, 1, 3000)));
  }
  if (s.ok() && !options.instance_id.empty()) {
    s = set("group.instance.id", options.instance_id);
  }
  for (const auto& [k, v] : options.properties) {
    if (s.ok()) s = set(k, v);
  }
  if (!s.ok()) return s;
  rd_kafka_conf_set_opaque(conf.get(), self.get());
  rd_kafka_conf_set_rebalance_cb(conf.get(), &Callbacks::OnRebalance);
  rd_kafka_conf_set_error_cb(conf.get(), &Callbacks::OnError);
  rd_kafka_conf_set_log_cb(conf.get(), &RdKafkaLog);
  // On success rd_kafka_new takes ownership of the configuration.
  self->rk_ =
      rd_kafka_new(RD_KAFKA_CONSUMER, conf.get(), errstr, sizeof(errstr));
  if (self->rk_ == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("kafka consumer: ", errstr));
  }
  conf.release();
  rd_kafka_poll_set_consumer(self->rk_);
  ListPtr topics(rd_kafka_topic_partition_list_new(
      static_cast<int>(options.topics.size())));
  for (const std::string& t : options.topics) {
    rd_kafka_topic_partition_list_add(topics.get(), t.c_str(),
                                      RD_KAFKA_PARTITION_UA);
  }
  if (absl::Status sub = KafkaErrorToStatus(
          rd_kafka_subscribe(self->rk_, topics.get()), "subscribe");
      !sub.ok()) {
    return sub;
  }
  return self;
}

absl::StatusOr<std::optional<ConsumedMessage>> GroupConsumer::Poll(
    absl::Duration timeout) {
  if (rk_ == nullptr) {
    return absl::FailedPreconditionError("the consumer is closed");
  }
  absl::Time now = absl::Now();
  if (now >= next_commit_) {
    CommitProcessed(/*async=*/true);
    next_commit_ = now + options_.commit_interval;
  }
  rd_kafka_message_t* m = rd_kafka_consumer_poll(rk_, ToTimeoutMs(timeout));
  std::unique_ptr<rd_kafka_message_t, void (*)(rd_kafka_message_t*)> owned(
      m, &rd_kafka_message_destroy);
  if (!fatal_.ok()) return fatal_;
  if (m == nullptr) return std::nullopt;
  if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) return std::nullopt;
    if (m->err == RD_KAFKA_RESP_ERR_INVALID_SESSION_TIMEOUT) {
      // The group will never be joined: retrying only hides it. (Named by
      // the flag that sets it: outbox-inbox is this consumer's user.)
      return absl::FailedPreconditionError(
          absl::StrCat("the broker refuses --session-timeout=",
                       absl::FormatDuration(options_.session_timeout),
                       " (outside its group.min.session.timeout.ms .. "
                       "group.max.session.timeout.ms, 6s .. 30m by default)"));
    }
    // Informational (e.g. a topic not there yet); librdkafka retries.
    spdlog::warn("kafka consumer: {}: {}", rd_kafka_err2name(m->err),
                 rd_kafka_message_errstr(m));
    return std::nullopt;
  }
  return ToConsumedMessage(m);
}

void GroupConsumer::MarkProcessed(const TopicPartition& tp,
                                  int64_t next_offset) {
  to_commit_[tp] = next_offset;
}

void GroupConsumer::CommitProcessed(bool async) {
  if (to_commit_.empty() || rk_ == nullptr) return;
  ListPtr l(
      rd_kafka_topic_partition_list_new(static_cast<int>(to_commit_.size())));
  for (const auto& [tp, next] : to_commit_) {
    rd_kafka_topic_partition_list_add(l.get(), tp.topic.c_str(), tp.partition)
        ->offset = next;
  }
  rd_kafka_resp_err_t err = rd_kafka_commit(rk_, l.get(), async ? 1 : 0);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    spdlog::debug("kafka offset commit: {}", rd_kafka_err2name(err));
  }
  to_commit_.clear();
}

void GroupConsumer::Pause(const TopicPartition& tp) { SetPaused(tp, true); }
void GroupConsumer::Resume(const TopicPartition& tp) { SetPaused(tp, false); }

void GroupConsumer::SetPaused(const TopicPartition& tp, bool pause) {
  if (rk_ == nullptr) return;
  ListPtr l(rd_kafka_topic_partition_list_new(1));
  rd_kafka_topic_partition_list_add(l.get(), tp.topic.c_str(), tp.partition);
  rd_kafka_resp_err_t err = pause ? rd_kafka_pause_partitions(rk_, l.get())
                                  : rd_kafka_resume_partitions(rk_, l.get());
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    spdlog::warn("{} {}: {}", TopicPartitionName(tp),
                 pause ? "pause" : "resume", rd_kafka_err2name(err));
    return;
  }
  spdlog::info("{} {}", TopicPartitionName(tp), pause ? "paused" : "resumed");
}

void GroupConsumer::Close() {
  if (rk_ == nullptr) return;
  CommitProcessed(/*async=*/false);
  rd_kafka_consumer_close(rk_);  // leaves the group (revokes)
  rd_kafka_destroy(rk_);
  rk_ = nullptr;
}

}  // namespace outboxd
