#include "benchmarks/bench_proc.h"

#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace outboxd::bench {

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

void SleepUntilNs(int64_t t) {
  timespec ts;
  ts.tv_sec = t / 1000000000;
  ts.tv_nsec = t % 1000000000;
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) ==
         EINTR) {
  }
}

// --- /proc readings ---------------------------------------------------------

namespace {

// Fields of /proc/<pid>/stat after the command (which may contain spaces):
// index 0 is field 3 (state).
std::vector<std::string> StatFields(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  if (!std::getline(in, line)) return {};
  size_t close = line.rfind(')');
  if (close == std::string::npos) return {};
  return absl::StrSplit(line.substr(close + 2), ' ', absl::SkipEmpty());
}

double TicksToSeconds(const std::string& s) {
  double v = 0;
  if (!absl::SimpleAtod(s, &v)) return 0;
  return v / static_cast<double>(sysconf(_SC_CLK_TCK));
}

int64_t StatusKb(pid_t pid, const char* key) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, key)) {
      std::vector<std::string> parts =
          absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
      int64_t kb = 0;
      if (parts.size() >= 2 && absl::SimpleAtoi(parts[1], &kb)) return kb;
    }
  }
  return 0;
}

}  // namespace

double ProcessCpuSeconds(pid_t pid) {
  std::vector<std::string> f = StatFields(pid);
  // utime = field 14, stime = field 15 -> indexes 11, 12.
  if (f.size() < 13) return 0;
  return TicksToSeconds(f[11]) + TicksToSeconds(f[12]);
}

pid_t ParentPid(pid_t pid) {
  std::vector<std::string> f = StatFields(pid);
  int ppid = -1;
  if (f.size() < 2 || !absl::SimpleAtoi(f[1], &ppid)) return -1;
  return ppid;
}

double ClusterCpuSeconds(pid_t postmaster) {
  std::vector<std::string> f = StatFields(postmaster);
  if (f.size() < 15) return 0;
  // utime, stime, cutime, cstime = fields 14..17 -> indexes 11..14.
  double total = TicksToSeconds(f[11]) + TicksToSeconds(f[12]) +
                 TicksToSeconds(f[13]) + TicksToSeconds(f[14]);
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    int pid = 0;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &pid)) continue;
    if (ParentPid(pid) == postmaster) total += ProcessCpuSeconds(pid);
  }
  return total;
}

double ReapedChildrenCpuSeconds(pid_t pid) {
  std::vector<std::string> f = StatFields(pid);
  if (f.size() < 15) return 0;
  return TicksToSeconds(f[13]) + TicksToSeconds(f[14]);
}

double ThreadsCpuSeconds(pid_t pid, const std::string& prefix) {
  double total = 0;
  std::error_code ec;
  const std::string dir = absl::StrCat("/proc/", pid, "/task");
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    std::ifstream in(entry.path() / "comm");
    std::string comm;
    if (!std::getline(in, comm) || !absl::StartsWith(comm, prefix)) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    const size_t close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::vector<std::string> t =
        absl::StrSplit(line.substr(close + 2), ' ', absl::SkipEmpty());
    if (t.size() >= 13) total += TicksToSeconds(t[11]) + TicksToSeconds(t[12]);
  }
  return total;
}

pid_t ChildPidByName(const std::string& prefix) {
  const pid_t self = getpid();
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    int pid = 0;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &pid)) continue;
    if (ParentPid(pid) != self) continue;
    std::ifstream in(absl::StrCat("/proc/", pid, "/comm"));
    std::string comm;
    if (std::getline(in, comm) && absl::StartsWith(comm, prefix)) return pid;
  }
  return -1;
}

int64_t PeakRssBytes(pid_t pid) { return StatusKb(pid, "VmHWM:") * 1024; }
int64_t RssBytes(pid_t pid) { return StatusKb(pid, "VmRSS:") * 1024; }

