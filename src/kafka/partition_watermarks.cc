#include "kafka/partition_watermarks.h"

#include <librdkafka/rdkafka.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "kafka/kafka_status.h"
#include "outbox/router.h"
#include "spdlog/spdlog.h"

namespace outboxd {
namespace {

// User properties that make sense for the watermark consumer: how to reach
// and authenticate to the cluster. Producer tuning is not passed on.
bool IsConnectionProperty(absl::string_view name) {
  constexpr absl::string_view kPrefixes[] = {
      "security.", "sasl.",    "ssl.",          "ssl_",
      "enable.ssl", "socket.", "broker.address", "api.version",
      "client.",    "debug",   "resolve.",      "connections.max",
      "reconnect.", "receive.message.max.bytes", "fetch.max.bytes",
      "fetch.message.max.bytes",
  };
  for (absl::string_view p : kPrefixes) {
    if (absl::StartsWith(name, p)) return true;
  }
  return false;
}

int TimeoutMs(absl::Time deadline) {
  return static_cast<int>(std::clamp<int64_t>(
      absl::ToInt64Milliseconds(deadline - absl::Now()), 0, 1 << 30));
}

void LogFromRdkafka(const rd_kafka_t*, int level, const char* facility,
                    const char* message) {
  if (level <= 3) {
    spdlog::warn("rdkafka watermarks {}: {}", facility, message);
  } else {
    spdlog::debug("rdkafka watermarks {}: {}", facility, message);
  }
}

}  // namespace

int32_t Murmur2Partition(absl::string_view key, int32_t partition_count) {
  // librdkafka's own implementation: the same bytes, the same partition.
  static const char kEmpty[1] = {0};
  return rd_kafka_msg_partitioner_murmur2(
      nullptr, key.data() != nullptr ? key.data() : kEmpty, key.size(),
      partition_count, nullptr, nullptr);
}

std::optional<EventPosition> PositionFromHeaders(
    absl::string_view lsn_header, absl::string_view index_header) {
  uint64_t lsn = 0;
  uint32_t index = 0;
  if (!absl::SimpleAtoi(lsn_header, &lsn) ||
      !absl::SimpleAtoi(index_header, &index)) {
    return std::nullopt;
  }
  return EventPosition{Lsn(lsn), index};
}

struct PartitionWatermarks::Impl {
  rd_kafka_t* rk = nullptr;
  absl::Duration timeout;
  ~Impl() {
    if (rk != nullptr) {
      rd_kafka_consumer_close(rk);
      rd_kafka_destroy(rk);
    }
  }
};

PartitionWatermarks::PartitionWatermarks(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
PartitionWatermarks::~PartitionWatermarks() = default;

absl::StatusOr<std::unique_ptr<PartitionWatermarks>>
PartitionWatermarks::Create(const PartitionWatermarksOptions& options) {
  static std::atomic<int> instances{0};
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  std::vector<std::pair<std::string, std::string>> settings = {
      {"bootstrap.servers", options.brokers},
      {"client.id", "outboxd-watermarks"},
      // rd_kafka_assign wants a group.id; the group is never joined.
      {"group.id", absl::StrCat("outboxd-watermarks-", getpid(), "-",
                                instances++)},
      {"enable.auto.commit", "false"},
      {"enable.auto.offset.store", "false"},
      {"enable.partition.eof", "true"},
      {"auto.offset.reset", "latest"},
      {"fetch.wait.max.ms", "50"},
      {"log.connection.close", "false"},
  };
  for (const auto& p : options.properties) {
    if (IsConnectionProperty(p.first)) settings.push_back(p);
  }
  char errstr[512];
  for (const auto& [name, value] : settings) {
    if (rd_kafka_conf_set(conf, name.c_str(), value.c_str(), errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK) {
      rd_kafka_conf_destroy(conf);
      return absl::InvalidArgumentError(
          absl::StrCat("watermark consumer property ", name, ": ", errstr));
    }
  }
  rd_kafka_conf_set_log_cb(conf, LogFromRdkafka);
  rd_kafka_t* rk =
      rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
  if (rk == nullptr) {
    rd_kafka_conf_destroy(conf);
    return absl::InvalidArgumentError(
        absl::StrCat("watermark consumer configuration: ", errstr));
  }
  rd_kafka_poll_set_consumer(rk);
  auto impl = std::make_unique<Impl>();
  impl->rk = rk;
  impl->timeout = options.timeout;
  return std::unique_ptr<PartitionWatermarks>(
      new PartitionWatermarks(std::move(impl)));
}

absl::StatusOr<int32_t> PartitionWatermarks::PartitionCount(
    const std::string& topic) {
  // A request naming the topic: like the producer's, it may auto-create it.
  rd_kafka_topic_t* rkt = rd_kafka_topic_new(impl_->rk, topic.c_str(), nullptr);
  const absl::Time deadline = absl::Now() + impl_->timeout;
  absl::Status last = absl::UnavailableError("no metadata answer");
  while (absl::Now() < deadline) {
    const rd_kafka_metadata_t* md = nullptr;
    rd_kafka_resp_err_t err = rd_kafka_metadata(
        impl_->rk, 0, rkt, &md, std::max(TimeoutMs(deadline), 100));
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      int32_t count = 0;
      rd_kafka_resp_err_t topic_err = RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
      for (int i = 0; i < md->topic_cnt; ++i) {
        if (topic == md->topics[i].topic) {
          topic_err = md->topics[i].err;
          count = md->topics[i].partition_cnt;
        }
      }
      rd_kafka_metadata_destroy(md);
      if (topic_err == RD_KAFKA_RESP_ERR_NO_ERROR && count > 0) {
        rd_kafka_topic_destroy(rkt);
        return count;
      }
      last = KafkaErrorToStatus(topic_err,
                                absl::StrCat("metadata of topic ", topic));
    } else {
      last = KafkaErrorToStatus(err, absl::StrCat("metadata of topic ", topic));
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  rd_kafka_topic_destroy(rkt);
  return absl::UnavailableError(last.message());
}

absl::StatusOr<std::optional<EventPosition>> PartitionWatermarks::LastPosition(
    const std::string& topic, int32_t partition) {
  const absl::Time deadline = absl::Now() + impl_->timeout;
  const std::string where = absl::StrCat(topic, "[", partition, "]");
  int64_t low = 0;
  int64_t high = 0;
  rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(
      impl_->rk, topic.c_str(), partition, &low, &high,
      std::max(TimeoutMs(deadline), 100));
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    absl::Status s =
        KafkaErrorToStatus(err, absl::StrCat("watermark offsets of ", where));
    return absl::UnavailableError(s.message());
  }
  if (high <= low) return std::nullopt;  // empty (or fully deleted)

  rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(list, topic.c_str(), partition)->offset =
      high - 1;
  err = rd_kafka_assign(impl_->rk, list);
  rd_kafka_topic_partition_list_destroy(list);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return KafkaErrorToStatus(err, absl::StrCat("assign ", where));
  }
  absl::StatusOr<std::optional<EventPosition>> result =
      absl::DeadlineExceededError(absl::StrCat(
          "the last record of ", where, " (offset ", high - 1,
          ") was not read within ", absl::FormatDuration(impl_->timeout)));
  while (absl::Now() < deadline) {
    rd_kafka_message_t* m = rd_kafka_consumer_poll(
        impl_->rk, std::min(TimeoutMs(deadline), 200));
    if (m == nullptr) continue;
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      rd_kafka_message_destroy(m);
      continue;
    }
    if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      spdlog::debug("watermarks: reading {}: {}", where,
                    rd_kafka_err2str(m->err));
      rd_kafka_message_destroy(m);
      continue;
    }
    if (m->partition != partition || m->offset < high - 1) {
      rd_kafka_message_destroy(m);
      continue;
    }
    rd_kafka_headers_t* headers = nullptr;
    const void* lsn = nullptr;
    const void* index = nullptr;
    size_t lsn_size = 0;
    size_t index_size = 0;
    std::optional<EventPosition> position;
    if (rd_kafka_message_headers(m, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR &&
        rd_kafka_header_get_last(headers, std::string(kHeaderLsn).c_str(),
                                 &lsn, &lsn_size) ==
            RD_KAFKA_RESP_ERR_NO_ERROR &&
        rd_kafka_header_get_last(headers, std::string(kHeaderIndex).c_str(),
                                 &index, &index_size) ==
            RD_KAFKA_RESP_ERR_NO_ERROR &&
        lsn != nullptr && index != nullptr) {
      position = PositionFromHeaders(
          absl::string_view(static_cast<const char*>(lsn), lsn_size),
          absl::string_view(static_cast<const char*>(index), index_size));
    }
    int64_t offset = m->offset;
    rd_kafka_message_destroy(m);
    if (!position.has_value()) {
      result = absl::DataLossError(absl::StrCat(
          "the last record of ", where, " (offset ", offset,
          ") has no outbox.lsn/outbox.index headers: another producer writes "
          "to it, so exactly-once delivery cannot be guaranteed"));
    } else {
      result = position;
    }
    break;
  }
  rd_kafka_assign(impl_->rk, nullptr);
  return result;
}

}  // namespace outboxd
