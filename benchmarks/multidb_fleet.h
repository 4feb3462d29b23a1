// The process fleet of multidb_bench: the outboxd processes of a setup
// (one with --databases, or one per database), the names of their
// databases, slots and topics, starting and stopping them, and waiting
// until every slot is streamed.
#ifndef OUTBOXD_BENCHMARKS_MULTIDB_FLEET_H_
#define OUTBOXD_BENCHMARKS_MULTIDB_FLEET_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "benchmarks/bench_env.h"
#include "benchmarks/bench_pg.h"
#include "nlohmann/json.hpp"
#include "tests/harness/child_process.h"

namespace outboxd::bench::multidb {

// The processes of one setup.
struct Processes {
  std::vector<std::unique_ptr<testing::ChildProcess>> children;
  std::vector<pid_t> pids() const {
    std::vector<pid_t> p;
    for (const auto& c : children) p.push_back(c->pid());
    return p;
  }
  bool AllRunning() const {
    for (const auto& c : children) {
      if (!c->Running()) return false;
    }
    return true;
  }
};

// d0, d1, ...
std::string DatabaseName(int i);

// --slot of the "one" setup in `round`.
std::string SlotBase(const std::string& setup, int round);

// Slot of database `db` in `setup` (outboxd names it --slot_<db> with
// --databases; the per-database processes get the same names).
std::string SlotName(const std::string& setup, int round,
                     const std::string& db);

// The topic of a setup's round and phase ("steady": the warm-up and steady
// events; "backlog"): one per phase, because the dev broker keeps 5 MB per
// partition (librdkafka's mock cluster drops the oldest message sets beyond
// that), so that a phase's records stay readable to the end.
std::string Topic(const std::string& setup, int round,
                  const std::string& phase);

// How every process runs besides its slot, topic and databases.
struct FleetOptions {
  bool metrics = false;                   // a /metrics server in each
  std::vector<std::string> outboxd_args;  // extra outboxd flags
};

// One setup's outboxd processes in one round: one with --databases
// ("one") or one per database ("per-db"), on the round's slots.
class Fleet {
 public:
  Fleet(BenchEnv& env, std::string setup, int round,
        std::vector<std::string> dbs, FleetOptions options)
      : env_(env),
        setup_(std::move(setup)),
        round_(round),
        dbs_(std::move(dbs)),
        options_(std::move(options)) {}

  // Starts the processes, publishing to Topic(setup, round, phase).
  absl::StatusOr<Processes> Start(const std::string& phase);
  // SIGTERM to all, then their exit codes in out["exit_codes"].
  static void Stop(Processes& p, nlohmann::json& out);
  // Nanoseconds (NowNs) when every slot of the setup is active; aborted
  // when `alive()` turns false.
  absl::StatusOr<int64_t> WaitAllActive(PgConn& admin,
                                        const std::function<bool()>& alive);
  void DropSlots();

 private:
  BenchEnv& env_;
  const std::string setup_;
  const int round_;
  const std::vector<std::string> dbs_;
  const FleetOptions options_;
};

// Connections of the publisher's role: {walsenders, all}.
std::pair<int, int> PublisherConnections(PgConn& admin);

}  // namespace outboxd::bench::multidb

#endif  // OUTBOXD_BENCHMARKS_MULTIDB_FLEET_H_
