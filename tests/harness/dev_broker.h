// DevBroker: runs the outbox-devbroker binary as a child for tests and
// talks to it over its stdin control channel.
#ifndef OUTBOXD_TESTS_HARNESS_DEV_BROKER_H_
#define OUTBOXD_TESTS_HARNESS_DEV_BROKER_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tests/harness/child_process.h"

namespace outboxd::testing {

class DevBroker {
 public:
  // Starts `outbox-devbroker --brokers=N` and waits for its bootstrap line.
  static absl::StatusOr<std::unique_ptr<DevBroker>> Start(int brokers = 3,
                                                          int partitions = 4);
  const std::string& bootstrap() const { return bootstrap_; }

  // Control commands; each waits for the broker's "ok" reply.
  absl::Status CreateTopic(const std::string& topic, int partitions);
  absl::Status SetBrokerDown(int broker_id);
  absl::Status SetBrokerUp(int broker_id);
  absl::Status SetAllBrokersDown();
  absl::Status SetAllBrokersUp();
  absl::Status SetRtt(int broker_id, int rtt_ms);
  // The next `count` requests of `api_key` (0 = Produce) fail with
  // `error` (a Kafka error code or name, e.g. TOPIC_AUTHORIZATION_FAILED).
  absl::Status InjectError(int api_key, const std::string& error, int count);
  absl::Status ClearErrors(int api_key);

 private:
  DevBroker() = default;
  absl::Status Command(const std::string& line);
  std::unique_ptr<ChildProcess> process_;
  std::string bootstrap_;
  int brokers_ = 0;
};

}  // namespace outboxd::testing

#endif  // OUTBOXD_TESTS_HARNESS_DEV_BROKER_H_
