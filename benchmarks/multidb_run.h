// One round of one setup of multidb_bench, phase after phase: the start on
// new slots with a warm-up event per database, idle, the steady load, the
// backlog drained by a restart, and the read-back; what each measures.
#ifndef OUTBOXD_BENCHMARKS_MULTIDB_RUN_H_
#define OUTBOXD_BENCHMARKS_MULTIDB_RUN_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "benchmarks/bench_env.h"
#include "benchmarks/bench_pg.h"
#include "benchmarks/multidb_fleet.h"
#include "nlohmann/json.hpp"

namespace outboxd::bench::multidb {

// The benchmark's flags for a run.
struct RunOptions {
  int rate = 1000;          // steady: events/s over all databases
  absl::Duration duration;  // steady load time
  absl::Duration idle;      // idle time measured after the warm-up
  int backlog = 2000;       // backlog: events per database
  int backlog_batch = 10;   // backlog: events per transaction
  int writer_threads = 4;   // each database's connection belongs to one
  FleetOptions fleet;
};

class Run {
 public:
  Run(BenchEnv& env, std::string setup, int round, std::vector<std::string> dbs,
      RunOptions options)
      : env_(env),
        setup_(std::move(setup)),
        round_(round),
        dbs_(std::move(dbs)),
        options_(std::move(options)),
        fleet_(env, setup_, round, dbs_, options_.fleet) {}

  // start, idle, steady, backlog and read-back of the setup's round.
  absl::StatusOr<nlohmann::json> Go();

 private:
  absl::Status WriteSteady(int64_t first_id, int64_t events, nlohmann::json&);
  absl::Status WriteBacklog(int64_t first_id, nlohmann::json&);
  BenchEnv& env_;
  const std::string setup_;
  const int round_;
  const std::vector<std::string> dbs_;
  const RunOptions options_;
  Fleet fleet_;
  std::vector<std::unique_ptr<PgConn>> conns_;  // one per database
};

}  // namespace outboxd::bench::multidb

#endif  // OUTBOXD_BENCHMARKS_MULTIDB_RUN_H_
