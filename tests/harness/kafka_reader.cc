#include "tests/harness/kafka_reader.h"

#include <librdkafka/rdkafka.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <tuple>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "spdlog/spdlog.h"

namespace outboxd::testing {
namespace {

// Large enough for the 1 MB+ records tests produce (a record's value plus
// headers and batch overhead must fit into one partition fetch).
constexpr const char* kMaxPartitionFetchBytes = "16777216";  // 16 MiB
constexpr const char* kMaxFetchBytes = "67108864";           // 64 MiB
constexpr const char* kMaxReceiveBytes = "100000000";        // > fetch+512
constexpr int kPollMs = 100;

struct HandleDeleter {
  void operator()(rd_kafka_t* rk) const {
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
  }
};
using Handle = std::unique_ptr<rd_kafka_t, HandleDeleter>;

struct PartitionListDeleter {
  void operator()(rd_kafka_topic_partition_list_t* list) const {
    rd_kafka_topic_partition_list_destroy(list);
  }
};

struct MessageDeleter {
  void operator()(rd_kafka_message_t* msg) const {
    rd_kafka_message_destroy(msg);
  }
};

void LogFromRdkafka(const rd_kafka_t* /*rk*/, int level, const char* fac,
                    const char* buf) {
  // AUTOCREATE: librdkafka warns that the mock ignores
  // allow.auto.create.topics; PartitionCount works around that.
  if (level <= 4 && std::strcmp(fac, "AUTOCREATE") != 0) {
    spdlog::warn("kafka reader {}: {}", fac, buf);
  } else {
    spdlog::debug("kafka reader {}: {}", fac, buf);
  }
}

absl::StatusOr<Handle> NewConsumer(const std::string& bootstrap) {
  // librdkafka wants a group.id for rd_kafka_assign; the group is never
  // joined (no subscribe) and nothing is committed.
  static std::atomic<int> reader_count{0};
  std::string group_id =
      absl::StrCat("outboxd-test-reader-", getpid(), "-", reader_count++);
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char errstr[512];
  const std::pair<const char*, std::string> settings[] = {
      {"bootstrap.servers", bootstrap},
      {"group.id", group_id},
      {"enable.auto.commit", "false"},
      {"enable.auto.offset.store", "false"},
      {"allow.auto.create.topics", "false"},
      {"auto.offset.reset", "earliest"},
      {"fetch.message.max.bytes", kMaxPartitionFetchBytes},
      {"fetch.max.bytes", kMaxFetchBytes},
      {"receive.message.max.bytes", kMaxReceiveBytes},
      {"fetch.wait.max.ms", "50"},
      {"topic.metadata.refresh.interval.ms", "1000"},
      {"log.connection.close", "false"},
  };
  for (const auto& [name, value] : settings) {
    if (rd_kafka_conf_set(conf, name, value.c_str(), errstr, sizeof(errstr)) !=
        RD_KAFKA_CONF_OK) {
      rd_kafka_conf_destroy(conf);
      return absl::InternalError(
          absl::StrCat("consumer config ", name, ": ", errstr));
    }
  }
  rd_kafka_conf_set_log_cb(conf, LogFromRdkafka);
  rd_kafka_t* rk =
      rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
  if (rk == nullptr) {
    rd_kafka_conf_destroy(conf);
    return absl::InternalError(absl::StrCat("rd_kafka_new: ", errstr));
  }
  Handle handle(rk);
  rd_kafka_poll_set_consumer(rk);
  return handle;
}

// Partition count of `topic`, retried until `deadline` while the topic is
// unknown or the cluster unreachable. kNotFound if it never appears.
//
// Asks for the metadata of all topics: a request naming the topic would let
// the broker auto-create it, and librdkafka 2.0.2's mock cluster does so
// even for a consumer with allow.auto.create.topics=false (it answers
// Metadata at a version without that field). Reading must not create.
absl::StatusOr<int> PartitionCount(rd_kafka_t* rk, const std::string& topic,
                                   absl::Time deadline) {
  std::string last_error = "no metadata request completed";
  bool cluster_answered = false;
  while (true) {
    int timeout_ms = static_cast<int>(std::clamp<int64_t>(
        absl::ToInt64Milliseconds(deadline - absl::Now()), 100, 2000));
    const rd_kafka_metadata_t* metadata = nullptr;
    rd_kafka_resp_err_t err =
        rd_kafka_metadata(rk, /*all_topics=*/1, nullptr, &metadata, timeout_ms);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      cluster_answered = true;
      int partitions = 0;
      rd_kafka_resp_err_t topic_err = RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
      for (int i = 0; i < metadata->topic_cnt; ++i) {
        if (topic == metadata->topics[i].topic) {
          topic_err = metadata->topics[i].err;
          partitions = metadata->topics[i].partition_cnt;
        }
      }
      rd_kafka_metadata_destroy(metadata);
      if (topic_err == RD_KAFKA_RESP_ERR_NO_ERROR && partitions > 0) {
        return partitions;
      }
      last_error = rd_kafka_err2name(topic_err);
    } else {
      last_error = rd_kafka_err2name(err);
    }
    if (absl::Now() >= deadline) break;
    usleep(100 * 1000);
  }
  if (cluster_answered) {
    return absl::NotFoundError(
        absl::StrCat("topic ", topic, " does not exist (", last_error, ")"));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("no metadata for topic ", topic, ": ", last_error));
}

ConsumedRecord ToRecord(const rd_kafka_message_t* msg) {
  ConsumedRecord record;
  record.topic = rd_kafka_topic_name(msg->rkt);
  record.partition = msg->partition;
  record.offset = msg->offset;
  if (msg->key != nullptr) {
    record.key.assign(static_cast<const char*>(msg->key), msg->key_len);
  }
  if (msg->payload != nullptr) {
    record.value.emplace(static_cast<const char*>(msg->payload), msg->len);
  }
  rd_kafka_timestamp_type_t ts_type;
  record.timestamp_ms = rd_kafka_message_timestamp(msg, &ts_type);
  record.create_time = ts_type == RD_KAFKA_TIMESTAMP_CREATE_TIME;
  rd_kafka_headers_t* headers = nullptr;
  if (rd_kafka_message_headers(msg, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR) {
    const char* name;
    const void* value;
    size_t size;
    for (size_t i = 0;
         rd_kafka_header_get_all(headers, i, &name, &value, &size) ==
         RD_KAFKA_RESP_ERR_NO_ERROR;
         ++i) {
      record.headers.emplace_back(
          name, value == nullptr
                    ? std::string()
                    : std::string(static_cast<const char*>(value), size));
    }
  }
  return record;
}

}  // namespace

std::optional<std::string> ConsumedRecord::Header(
    const std::string& name) const {
  for (const auto& [header_name, value] : headers) {
    if (header_name == name) return value;
  }
  return std::nullopt;
}

uint64_t HeaderU64(const ConsumedRecord& r, const std::string& name) {
  uint64_t v = 0;
  auto h = r.Header(name);
  EXPECT_TRUE(h.has_value() && absl::SimpleAtoi(*h, &v))
      << name << ": " << h.value_or("(absent)");
  return v;
}

absl::StatusOr<std::vector<ConsumedRecord>> ReadTopic(
    const std::string& bootstrap, const std::string& topic, size_t min_records,
    absl::Duration timeout, absl::Duration quiet) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::StatusOr<Handle> consumer = NewConsumer(bootstrap);
  if (!consumer.ok()) return consumer.status();
  rd_kafka_t* rk = consumer->get();

