// FaultTest: the fixture of the fault suite (ctest label `fault`): one
// throwaway PostgreSQL cluster and one dev broker per test binary, a fresh
// database, outbox install, slot and topic prefix per test, outboxd as child
// processes (each with its own log file), and an inserter thread that writes
// outbox events at a steady rate.
#ifndef OUTBOXD_TESTS_INTEGRATION_FAULT_FIXTURE_H_
#define OUTBOXD_TESTS_INTEGRATION_FAULT_FIXTURE_H_

#include <libpq-fe.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
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

  Lsn CurrentWalLsn() {
    auto lsn = Lsn::Parse(Query("SELECT pg_current_wal_lsn()"));
    EXPECT_TRUE(lsn.ok());
    return lsn.ok() ? *lsn : Lsn();
  }
  // Waits until the slot has confirmed at least `target`.
  bool WaitConfirmed(Lsn target, absl::Duration timeout) {
    absl::Time deadline = absl::Now() + timeout;
    while (ConfirmedFlush() < target) {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return true;
  }

  // Every event id in the outbox table.
  std::set<std::string> OutboxIds() {
    std::set<std::string> ids;
    PGconn* conn = PQconnectdb(ConnInfo().c_str());
    PGresult* res = PQexec(conn, "SELECT id::text FROM outbox");
    EXPECT_EQ(PQresultStatus(res), PGRES_TUPLES_OK) << PQerrorMessage(conn);
    for (int r = 0; r < PQntuples(res); ++r) ids.insert(PQgetvalue(res, r, 0));
    PQclear(res);
    PQfinish(conn);
    return ids;
  }

  // Lost and duplicated events of `records` against the outbox table.
  struct Tally {
    size_t expected = 0;
    size_t received = 0;
    size_t lost = 0;
    size_t duplicates = 0;
  };
  Tally Count(const std::vector<ConsumedRecord>& records) {
    std::set<std::string> expected = OutboxIds();
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
};

}  // namespace outboxd::testing

#endif  // OUTBOXD_TESTS_INTEGRATION_FAULT_FIXTURE_H_
