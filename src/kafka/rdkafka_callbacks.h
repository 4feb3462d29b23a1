// The librdkafka log and error callbacks of every client outboxd creates
// (the producer, the inbox's group consumer, the checkpoint reader): one
// mapping of librdkafka's levels onto spdlog, one rule for fatal errors.
//
// Threading: RdKafkaLog runs on librdkafka's internal threads and only
// logs. RecordRdKafkaError runs where the client's error callback is served
// (inside rd_kafka_poll / rd_kafka_consumer_poll, on the caller's thread).
#ifndef OUTBOXD_KAFKA_RDKAFKA_CALLBACKS_H_
#define OUTBOXD_KAFKA_RDKAFKA_CALLBACKS_H_

#include <librdkafka/rdkafka.h>

#include "absl/status/status.h"
#include "spdlog/spdlog.h"

namespace outboxd {

// librdkafka logs with syslog levels (0 emerg .. 7 debug).
spdlog::level::level_enum RdKafkaLogLevel(int syslog_level);

// A log callback (rd_kafka_conf_set_log_cb): "rdkafka <facility>: <text>"
// at RdKafkaLogLevel(level).
void RdKafkaLog(const rd_kafka_t* rk, int level, const char* facility,
                const char* message);

// The body of an error callback (rd_kafka_conf_set_error_cb). A fatal error
// (RD_KAFKA_RESP_ERR__FATAL: the client is unusable) is logged as an error
// and kept in *fatal unless *fatal already holds one (the first cause is
// the one to report). Anything else is informational, librdkafka recovers
// by itself: logged as a warning.
void RecordRdKafkaError(rd_kafka_t* rk, int err, const char* reason,
                        absl::Status* fatal);

// The client's fatal error as a Status (kAborted), OK when there is none.
// Asks librdkafka, so it is right even before the error callback was
// served.
absl::Status RdKafkaFatalError(rd_kafka_t* rk);

}  // namespace outboxd

#endif  // OUTBOXD_KAFKA_RDKAFKA_CALLBACKS_H_
