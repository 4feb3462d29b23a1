// Records that carry an event id and a timestamp, produced with outboxd's
// KafkaProducer, for the tests of reading them back (kafka/read_back) on
// the mock cluster and on Apache Kafka.
#ifndef OUTBOXD_TESTS_FAKES_ID_RECORDS_H_
#define OUTBOXD_TESTS_FAKES_ID_RECORDS_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "kafka/producer.h"
#include "outbox/router.h"

namespace outboxd {

struct IdRecord {
  std::string topic;
  std::string id;  // header id and key
  int64_t timestamp_ms = 0;
};

// Produces `records` and waits until Kafka acknowledged every one.
inline absl::Status ProduceIdRecords(const std::string& brokers,
                                     const std::vector<IdRecord>& records,
                                     absl::Duration timeout) {
  ProducerOptions options;
  options.brokers = brokers;
  std::atomic<size_t> acked{0};
  auto producer =
      KafkaProducer::Create(options, [&acked](uint64_t, absl::Status s) {
        if (s.ok()) ++acked;
      });
  if (!producer.ok()) return producer.status();
  for (const IdRecord& record : records) {
    KafkaRecord r;
    r.topic = record.topic;
    r.key = record.id;
    r.value = absl::string_view("{}");
    r.timestamp_ms = record.timestamp_ms;
    r.headers.emplace_back(std::string(kHeaderId), record.id);
    absl::Status s = (*producer)->Produce(r, 0);
    if (!s.ok()) return s;
  }
  absl::Status flushed = (*producer)->Flush(timeout);
  if (!flushed.ok()) return flushed;
  if (acked.load() != records.size()) {
    return absl::InternalError(absl::StrCat(
        acked.load(), " of ", records.size(), " records acknowledged"));
  }
  return absl::OkStatus();
}

}  // namespace outboxd

#endif  // OUTBOXD_TESTS_FAKES_ID_RECORDS_H_
