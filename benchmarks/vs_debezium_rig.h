// The rig of vs_debezium_bench: the publishers it compares and how each is
// run. outboxd as a child process with its defaults, or Kafka Connect
// standalone with Debezium's PostgreSQL connector and Outbox Event Router
// (at its defaults, or tuned), configured as Debezium documents for an
// outbox; their topic prefixes, slots and the publication Debezium reads.
#ifndef OUTBOXD_BENCHMARKS_VS_DEBEZIUM_RIG_H_
#define OUTBOXD_BENCHMARKS_VS_DEBEZIUM_RIG_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "benchmarks/bench_env.h"
#include "nlohmann/json.hpp"
#include "tests/harness/child_process.h"

namespace outboxd::bench::vs_debezium {

inline constexpr char kOutboxdPrefix[] = "outboxd.";  // before outbox.event.
inline constexpr char kDebeziumTopicPrefix[] = "outbox.event.";
inline constexpr char kTunedTopicPrefix[] = "tuned.outbox.event.";
inline constexpr char kDebeziumPublication[] = "dbz_publication";

// Debezium's tuned run: its documented throughput settings, and the
// Connect worker's producer and offset-flush settings.
using Settings = std::vector<std::pair<std::string, std::string>>;
inline const Settings kTunedConnector = {
    {"max.batch.size", "8192"},
    {"max.queue.size", "32768"},
    {"poll.interval.ms", "10"},
};
inline const Settings kTunedWorker = {
    {"producer.linger.ms", "10"},
    {"producer.batch.size", "524288"},
    {"offset.flush.interval.ms", "1000"},
};

// `s` as an SQL string literal.
std::string Quote(const std::string& s);

// One publisher as the benchmark runs it: outboxd, or Kafka Connect
// standalone with Debezium's connector (default or tuned settings).
struct PublisherKind {
  std::string name;          // outboxd | debezium | debezium-tuned
  std::string topic_prefix;  // prefix + aggregatetype = topic
  bool debezium = false;
  bool tuned = false;
  // outboxd: flags after the rig's (a throughput variant's).
  std::vector<std::string> outboxd_args;
  // Debezium: every record to this topic instead of the EventRouter's
  // outbox.event.<aggregatetype> ("" = the router's default).
  std::string route_topic;
};

// outboxd, debezium, debezium-tuned, or outboxd-<label>: outboxd with a
// variant's flags (the caller sets outboxd_args) under the topic prefix
// outboxd.<label>.outbox.event.
absl::StatusOr<PublisherKind> ParsePublisher(const std::string& name);

// The slot of a run: `prefix` and the publisher's name with '_' for '-'.
std::string SlotName(const std::string& prefix, const std::string& name);

// What the publishers are started with: the benchmark's flags.
struct RigOptions {
  std::string connect_libs;   // Kafka Connect + Debezium jars
  std::string connect_log4j;  // log4j2 configuration, "" = Connect's own
  std::vector<std::string> outboxd_args;  // extra outboxd flags
};

// Starts the publisher on `slot`; its log goes to work_dir/<log_name>.log.
// `settings` (may be null) receives its flags or its Connect configuration.
absl::StatusOr<std::unique_ptr<testing::ChildProcess>> StartPublisher(
    BenchEnv& env, const RigOptions& rig, const PublisherKind& p,
    const std::string& slot, const std::string& log_name,
    nlohmann::json* settings);

// SIGTERM, then SIGKILL after 60 s (an error then).
absl::Status StopPublisher(testing::ChildProcess& child);

// Waits until the slot is streamed by `child`; fails early if it exits.
absl::Status WaitStreaming(BenchEnv& env, const std::string& slot,
                           testing::ChildProcess& child,
                           const std::string& log);

}  // namespace outboxd::bench::vs_debezium

#endif  // OUTBOXD_BENCHMARKS_VS_DEBEZIUM_RIG_H_
