#include "kafka/rdkafka_callbacks.h"

#include "absl/strings/str_cat.h"
#include "kafka/kafka_status.h"

namespace outboxd {

spdlog::level::level_enum RdKafkaLogLevel(int syslog_level) {
  if (syslog_level <= 2) return spdlog::level::critical;  // emerg .. crit
  if (syslog_level == 3) return spdlog::level::err;
  if (syslog_level == 4) return spdlog::level::warn;
  if (syslog_level <= 6) return spdlog::level::info;  // notice, info
  return spdlog::level::debug;
}

void RdKafkaLog(const rd_kafka_t* rk, int level, const char* facility,
                const char* message) {
  spdlog::log(RdKafkaLogLevel(level), "rdkafka {}: {}", facility, message);
}

absl::Status RdKafkaFatalError(rd_kafka_t* rk) {
  char reason[512];
  rd_kafka_resp_err_t err = rd_kafka_fatal_error(rk, reason, sizeof(reason));
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR) return absl::OkStatus();
  return KafkaErrorToStatus(
      RD_KAFKA_RESP_ERR__FATAL, "kafka fatal error",
      absl::StrCat(rd_kafka_err2name(err), ": ", reason).c_str());
}

void RecordRdKafkaError(rd_kafka_t* rk, int err, const char* reason,
                        absl::Status* fatal) {
  if (err == RD_KAFKA_RESP_ERR__FATAL) {
    absl::Status status = RdKafkaFatalError(rk);
    if (status.ok()) {
      // Raised, yet librdkafka no longer says which: keep what we were told.
      status = KafkaErrorToStatus(RD_KAFKA_RESP_ERR__FATAL, "kafka fatal error",
                                  reason);
    }
    spdlog::error("{}", status.ToString());
    if (fatal->ok()) *fatal = std::move(status);
    return;
  }
  spdlog::warn("kafka: {}: {}",
               rd_kafka_err2name(static_cast<rd_kafka_resp_err_t>(err)),
               reason);
}

}  // namespace outboxd
