// Shared pieces of the end-to-end benchmarks (latency_bench,
// throughput_bench, vs_debezium_bench): a small libpq connection, process
// CPU and memory readings from /proc, the machine description written next
// to every result, percentiles, outbox event payloads that carry a bench id,
// an independent Kafka consumer that timestamps each record on receipt, and
// the measurement loops built on them (warm-up, drain, latencies, CDF plot,
// records counted through the high watermarks).
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
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace outboxd::bench {

// CLOCK_MONOTONIC in nanoseconds: commit and receipt times are taken in the
// same process, so one monotonic clock compares them.
int64_t NowNs();
// Sleeps until NowNs() reaches `t`.
void SleepUntilNs(int64_t t);

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

// `connections` connections to `conninfo`, for a pool of loader threads.
absl::StatusOr<std::vector<std::unique_ptr<PgConn>>> ConnectAll(
    const std::string& conninfo, int connections);

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
// Context switches of a process, from /proc/<pid>/task/*/status (every
// live thread; /proc/<pid>/status alone counts the main thread only).
struct ContextSwitches {
  int64_t voluntary = 0;
  int64_t involuntary = 0;
  int64_t main_thread = 0;  // voluntary + involuntary of the main thread
  int64_t total() const { return voluntary + involuntary; }
};
ContextSwitches ProcessContextSwitches(pid_t pid);
// CPU seconds of the calling thread (CLOCK_THREAD_CPUTIME_ID).
double ThreadCpuSeconds();

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
// One transaction of one outbox insert (aggregate "order", one of 5,000
// ids, EventPayload(bench_id), a traceparent header): what a service writes.
std::string OneEventTransactionSql(int64_t bench_id);
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

// A librdkafka handle of `type` with `settings` (name, value), logging
// errors only to stderr.
absl::StatusOr<rd_kafka_t*> NewKafkaHandle(
    rd_kafka_type_t type,
    const std::vector<std::pair<const char*, std::string>>& settings);

// Writes `text` to `path`, creating parent directories.
absl::Status WriteFile(const std::string& path, const std::string& text);

// A benchmark's results: `stem`.json (`doc`) and `stem`.md (`md`), then
// `md` on stdout. False, the cause on stderr, when a file cannot be written.
bool WriteResults(const std::string& stem, const nlohmann::json& doc,
                  const std::string& md);

// `events` per second over `ns` nanoseconds; 0 for an empty span.
double EventsPerSecond(int64_t events, int64_t ns);

// --- Throughput: records counted at the broker ---------------------------

struct RecordArrival {
  int64_t first_ns = 0;    // when a first record was seen (0 = never)
  int64_t done_ns = 0;     // when all `target` were seen (0 = not all)
  int64_t last_total = 0;  // the last sum read
};
// Probes the sum of `topic`'s high watermarks every 20 ms until it reaches
// `target`, `timeout` passes, or `alive()` turns false (the publisher
// exited). Times are NowNs().
RecordArrival WaitForRecords(WatermarkProbe& probe, const std::string& topic,
                             int partitions, int64_t target,
                             absl::Duration timeout,
                             const std::function<bool()>& alive);

// --- Latency: one fixed-rate load against a publisher that streams -------

// Commits a warm-up event (EventPayload(-1), of `aggregatetype`) every 2 s
// until `recorder` has received one, so that topic metadata, connections and
// the publisher's first batch are out of the measurement. On `timeout`, or
// as soon as `alive()` turns false: kDeadlineExceeded with `on_failure`.
absl::Status WaitForWarmup(const std::string& conninfo,
                           const std::string& aggregatetype,
                           const ReceiptRecorder& recorder,
                           absl::Duration timeout,
                           const std::function<bool()>& alive,
                           const std::string& on_failure);

// After the load: waits until `recorder` has received `committed` bench
// events, or none arrived for `stall`, or `max_after_load` has passed since
// `load_end_ns` (a backlog that long means the publisher did not keep up).
void DrainReceipts(const ReceiptRecorder& recorder, int64_t committed,
                   absl::Duration stall, int64_t load_end_ns,
                   absl::Duration max_after_load = absl::InfiniteDuration());

// Commit-to-receipt latencies of one load. Read after recorder.Stop().
struct LatencySample {
  std::vector<double> sorted_ms;  // one per delivered event, ascending
  int64_t committed = 0;          // events whose COMMIT succeeded
  int64_t first_commit_ns = 0;    // 0 when none committed
  int64_t last_commit_ns = 0;
  int64_t last_receipt_ns = 0;  // 0 when none delivered
  int64_t delivered() const { return static_cast<int64_t>(sorted_ms.size()); }
  double max_ms() const { return sorted_ms.empty() ? 0 : sorted_ms.back(); }
  // Over the span from the first to the last commit.
  double committed_per_s() const;
  // Over the span from the first commit to the last receipt.
  double delivered_per_s() const;
};
LatencySample MeasureLatencies(const LoadResult& load,
                               const ReceiptRecorder& recorder);
// {"p50", "p90", "p99", "p999", "max", "min"} of an ascending vector.
nlohmann::json LatencyQuantiles(const std::vector<double>& sorted_ms);
// Milliseconds with two, one or no decimals, for result tables.
std::string FormatMs(double ms);

// A latency CDF for gnuplot: <out>/<name>_cdf.dat holds one data block per
// line, <out>/<name>_cdf.gp draws one panel per rate (in the order the
// rates first appear) with one line per label, log latency axis.
struct CdfLine {
  std::string label;                              // mode or publisher
  int rate = 0;                                   // offered events/s
  std::vector<std::pair<double, double>> points;  // CdfPoints()
};
struct CdfPlot {
  std::string name;       // file stem, e.g. "latency"
  std::string generator;  // the benchmark, named in the script's header
  std::string title;      // above the panels
  double x_min_ms = 0.1;  // left end of the latency axis
};
absl::Status WriteCdfPlot(const std::string& out, const CdfPlot& plot,
                          const std::vector<CdfLine>& lines);

}  // namespace outboxd::bench

#endif  // OUTBOXD_BENCHMARKS_BENCH_UTIL_H_
