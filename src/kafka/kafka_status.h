// The one place a librdkafka error code becomes an absl::Status, shared by
// the producer and the inbox consumer. The code says what the caller should
// do (kUnavailable: retry, kAborted: the client instance is unusable,
// kResourceExhausted: backpressure, ...); the message keeps librdkafka's
// error name and reason.
#ifndef OUTBOXD_KAFKA_KAFKA_STATUS_H_
#define OUTBOXD_KAFKA_KAFKA_STATUS_H_

#include <librdkafka/rdkafka.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace outboxd {

// OK for RD_KAFKA_RESP_ERR_NO_ERROR. `reason` (may be null) replaces
// librdkafka's generic description of `err`.
absl::Status KafkaErrorToStatus(rd_kafka_resp_err_t err,
                                absl::string_view context,
                                const char* reason = nullptr);

// True for an error by which the broker refuses a record for a reason that
// will not change on a retry: the record is too large for the topic, the
// topic is not authorized, the record is invalid for the broker. Such a
// delivery error carries kafka/sink.h's permanent-refusal payload.
bool IsPermanentRefusal(rd_kafka_resp_err_t err);

}  // namespace outboxd

#endif  // OUTBOXD_KAFKA_KAFKA_STATUS_H_
