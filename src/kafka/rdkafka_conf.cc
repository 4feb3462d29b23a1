#include "kafka/rdkafka_conf.h"

#include <cstdint>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "kafka/rdkafka_callbacks.h"

namespace outboxd {

int ToTimeoutMs(absl::Duration timeout) {
  if (timeout == absl::InfiniteDuration()) return -1;
  const int64_t ms = absl::ToInt64Milliseconds(timeout);
  if (ms < 0) return 0;
  if (ms > std::numeric_limits<int>::max()) {
    return std::numeric_limits<int>::max();
  }
  return static_cast<int>(ms);
}

absl::Status SetProperty(rd_kafka_conf_t* conf, const std::string& name,
                         const std::string& value) {
  char errstr[512];
  if (rd_kafka_conf_set(conf, name.c_str(), value.c_str(), errstr,
                        sizeof(errstr)) != RD_KAFKA_CONF_OK) {
    return absl::InvalidArgumentError(
        absl::StrCat("kafka property ", name, ": ", errstr));
  }
  return absl::OkStatus();
}

absl::StatusOr<RdKafkaConfPtr> ReaderConf(
    const std::string& brokers,
    const std::vector<std::pair<std::string, std::string>>& properties,
    const std::string& group) {
  RdKafkaConfPtr conf(rd_kafka_conf_new());
  absl::Status s = SetProperty(conf.get(), "bootstrap.servers", brokers);
  if (s.ok()) s = SetProperty(conf.get(), "group.id", group);
  if (s.ok()) s = SetProperty(conf.get(), "enable.auto.commit", "false");
  // Stable offsets and records only: a pending transactional commit makes
  // an offset fetch wait (retry) instead of answering with the previous
  // offset, and records of aborted transactions are never seen.
  if (s.ok()) s = SetProperty(conf.get(), "isolation.level", "read_committed");
  for (const auto& [name, value] : properties) {
    if (!s.ok()) break;
    if (absl::StartsWith(name, "security.") ||
        absl::StartsWith(name, "sasl.") || absl::StartsWith(name, "ssl.") ||
        absl::StartsWith(name, "socket.") ||
        absl::StartsWith(name, "broker.") || name == "client.id" ||
        name == "client.dns.lookup") {
      s = SetProperty(conf.get(), name, value);
    }
  }
  if (!s.ok()) return s;
  rd_kafka_conf_set_log_cb(conf.get(), &RdKafkaLog);
  return conf;
}

}  // namespace outboxd
