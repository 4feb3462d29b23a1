// Parts of the nemesis (nemesis_test.cc): its seed, the writer that commits
// events while faults happen, and the report of lost events.
#ifndef OUTBOXD_TESTS_INTEGRATION_NEMESIS_PARTS_H_
#define OUTBOXD_TESTS_INTEGRATION_NEMESIS_PARTS_H_

#include <libpq-fe.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/lsn.h"

namespace outboxd::testing {

inline uint64_t EnvU64(const char* name, uint64_t fallback) {
  const char* text = std::getenv(name);
  uint64_t v = 0;
  if (text != nullptr && absl::SimpleAtoi(text, &v)) return v;
  return fallback;
}

// The seed of this run: OUTBOXD_NEMESIS_SEED, else random; the same for
// both modes.
inline uint64_t Seed() {
  static const uint64_t seed =
      EnvU64("OUTBOXD_NEMESIS_SEED",
             (static_cast<uint64_t>(std::random_device()()) << 32) |
                 std::random_device()());
  return seed;
}

// Commits transactions of 1 to 5 events (outbox.emit) about every 10 ms on
// its own connection, reconnecting while the server is down. What it
// committed is read back from the table, not counted here: a commit whose
// answer was lost in a crash may or may not have happened.
class Writer {
 public:
  Writer(std::string conninfo, uint64_t seed)
      : conninfo_(std::move(conninfo)), rng_(seed) {}
  ~Writer() { Stop(); }

  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  int committed() const { return committed_; }
  int failed() const { return failed_; }

 private:
  void Run() {
    PGconn* conn = nullptr;
    absl::Time next = absl::Now();
    int tx = 0;
    while (!stop_) {
      if (conn == nullptr || PQstatus(conn) != CONNECTION_OK) {
        if (conn != nullptr) PQfinish(conn);
        conn = PQconnectdb(conninfo_.c_str());
        if (PQstatus(conn) != CONNECTION_OK) {
          absl::SleepFor(absl::Milliseconds(100));
          continue;
        }
      }
      const int n = std::uniform_int_distribution<int>(1, 5)(rng_);
      const int aggregate = std::uniform_int_distribution<int>(0, 199)(rng_);
      const std::string sql =
          absl::StrCat("SELECT count(outbox.emit('nem', 'agg-", aggregate,
                       "', 'Evt', jsonb_build_object('tx', ", tx,
                       ", 'i', g))) FROM generate_series(0, ", n - 1, ") g");
      PGresult* res = PQexec(conn, sql.c_str());
      if (PQresultStatus(res) == PGRES_TUPLES_OK) {
        committed_ += n;
      } else {
        ++failed_;  // a restart or crash: the next round reconnects
      }
      PQclear(res);
      ++tx;
      next += absl::Milliseconds(10);
      absl::Duration wait = next - absl::Now();
      if (wait > absl::ZeroDuration()) {
        absl::SleepFor(wait);
      } else if (wait < absl::Seconds(-1)) {
        next = absl::Now();  // after an outage: no burst to catch up
      }
    }
    if (conn != nullptr) PQfinish(conn);
  }

  std::string conninfo_;
  std::mt19937_64 rng_;
  std::atomic<bool> stop_{false};
  std::atomic<int> committed_{0};
  std::atomic<int> failed_{0};
  std::thread thread_;
};

// A row of the outbox table, the checker's ground truth.
struct TableRow {
  std::string id;
  int64_t commit_ms = 0;  // commit time, ms since the epoch
  std::string xmin;
  std::string tx;
  std::string index;
};

// Prints the lost rows in windows of commit time (a gap of 500 ms or more
// starts a new one), to set against the schedule's times, and the first 20
// with the delivered positions (commit time ms, outbox.lsn, sorted)
// committed just before and after each.
inline void PrintLost(
    std::vector<const TableRow*> lost_rows,
    const std::vector<std::pair<int64_t, uint64_t>>& positions,
    absl::Time start) {
  std::sort(lost_rows.begin(), lost_rows.end(),
            [](const TableRow* a, const TableRow* b) {
              return a->commit_ms < b->commit_ms;
            });
  const int64_t start_ms = absl::ToUnixMillis(start);
  // The lost events in windows of commit time (a gap of 500 ms or more
  // starts a new one), to set against the schedule's times.
  for (size_t i = 0; i < lost_rows.size();) {
    size_t j = i + 1;
    while (j < lost_rows.size() &&
           lost_rows[j]->commit_ms - lost_rows[j - 1]->commit_ms < 500) {
      ++j;
    }
    std::printf(
        "[ nemesis ] LOST window: %zu events committed %.3f s .. %.3f s "
        "(writer tx %s .. %s, xmin %s .. %s)\n",
        j - i, (lost_rows[i]->commit_ms - start_ms) / 1000.0,
        (lost_rows[j - 1]->commit_ms - start_ms) / 1000.0,
        lost_rows[i]->tx.c_str(), lost_rows[j - 1]->tx.c_str(),
        lost_rows[i]->xmin.c_str(), lost_rows[j - 1]->xmin.c_str());
    i = j;
  }
  for (size_t i = 0; i < lost_rows.size() && i < 20; ++i) {
    const TableRow& r = *lost_rows[i];
    // The delivered positions committed just before and after it.
    auto after = std::lower_bound(positions.begin(), positions.end(),
                                  std::make_pair(r.commit_ms, uint64_t{0}));
    std::string before_lsn = after == positions.begin()
                                 ? "none"
                                 : Lsn(std::prev(after)->second).ToString();
    std::string after_lsn =
        after == positions.end() ? "none" : Lsn(after->second).ToString();
    std::printf(
        "[ nemesis ] LOST id %s: writer tx %s event %s, xmin %s, committed "
        "at %.3f s; delivered neighbours by commit time: %s .. %s\n",
        r.id.c_str(), r.tx.c_str(), r.index.c_str(), r.xmin.c_str(),
        (r.commit_ms - start_ms) / 1000.0, before_lsn.c_str(),
        after_lsn.c_str());
  }
}

}  // namespace outboxd::testing

#endif  // OUTBOXD_TESTS_INTEGRATION_NEMESIS_PARTS_H_
