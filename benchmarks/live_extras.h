// The live benchmark's parts beside its CPU window (live_bench.cc): the
// compared outboxd settings (--variants), the walsender serving a slot,
// the produce requests outboxd's /metrics counts, and a latency run of one
// setting with a consumer (kept apart from the CPU runs, so that the
// consumer's fetches do not count in the broker's CPU), and live.md.
//
// Measures only; nothing here asserts a timing.
#ifndef OUTBOXD_BENCHMARKS_LIVE_EXTRAS_H_
#define OUTBOXD_BENCHMARKS_LIVE_EXTRAS_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "benchmarks/bench_env.h"
#include "benchmarks/vs_debezium_rig.h"
#include "nlohmann/json.hpp"

namespace outboxd::bench {

// One compared setting: a name and the outboxd flags it adds, or
// Debezium in Kafka Connect instead of outboxd (live_publisher.h).
struct Variant {
  std::string name;
  std::vector<std::string> args;
  std::optional<vs_debezium::RigOptions> debezium;
};

// "name:flag flag ..." (the flags separated by spaces, none for today's
// defaults, e.g. "default:" or "linger5:--kafka-property=linger.ms=5").
// nullopt, the cause on stderr, for an entry without a name.
std::optional<std::vector<Variant>> ParseVariants(
    const std::vector<std::string>& specs);

// The variants of repetition `rep`: as given on even ones, reversed on odd
// ones, so that neither runs first every time.
std::vector<Variant> InRepOrder(const std::vector<Variant>& variants, int rep);

// The pid of the walsender streaming `slot` (pg_replication_slots'
// active_pid); -1 when none.
pid_t WalsenderPid(BenchEnv& env, const std::string& slot);

// outboxd_kafka_requests_total and outboxd_kafka_records_sent_total from
// the /metrics of the outboxd whose log is `log_path` (started with
// --metrics-address=127.0.0.1:0); -1 each when it cannot be read.
struct ProduceCounts {
  double requests = -1;
  double records = -1;
};
ProduceCounts ScrapeProduceCounts(const std::string& log_path);

// A fresh publisher of `v` (outboxd with `args`) on its own slot and
// topic; a consumer
// (fetch.wait.max.ms `fetch_wait_ms`) records each event's receipt; events
// at `rate` for `duration` over `connections`: commit-to-receipt p50, p90,
// p99, max.
absl::StatusOr<nlohmann::json> RunLatency(BenchEnv& env, const Variant& v,
                                          const std::vector<std::string>& args,
                                          int rate, absl::Duration duration,
                                          int connections, int fetch_wait_ms,
                                          int run_index);

// live.md: a row per run (the setting first when `variants`), then the
// latency runs, if any.
std::string LiveMarkdown(const std::string& broker, const nlohmann::json& runs,
                         const nlohmann::json& latency, bool variants);

}  // namespace outboxd::bench

#endif  // OUTBOXD_BENCHMARKS_LIVE_EXTRAS_H_
