// The read-back of multidb_bench: an independent consumer that reads a
// setup's topics from the beginning while it runs, and counts per database
// the events lost and duplicated, offset gaps, and records whose
// outbox.source names another database.
#ifndef OUTBOXD_BENCHMARKS_MULTIDB_READBACK_H_
#define OUTBOXD_BENCHMARKS_MULTIDB_READBACK_H_

#include <librdkafka/rdkafka.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace outboxd::bench::multidb {

// An independent consumer that reads the setup's topic from the beginning
// on a thread of its own while the setup runs (the dev broker keeps only the
// newest records of a partition, so reading at the end could miss the
// first ones; a gap in the offsets is counted), and tallies each event id
// and whether its outbox.source names the event's database. Events
// [first, first + count) of a phase went to database (id - first) %
// databases.
class ReadBack {
 public:
  struct Phase {
    int64_t first = 0;
    int64_t count = 0;
  };
  static absl::StatusOr<std::unique_ptr<ReadBack>> Start(
      const std::string& bootstrap, std::vector<std::string> topics,
      std::vector<std::string> dbs, std::vector<Phase> phases);
  ~ReadBack();
  ReadBack(const ReadBack&) = delete;
  ReadBack& operator=(const ReadBack&) = delete;

  // Waits until every record the topic holds now has been read; false after
  // `timeout`.
  bool CatchUp(absl::Duration timeout);
  // After CatchUp: lost and duplicated events per phase and database.
  nlohmann::json Result();

 private:
  ReadBack() = default;
  // The database index of event `id`; -1 when no phase holds it.
  int DatabaseOf(int64_t id) const;
  void Loop();
  void Count(const rd_kafka_message_t& m);

  std::vector<std::string> topics_;
  std::vector<std::string> dbs_;
  std::vector<Phase> phases_;
  rd_kafka_t* rk_ = nullptr;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::vector<int> seen_;                   // per event id: times read
  std::vector<std::vector<int64_t>> next_;  // [topic][partition]
  int64_t records_ = 0, gaps_ = 0, warmups_ = 0, unknown_ = 0;
  int64_t wrong_source_ = 0;
};

}  // namespace outboxd::bench::multidb

#endif  // OUTBOXD_BENCHMARKS_MULTIDB_READBACK_H_