namespace {
// voluntary + involuntary context switches from one status file.
std::pair<int64_t, int64_t> StatusSwitches(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::pair<int64_t, int64_t> v{0, 0};
  while (std::getline(in, line)) {
    int64_t* target = nullptr;
    if (absl::StartsWith(line, "voluntary_ctxt_switches:")) {
      target = &v.first;
    } else if (absl::StartsWith(line, "nonvoluntary_ctxt_switches:")) {
      target = &v.second;
    } else {
      continue;
    }
    const std::string rest = line.substr(line.find(':') + 1);
    (void)absl::SimpleAtoi(absl::StripAsciiWhitespace(rest), target);
  }
  return v;
}
}  // namespace

ContextSwitches ProcessContextSwitches(pid_t pid) {
  ContextSwitches c;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(
           absl::StrCat("/proc/", pid, "/task"), ec)) {
    auto [vol, invol] = StatusSwitches(entry.path().string() + "/status");
    c.voluntary += vol;
    c.involuntary += invol;
  }
  auto [vol, invol] =
      StatusSwitches(absl::StrCat("/proc/", pid, "/task/", pid, "/status"));
  c.main_thread = vol + invol;
  return c;
}

double ThreadCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

double LoadAverage1() {
  double load[3] = {0, 0, 0};
  if (getloadavg(load, 3) < 1) return -1;
  return load[0];
}

nlohmann::json MachineInfo() {
  nlohmann::json m;
  m["nproc"] = sysconf(_SC_NPROCESSORS_ONLN);
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (absl::StartsWith(line, "model name")) {
      m["cpu_model"] = std::string(
          absl::StripAsciiWhitespace(line.substr(line.find(':') + 1)));
      break;
    }
  }
  std::ifstream meminfo("/proc/meminfo");
  while (std::getline(meminfo, line)) {
    if (absl::StartsWith(line, "MemTotal:")) {
      std::vector<std::string> parts =
          absl::StrSplit(line, ' ', absl::SkipEmpty());
      int64_t kb = 0;
      if (parts.size() >= 2 && absl::SimpleAtoi(parts[1], &kb)) {
        m["memory_mb"] = kb / 1024;
      }
    }
  }
  utsname u;
  if (uname(&u) == 0) m["kernel"] = absl::StrCat(u.sysname, " ", u.release);
  double load[3] = {0, 0, 0};
  getloadavg(load, 3);
  m["load_average"] = {load[0], load[1], load[2]};
  m["date_utc"] =
      absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone());
  return m;
}

std::string LoadAverages() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return absl::StrCat(a, " ", b, " ", c);
}

ProcessTotals Totals(const std::vector<pid_t>& pids) {
  ProcessTotals t;
  for (pid_t pid : pids) {
    t.cpu_s += ProcessCpuSeconds(pid);
    t.rss += RssBytes(pid);
    t.hwm += PeakRssBytes(pid);
    t.switches += ProcessContextSwitches(pid).total();
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(
             absl::StrCat("/proc/", pid, "/task"), ec)) {
      ++t.threads;
      std::ifstream in(entry.path().string() + "/comm");
      std::string comm;
      if (std::getline(in, comm) && absl::StartsWith(comm, "rdk:")) {
        ++t.rdkafka_threads;
      }
    }
  }
  return t;
}

RssSampler::RssSampler(std::vector<pid_t> pids)
    : pids_(std::move(pids)), thread_([this] { Run(); }) {}

RssSampler::~RssSampler() { Stop(); }

void RssSampler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void RssSampler::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    int64_t total = 0;
    for (pid_t pid : pids_) total += RssBytes(pid);
    max_ = std::max(max_, total);
    sum_ += total;
    ++samples_;
    cv_.wait_for(lock, std::chrono::milliseconds(100));
  }
}

double Mb(int64_t bytes) { return bytes / 1048576.0; }

}  // namespace outboxd::bench
