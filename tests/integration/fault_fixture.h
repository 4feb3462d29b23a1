// FaultTest: the fixture of the fault suite (ctest label `fault`): one
// throwaway PostgreSQL cluster and one dev broker per test binary, a fresh
// database, outbox install, slot and topic prefix per test, outboxd as child
// processes (each with its own log file), and an inserter thread that writes
// outbox events at a steady rate.
#ifndef OUTBOXD_TESTS_INTEGRATION_FAULT_FIXTURE_H_
#define OUTBOXD_TESTS_INTEGRATION_FAULT_FIXTURE_H_

#include <libpq-fe.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/lsn.h"
#include "gtest/gtest.h"
#include "tests/harness/child_process.h"
#include "tests/harness/dev_broker.h"
#include "tests/harness/kafka_reader.h"
#include "tests/harness/outboxd_test_base.h"
#include "tests/harness/pg_cluster.h"

namespace outboxd::testing {

// Peak resident set size (VmHWM) of a live process, in KiB; -1 if unknown.
inline int64_t PeakRssKib(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      int64_t kib = -1;
      std::istringstream(line.substr(6)) >> kib;
      return kib;
    }
  }
  return -1;
}

// Writes `total` events in transactions of `batch` rows, one transaction
// every `interval`, from its own thread and connection. Aggregate ids cycle
// over `aggregates`; the payload carries the event's number.
class Inserter {
 public:
  Inserter(std::string conninfo, int total, int batch, absl::Duration interval,
           int aggregates = 1000, std::string aggregate_type = "load")
      : conninfo_(std::move(conninfo)),
        total_(total),
        batch_(batch),
        interval_(interval),
        aggregates_(aggregates),
        type_(std::move(aggregate_type)) {}
  ~Inserter() { Join(); }

  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }
  void Stop() { stop_ = true; }
  int written() const { return written_.load(); }
  const std::string& error() const { return error_; }

 private:
  void Run() {
    PGconn* conn = nullptr;
    absl::Time next = absl::Now();
    while (written_ < total_ && !stop_) {
      if (conn == nullptr || PQstatus(conn) != CONNECTION_OK) {
        if (conn != nullptr) PQfinish(conn);
        conn = PQconnectdb(conninfo_.c_str());
        if (PQstatus(conn) != CONNECTION_OK) {
          // The server may be restarting: try again shortly.
          absl::SleepFor(absl::Milliseconds(200));
          continue;
        }
      }
      int from = written_;
      int n = std::min(batch_, total_ - from);
      std::string sql = absl::StrCat(
          "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) "
          "SELECT '",
          type_, "', 'agg-' || (g % ", aggregates_,
          "), 'Evt', jsonb_build_object('n', g) FROM generate_series(", from,
          ", ", from + n - 1, ") g");
      PGresult* res = PQexec(conn, sql.c_str());
      bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
      PQclear(res);
      if (ok) {
        written_ += n;
      } else if (PQstatus(conn) == CONNECTION_OK) {
        error_ = PQerrorMessage(conn);
        break;
      }
      next += interval_;
      absl::Duration wait = next - absl::Now();
      if (wait > absl::ZeroDuration()) absl::SleepFor(wait);
    }
    if (conn != nullptr) PQfinish(conn);
  }

  std::string conninfo_;
  int total_;
  int batch_;
  absl::Duration interval_;
  int aggregates_;
  std::string type_;
  std::atomic<int> written_{0};
  std::atomic<bool> stop_{false};
  std::string error_;
  std::thread thread_;
};

class FaultTest : public OutboxdTestBase {
 protected:
  FaultTest()
      : OutboxdTestBase({.db_stem = "fdb",
                         .prefix_stem = "f",
                         .slot_stem = "fslot",
                         .default_args = {}}) {}

  void SetUp() override {
    OutboxdTestBase::SetUp();
    if (HasFatalFailure()) return;
    ASSERT_TRUE(
        Exec("CREATE TABLE orders (id bigserial PRIMARY KEY, note text)").ok());
  }

  // outboxd with this test's database, brokers, prefix, slot and DLQ.
  std::vector<std::string> BaseArgs() const {
    std::vector<std::string> argv = DefaultArgs();
    argv.insert(argv.end(),
                {"--dlq-topic=" + prefix_ + "dlq", "--status-interval=200ms",
                 "--reconnect-backoff-max=500ms", "--metrics-address="});
    return argv;
  }

