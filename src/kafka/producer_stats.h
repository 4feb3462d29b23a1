// What outboxd reads from librdkafka's statistics (a JSON document emitted
// every statistics.interval.ms, STATISTICS.md of librdkafka): the broker
// connections that are up, the produce requests sent and the records they
// carried. Pure functions, so that a captured document tests them.
//
// Threading: none of its own; a ProducerCounters is used by one thread
// (the one serving rd_kafka_poll).
#ifndef OUTBOXD_KAFKA_PRODUCER_STATS_H_
#define OUTBOXD_KAFKA_PRODUCER_STATS_H_

#include <cstdint>
#include <optional>

#include "absl/strings/string_view.h"

namespace outboxd {

// One statistics document's figures; the counts are totals since the
// producer started, as librdkafka keeps them.
struct ProducerStats {
  // Broker connections in state UP (bootstrap entries included).
  int brokers_up = 0;
  // Produce requests sent: the sum over the brokers of req["Produce"].
  int64_t produce_requests = 0;
  // Records sent to the brokers (top-level txmsgs; a retried record counts
  // again).
  int64_t records_sent = 0;
};

// nullopt when `json` is not a statistics document (no "brokers" object).
std::optional<ProducerStats> ParseProducerStats(absl::string_view json);

// Turns the totals of successive documents into increments for counters
// that only grow. A total that went down (a broker handle librdkafka
// removed takes its counts with it) counts nothing and becomes the new
// base, so a counter never goes back and never counts twice.
class ProducerCounters {
 public:
  struct Increment {
    int64_t produce_requests = 0;
    int64_t records_sent = 0;
  };
  Increment Advance(const ProducerStats& stats);

 private:
  static int64_t Step(int64_t total, int64_t* last);
  int64_t last_requests_ = 0;
  int64_t last_records_ = 0;
};

}  // namespace outboxd

#endif  // OUTBOXD_KAFKA_PRODUCER_STATS_H_
