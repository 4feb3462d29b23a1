// Shared pieces of the end-to-end benchmarks (latency_bench,
// throughput_bench): a small libpq connection, process CPU and memory
// readings from /proc, the machine description written next to every
// result, percentiles, outbox event payloads that carry a bench id, and an
// independent Kafka consumer that timestamps each record on receipt.
//
// Measures only; nothing here asserts a timing. Threading: PgConn and
// ReceiptRecorder are each used from one thread, except where noted.
#ifndef OUTBOXD_BENCHMARKS_BENCH_UTIL_H_
#define OUTBOXD_BENCHMARKS_BENCH_UTIL_H_

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace outboxd::bench {

// CLOCK_MONOTONIC in nanoseconds: commit and receipt times are taken in the
// same process, so one monotonic clock compares them.
int64_t NowNs();

// A plain libpq connection; aborts the benchmark on connection failure.
class PgConn {
 public:
  static absl::StatusOr<std::unique_ptr<PgConn>> Connect(
      const std::string& conninfo);
  ~PgConn();
  PgConn(const PgConn&) = delete;
  PgConn& operator=(const PgConn&) = delete;

  // Runs one simple-protocol query string (may hold several statements).
  absl::Status Exec(const std::string& sql);
  // First column of the first row ("" when no rows).
  absl::StatusOr<std::string> Query(const std::string& sql);
  PGconn* raw() { return conn_; }

 private:
  explicit PgConn(PGconn* conn) : conn_(conn) {}
  PGconn* conn_;
};

// CPU seconds (user + system) of one process; 0 if it is gone.
double ProcessCpuSeconds(pid_t pid);
// CPU seconds of a PostgreSQL cluster: the postmaster, its reaped children
// (cutime/cstime) and its live children.
double ClusterCpuSeconds(pid_t postmaster);
// The first child of this process whose command name starts with `prefix`
// (names are cut to 15 characters by the kernel); -1 when none.
pid_t ChildPidByName(const std::string& prefix);
// Parent pid of `pid` (from /proc/<pid>/stat); -1 when unknown.
pid_t ParentPid(pid_t pid);
// VmHWM (peak resident set) of a live process in bytes; 0 if unknown.
int64_t PeakRssBytes(pid_t pid);
// VmRSS of a live process in bytes; 0 if unknown.
int64_t RssBytes(pid_t pid);

// nproc, CPU model, memory, kernel, load average, date.
nlohmann::json MachineInfo();
double LoadAverage1();

// Value at quantile q (0..1) of an ascending vector; 0 when empty.
double Quantile(const std::vector<double>& sorted, double q);
// (latency, fraction) points of an ascending vector for a CDF plot, dense in
// the tail.
std::vector<std::pair<double, double>> CdfPoints(
    const std::vector<double>& sorted);

// The latency benchmarks' load: an open-loop schedule where event i starts
// at t0 + i / rate on connection i % connections, whatever happened to
// earlier events. `event_sql(i)` is one simple-query string that commits
// event i (e.g. "BEGIN; INSERT ...; COMMIT"), so that PQexec returns once it
// is committed; the commit time is taken right after.
struct LoadResult {
  std::vector<int64_t> commit_ns;  // per event; 0 = failed
  int64_t errors = 0;
  int64_t max_slip_ns = 0;  // how late the generator started an event
};
absl::StatusOr<LoadResult> GenerateLoad(
    const std::string& conninfo, int rate, int64_t events, int connections,
    const std::function<std::string(int64_t)>& event_sql);

// ~200 bytes of jsonb as PostgreSQL prints it (keys ordered by length, then
// bytes), carrying `"bid": <bench_id>`. A negative id makes a warm-up event
// without "bid".
std::string EventPayload(int64_t bench_id);
// Parses the bench id out of a payload; -1 when it has none.
int64_t ParseBenchId(const char* data, size_t size);
// A version-4-looking uuid derived from `n` (unique per n).
std::string Uuid(uint64_t n);

// An independent librdkafka consumer in its own thread: assigns every
// partition of `topic` from the beginning (no group join) and stores, per
// bench id in [0, capacity), the monotonic time it first received it.
class ReceiptRecorder {
 public:
  static absl::StatusOr<std::unique_ptr<ReceiptRecorder>> Start(
      const std::string& bootstrap, const std::string& topic, int partitions,
      size_t capacity, int fetch_wait_ms);
  ~ReceiptRecorder();  // stops the thread and closes the consumer

  // Thread-safe readers.
  int64_t received() const { return received_.load(); }
  int64_t warmups() const { return warmups_.load(); }
  int64_t duplicates() const { return duplicates_.load(); }
  int64_t last_receipt_ns() const { return last_receipt_ns_.load(); }
  // Receipt time of `id` (0 = not received). Read after Stop().
  int64_t receipt_ns(size_t id) const { return receipts_[id]; }
  void Stop();

 private:
  ReceiptRecorder() = default;
  void Run();
  rd_kafka_t* rk_ = nullptr;
  std::vector<int64_t> receipts_;
  std::atomic<int64_t> received_{0};
  std::atomic<int64_t> warmups_{0};
  std::atomic<int64_t> duplicates_{0};
  std::atomic<int64_t> last_receipt_ns_{0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Sum of the high watermarks of `topic`'s partitions (records the broker
// holds), through a short-lived producer handle kept by the caller.
class WatermarkProbe {
 public:
  static absl::StatusOr<std::unique_ptr<WatermarkProbe>> Create(
      const std::string& bootstrap);
  ~WatermarkProbe();
  absl::StatusOr<int64_t> Total(const std::string& topic, int partitions);

 private:
  WatermarkProbe() = default;
  rd_kafka_t* rk_ = nullptr;
};

// Writes `text` to `path`, creating parent directories.
absl::Status WriteFile(const std::string& path, const std::string& text);

}  // namespace outboxd::bench

#endif  // OUTBOXD_BENCHMARKS_BENCH_UTIL_H_