  absl::StatusOr<int> partitions = PartitionCount(rk, topic, deadline);
  if (!partitions.ok()) return partitions.status();

  std::unique_ptr<rd_kafka_topic_partition_list_t, PartitionListDeleter>
      assignment(rd_kafka_topic_partition_list_new(*partitions));
  for (int p = 0; p < *partitions; ++p) {
    rd_kafka_topic_partition_list_add(assignment.get(), topic.c_str(), p)
        ->offset = RD_KAFKA_OFFSET_BEGINNING;
  }
  rd_kafka_resp_err_t err = rd_kafka_assign(rk, assignment.get());
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return absl::InternalError(
        absl::StrCat("rd_kafka_assign: ", rd_kafka_err2str(err)));
  }

  std::vector<ConsumedRecord> records;
  absl::Time last_progress = absl::Now();
  while (true) {
    absl::Time now = absl::Now();
    if (records.size() >= min_records && now - last_progress >= quiet) break;
    if (now >= deadline) {
      spdlog::warn("ReadTopic {}: timeout with {} of at least {} records",
                   topic, records.size(), min_records);
      break;
    }
    std::unique_ptr<rd_kafka_message_t, MessageDeleter> msg(
        rd_kafka_consumer_poll(rk, kPollMs));
    if (msg == nullptr) continue;
    if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) continue;
    if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      // Transient (a broker down, a leader moving): librdkafka retries.
      spdlog::debug("ReadTopic {}: {}", topic,
                    rd_kafka_message_errstr(msg.get()));
      continue;
    }
    records.push_back(ToRecord(msg.get()));
    last_progress = absl::Now();
  }
  std::sort(records.begin(), records.end(),
            [](const ConsumedRecord& a, const ConsumedRecord& b) {
              return std::tie(a.partition, a.offset) <
                     std::tie(b.partition, b.offset);
            });
  return records;
}

}  // namespace outboxd::testing
