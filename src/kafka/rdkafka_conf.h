// The small pieces every librdkafka client outboxd creates shares: the
// configuration handle, setting a property as a Status, timeouts in
// librdkafka's int milliseconds, and the user's connection properties for a
// reader (a consumer that reads back what outboxd wrote).
#ifndef OUTBOXD_KAFKA_RDKAFKA_CONF_H_
#define OUTBOXD_KAFKA_RDKAFKA_CONF_H_

#include <librdkafka/rdkafka.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace outboxd {

struct RdKafkaConfDeleter {
  void operator()(rd_kafka_conf_t* conf) const { rd_kafka_conf_destroy(conf); }
};
using RdKafkaConfPtr = std::unique_ptr<rd_kafka_conf_t, RdKafkaConfDeleter>;

struct RdKafkaDeleter {
  void operator()(rd_kafka_t* rk) const { rd_kafka_destroy(rk); }
};
using RdKafkaPtr = std::unique_ptr<rd_kafka_t, RdKafkaDeleter>;

struct PartitionListDeleter {
  void operator()(rd_kafka_topic_partition_list_t* l) const {
    rd_kafka_topic_partition_list_destroy(l);
  }
};
using PartitionListPtr =
    std::unique_ptr<rd_kafka_topic_partition_list_t, PartitionListDeleter>;

// librdkafka takes int milliseconds, -1 meaning forever.
int ToTimeoutMs(absl::Duration timeout);

// kInvalidArgument naming the property for an unknown or malformed one.
absl::Status SetProperty(rd_kafka_conf_t* conf, const std::string& name,
                         const std::string& value);

// The configuration of a consumer that reads back outboxd's records or
// offsets as group `group` without ever joining it: the brokers, read
// committed, no commits, and of the user's properties the connection and
// security ones only (producer settings do not apply to a consumer).
absl::StatusOr<RdKafkaConfPtr> ReaderConf(
    const std::string& brokers,
    const std::vector<std::pair<std::string, std::string>>& properties,
    const std::string& group);

}  // namespace outboxd

#endif  // OUTBOXD_KAFKA_RDKAFKA_CONF_H_