  // Starts outboxd (BaseArgs() + extra; `argv` replaces BaseArgs when not
  // empty) and, if asked, waits until it streams. Returns its index.
  size_t StartOutboxd(std::vector<std::string> extra = {},
                      bool wait_streaming = true,
                      std::map<std::string, std::string> env = {},
                      std::vector<std::string> argv = {}) {
    return LaunchOutboxd(std::move(extra), wait_streaming, std::move(env),
                         argv.empty() ? BaseArgs() : std::move(argv));
  }

  // Every event id in the outbox table of database `db` (this test's when
  // empty).
  std::set<std::string> IdsOf(const std::string& db = "") {
    std::set<std::string> ids;
    for (const Row& row :
         QueryRows(db.empty() ? ConnInfo() : cluster_->ConnInfo(db),
                   "SELECT id::text FROM outbox")) {
      ids.insert(row[0].value_or(""));
    }
    return ids;
  }
  std::set<std::string> OutboxIds() { return IdsOf(); }

  // Lost and duplicated events of `records` against `expected` ids.
  struct Tally {
    size_t expected = 0;
    size_t received = 0;
    size_t lost = 0;
    size_t duplicates = 0;
  };
  static Tally CountIn(const std::set<std::string>& expected,
                       const std::vector<ConsumedRecord>& records) {
    std::map<std::string, int> seen;
    for (const auto& r : records) {
      auto id = r.Header("id");
      if (id.has_value()) ++seen[*id];
    }
    Tally t;
    t.expected = expected.size();
    t.received = records.size();
    for (const auto& id : expected) {
      auto it = seen.find(id);
      if (it == seen.end()) {
        ++t.lost;
      } else {
        t.duplicates += it->second - 1;
      }
    }
    return t;
  }
  // Against the outbox table of this test.
  Tally Count(const std::vector<ConsumedRecord>& records) {
    return CountIn(OutboxIds(), records);
  }

  // `kills` moments (seconds after a start) in [1 s, `period_s`], at least
  // `spacing_s` apart, in order; the same for the same `seed`.
  static std::vector<double> KillMoments(uint32_t seed, double period_s,
                                         int kills, double spacing_s) {
    std::mt19937 rng(seed);
    std::vector<double> moments;
    while (moments.size() < static_cast<size_t>(kills)) {
      double t = std::uniform_real_distribution<double>(1.0, period_s)(rng);
      bool spaced = true;
      for (double m : moments) spaced &= std::abs(m - t) >= spacing_s;
      if (spaced) moments.push_back(t);
    }
    std::sort(moments.begin(), moments.end());
    return moments;
  }

  // At each of `moments` after `start`: SIGKILLs the newest outboxd (which
  // must still be running) and, once it is gone, calls `restart`, which
  // starts the next one without waiting for it to stream (the walsender may
  // hold the slot for a moment).
  void KillAndRestartAt(absl::Time start, const std::vector<double>& moments,
                        const std::function<void()>& restart) {
    for (double m : moments) {
      absl::SleepFor(start + absl::Seconds(m) - absl::Now());
      ChildProcess& current = Outboxd(outboxd_.size() - 1);
      EXPECT_TRUE(current.Running()) << Log(outboxd_.size() - 1);
      current.Signal(SIGKILL);
      current.Wait(absl::Seconds(10));
      restart();
    }
  }

  // Records of `records` ((partition, offset) order) whose position
  // (outbox.lsn, outbox.index) is not above the one before it in its
  // partition; with `first_copies_only`, a record whose id was seen before
  // is passed over.
  static size_t OutOfOrderPositions(const std::vector<ConsumedRecord>& records,
                                    bool first_copies_only) {
    std::map<int32_t, std::pair<uint64_t, uint64_t>> last;
    std::set<std::string> seen;
    size_t out_of_order = 0;
    for (const auto& r : records) {
      if (first_copies_only &&
          !seen.insert(r.Header("id").value_or("")).second) {
        continue;
      }
      uint64_t lsn = 0, index = 0;
      if (!absl::SimpleAtoi(r.Header("outbox.lsn").value_or(""), &lsn) ||
          !absl::SimpleAtoi(r.Header("outbox.index").value_or(""), &index)) {
        ADD_FAILURE() << "no position at partition " << r.partition
                      << " offset " << r.offset;
        return out_of_order;
      }
      auto pos = std::make_pair(lsn, index);
      auto it = last.find(r.partition);
      if (it != last.end() && pos <= it->second) ++out_of_order;
      last[r.partition] = pos;
    }
    return out_of_order;
  }
};

}  // namespace outboxd::testing

#endif  // OUTBOXD_TESTS_INTEGRATION_FAULT_FIXTURE_H_
