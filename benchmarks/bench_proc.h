// Readings of this machine and of its processes for the end-to-end
// benchmarks: the monotonic clock that commit and receipt times share, CPU
// seconds, resident memory and context switches from /proc (of one process,
// of a PostgreSQL cluster, or summed over a fleet of processes, RSS sampled
// on a thread), and the machine description written next to every result.
//
// Measures only. Threading: every function may be called from any thread.
#ifndef OUTBOXD_BENCHMARKS_BENCH_PROC_H_
#define OUTBOXD_BENCHMARKS_BENCH_PROC_H_

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "nlohmann/json.hpp"

namespace outboxd::bench {

// CLOCK_MONOTONIC in nanoseconds: commit and receipt times are taken in the
// same process, so one monotonic clock compares them.
int64_t NowNs();
// Sleeps until NowNs() reaches `t`.
void SleepUntilNs(int64_t t);

// CPU seconds (user + system) of one process; 0 if it is gone.
double ProcessCpuSeconds(pid_t pid);
// CPU seconds of a PostgreSQL cluster: the postmaster, its reaped children
// (cutime/cstime) and its live children.
double ClusterCpuSeconds(pid_t postmaster);
// CPU seconds of the children a process reaped (cutime + cstime): for a
// postmaster, the backends that exited (a connection per task, autovacuum
// workers).
double ReapedChildrenCpuSeconds(pid_t pid);
// CPU seconds summed over the live threads of `pid` whose name starts with
// `prefix` (/proc/<pid>/task/*/comm).
double ThreadsCpuSeconds(pid_t pid, const std::string& prefix);
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
// The three load averages of /proc/loadavg, as "1.02 0.87 0.55".
std::string LoadAverages();

// Readings of several processes (one setup's outboxd processes), summed.
struct ProcessTotals {
  double cpu_s = 0;
  int64_t rss = 0;  // VmRSS
  int64_t hwm = 0;  // VmHWM
  int threads = 0;
  int rdkafka_threads = 0;  // comm "rdk:..."
  int64_t switches = 0;     // context switches, every thread
};
ProcessTotals Totals(const std::vector<pid_t>& pids);

// Sums VmRSS over the processes every 100 ms on a thread of its own.
class RssSampler {
 public:
  explicit RssSampler(std::vector<pid_t> pids);
  ~RssSampler();
  RssSampler(const RssSampler&) = delete;
  RssSampler& operator=(const RssSampler&) = delete;
  void Stop();
  // Read after Stop().
  int64_t max() const { return max_; }
  int64_t mean() const { return samples_ > 0 ? sum_ / samples_ : 0; }

 private:
  void Run();
  std::vector<pid_t> pids_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  int64_t max_ = 0;
  int64_t sum_ = 0;
  int64_t samples_ = 0;
  std::thread thread_;
};

// Bytes in MiB, as the results give memory.
double Mb(int64_t bytes);

}  // namespace outboxd::bench

#endif  // OUTBOXD_BENCHMARKS_BENCH_PROC_H_
