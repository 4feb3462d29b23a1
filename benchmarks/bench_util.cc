#include "benchmarks/bench_util.h"

#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
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

// --- PgConn ------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<PgConn>> PgConn::Connect(
    const std::string& conninfo) {
  PGconn* conn = PQconnectdb(conninfo.c_str());
  if (PQstatus(conn) != CONNECTION_OK) {
    std::string message = PQerrorMessage(conn);
    PQfinish(conn);
    return absl::UnavailableError(absl::StrCat("connect: ", message));
  }
  return std::unique_ptr<PgConn>(new PgConn(conn));
}

PgConn::~PgConn() { PQfinish(conn_); }

absl::Status PgConn::Exec(const std::string& sql) {
  PGresult* res = PQexec(conn_, sql.c_str());
  ExecStatusType st = PQresultStatus(res);
  absl::Status status;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    status = absl::InternalError(
        absl::StrCat(PQresultErrorMessage(res), " in: ", sql.substr(0, 200)));
  }
  PQclear(res);
  return status;
}

absl::StatusOr<std::string> PgConn::Query(const std::string& sql) {
  PGresult* res = PQexec(conn_, sql.c_str());
  ExecStatusType st = PQresultStatus(res);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    std::string message = PQresultErrorMessage(res);
    PQclear(res);
    return absl::InternalError(
        absl::StrCat(message, " in: ", sql.substr(0, 200)));
  }
  std::string value;
  if (PQntuples(res) > 0 && PQnfields(res) > 0) value = PQgetvalue(res, 0, 0);
  PQclear(res);
  return value;
}

absl::StatusOr<std::vector<std::unique_ptr<PgConn>>> ConnectAll(
    const std::string& conninfo, int connections) {
  std::vector<std::unique_ptr<PgConn>> conns;
  for (int c = 0; c < connections; ++c) {
    auto conn = PgConn::Connect(conninfo);
    if (!conn.ok()) return conn.status();
    conns.push_back(*std::move(conn));
  }
  return conns;
}

// --- /proc readings
// -------------------------------------------------------------

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

double Quantile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  // Nearest rank: the smallest value with at least q of the data at or
  // below it.
  size_t rank = static_cast<size_t>(std::ceil(q * sorted.size()));
  if (rank == 0) rank = 1;
  if (rank > sorted.size()) rank = sorted.size();
  return sorted[rank - 1];
}

// --- payloads
// ---------------------------------------------------------------------

std::string Uuid(uint64_t n) {
  return absl::StrFormat("%08x-%04x-4%03x-a%03x-%012x",
                         static_cast<uint32_t>(n * 2654435761u),
                         static_cast<uint32_t>((n >> 32) & 0xffff),
                         static_cast<uint32_t>(n & 0xfff),
                         static_cast<uint32_t>((n >> 12) & 0xfff),
                         static_cast<uint64_t>(n & 0xffffffffffffULL));
}

std::string EventPayload(int64_t bench_id) {
  if (bench_id < 0) return R"({"warmup": 1})";
  int64_t i = bench_id;
  return absl::StrCat(
      R"({"bid": )", i, R"(, "items": [{"qty": )", i % 9 + 1,
      R"(, "sku": "SKU-)", 100000 + i % 900000,
      R"(", "price": 1999}], "total": 1999, )",
      R"("created": "2024-07-11T10:15:30.123456+00:00", "currency": "EUR", )",
      R"("customer": {"id": )", 4200 + i % 10000, R"(, "email": "customer)",
      i % 10000, R"(@example.com"}})");
}

std::string OneEventTransactionSql(int64_t id) {
  return absl::StrCat(
      "BEGIN; INSERT INTO public.outbox (aggregatetype, aggregateid, type, "
      "payload, headers) VALUES ('order', 'order-",
      1000000 + id % 5000, "', 'OrderCreated', '", EventPayload(id),
      "', '{\"traceparent\": \"00-4bf92f3577b34da6a3ce929d0e0e4736-",
      absl::StrFormat("%016x", id), "-01\"}'); COMMIT");
}

int64_t ParseBenchId(const char* data, size_t size) {
  static constexpr char kKey[] = "\"bid\": ";
  static constexpr size_t kKeyLen = sizeof(kKey) - 1;
  if (data == nullptr) return -1;
  const char* end = data + size;
  const char* p = static_cast<const char*>(memmem(data, size, kKey, kKeyLen));
  if (p == nullptr) return -1;
  p += kKeyLen;
  int64_t v = 0;
  bool any = false;
  while (p < end && *p >= '0' && *p <= '9') {
    v = v * 10 + (*p - '0');
    ++p;
    any = true;
  }
  return any ? v : -1;
}

// --- Kafka
// -----------------------------------------------------------------------

namespace {

absl::Status SetConf(rd_kafka_conf_t* conf, const char* name,
                     const std::string& value) {
  char errstr[512];
  if (rd_kafka_conf_set(conf, name, value.c_str(), errstr, sizeof(errstr)) !=
      RD_KAFKA_CONF_OK) {
    return absl::InvalidArgumentError(
        absl::StrCat("librdkafka ", name, ": ", errstr));
  }
  return absl::OkStatus();
}

void QuietLog(const rd_kafka_t*, int level, const char* fac, const char* buf) {
  if (level <= 3) std::fprintf(stderr, "bench kafka %s: %s\n", fac, buf);
}

}  // namespace

absl::StatusOr<rd_kafka_t*> NewKafkaHandle(
    rd_kafka_type_t type,
    const std::vector<std::pair<const char*, std::string>>& settings) {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set_log_cb(conf, QuietLog);
  for (const auto& [name, value] : settings) {
    absl::Status s = SetConf(conf, name, value);
    if (!s.ok()) {
      rd_kafka_conf_destroy(conf);
      return s;
    }
  }
  char errstr[512];
  rd_kafka_t* rk = rd_kafka_new(type, conf, errstr, sizeof(errstr));
  if (rk == nullptr) {
    rd_kafka_conf_destroy(conf);
    return absl::InternalError(absl::StrCat("rd_kafka_new: ", errstr));
  }
  return rk;
}

absl::StatusOr<std::unique_ptr<ReceiptRecorder>> ReceiptRecorder::Start(
    const std::string& bootstrap, const std::string& topic, int partitions,
    size_t capacity, int fetch_wait_ms) {
  static std::atomic<int> count{0};
  auto handle = NewKafkaHandle(
      RD_KAFKA_CONSUMER,
      {
          {"bootstrap.servers", bootstrap},
          {"group.id", absl::StrCat("outboxd-bench-", getpid(), "-", count++)},
          {"enable.auto.commit", "false"},
          {"enable.auto.offset.store", "false"},
          {"auto.offset.reset", "earliest"},
          // The mock broker answers an empty fetch after fetch.wait.max.ms (it
          // does not wake up on new data), so this bounds the time a record
          // waits in the broker before this consumer asks for it.
          {"fetch.wait.max.ms", absl::StrCat(fetch_wait_ms)},
          {"fetch.error.backoff.ms", "1"},
          {"fetch.min.bytes", "1"},
          {"log.connection.close", "false"},
      });
  if (!handle.ok()) return handle.status();
  rd_kafka_t* rk = *handle;
  rd_kafka_poll_set_consumer(rk);
  rd_kafka_topic_partition_list_t* list =
      rd_kafka_topic_partition_list_new(partitions);
  for (int p = 0; p < partitions; ++p) {
    rd_kafka_topic_partition_list_add(list, topic.c_str(), p)->offset =
        RD_KAFKA_OFFSET_BEGINNING;
  }
  rd_kafka_resp_err_t err = rd_kafka_assign(rk, list);
  rd_kafka_topic_partition_list_destroy(list);
  if (err) {
    rd_kafka_destroy(rk);
    return absl::InternalError(
        absl::StrCat("rd_kafka_assign: ", rd_kafka_err2str(err)));
  }
  std::unique_ptr<ReceiptRecorder> r(new ReceiptRecorder());
  r->rk_ = rk;
  r->receipts_.assign(capacity, 0);
  r->thread_ = std::thread([p = r.get()] { p->Run(); });
  return r;
}

void ReceiptRecorder::Run() {
  while (!stop_.load(std::memory_order_relaxed)) {
    rd_kafka_message_t* m = rd_kafka_consumer_poll(rk_, 50);
    if (m == nullptr) continue;
    int64_t now = NowNs();
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      int64_t id = ParseBenchId(static_cast<const char*>(m->payload), m->len);
      if (id < 0) {
        warmups_.fetch_add(1);
      } else if (static_cast<size_t>(id) < receipts_.size()) {
        if (receipts_[id] == 0) {
          receipts_[id] = now;
          received_.fetch_add(1);
          last_receipt_ns_.store(now);
        } else {
          duplicates_.fetch_add(1);
        }
      }
    }
    rd_kafka_message_destroy(m);
  }
}

void ReceiptRecorder::Stop() {
  if (stop_.exchange(true)) return;
  if (thread_.joinable()) thread_.join();
}

ReceiptRecorder::~ReceiptRecorder() {
  Stop();
  rd_kafka_consumer_close(rk_);
  rd_kafka_destroy(rk_);
}

absl::StatusOr<std::unique_ptr<WatermarkProbe>> WatermarkProbe::Create(
    const std::string& bootstrap) {
  auto handle =
      NewKafkaHandle(RD_KAFKA_PRODUCER, {{"bootstrap.servers", bootstrap}});
  if (!handle.ok()) return handle.status();
  rd_kafka_t* rk = *handle;
  std::unique_ptr<WatermarkProbe> p(new WatermarkProbe());
  p->rk_ = rk;
  return p;
}

WatermarkProbe::~WatermarkProbe() { rd_kafka_destroy(rk_); }

absl::StatusOr<int64_t> WatermarkProbe::Total(const std::string& topic,
                                              int partitions) {
  int64_t total = 0;
  for (int p = 0; p < partitions; ++p) {
    int64_t low = 0, high = 0;
    rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(
        rk_, topic.c_str(), p, &low, &high, 5000);
    if (err) {
      return absl::UnavailableError(absl::StrCat(
          "watermarks of ", topic, "/", p, ": ", rd_kafka_err2str(err)));
    }
    total += high;
  }
  return total;
}

std::vector<std::pair<double, double>> CdfPoints(
    const std::vector<double>& sorted) {
  std::vector<std::pair<double, double>> points;
  if (sorted.empty()) return points;
  auto add = [&](double q) { points.emplace_back(Quantile(sorted, q), q); };
  for (double q = 0.0; q < 0.99; q += 0.005) add(std::max(q, 1e-6));
  for (double q = 0.99; q < 0.999; q += 0.0005) add(q);
  for (double q = 0.999; q < 1.0; q += 0.00005) add(q);
  add(1.0);
  return points;
}

void SleepUntilNs(int64_t t) {
  timespec ts;
  ts.tv_sec = t / 1000000000;
  ts.tv_nsec = t % 1000000000;
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) ==
         EINTR) {
  }
}

absl::StatusOr<LoadResult> GenerateLoad(
    const std::string& conninfo, int rate, int64_t events, int connections,
    const std::function<std::string(int64_t)>& event_sql) {
  LoadResult result;
  result.commit_ns.assign(events, 0);
  auto pool = ConnectAll(conninfo, connections);
  if (!pool.ok()) return pool.status();
  std::vector<std::unique_ptr<PgConn>>& conns = *pool;
  std::atomic<int64_t> errors{0};
  std::vector<int64_t> slips(connections, 0);
  const int64_t t0 = NowNs() + 20000000;  // 20 ms to get the threads going
  const double step_ns = 1e9 / rate;
  std::vector<std::thread> threads;
  for (int c = 0; c < connections; ++c) {
    threads.emplace_back([&, c] {
      PgConn& conn = *conns[c];
      for (int64_t i = c; i < events; i += connections) {
        int64_t start = t0 + static_cast<int64_t>(i * step_ns);
        int64_t now = NowNs();
        if (now < start) {
          SleepUntilNs(start);
        } else {
          slips[c] = std::max(slips[c], now - start);
        }
        absl::Status s = conn.Exec(event_sql(i));
        if (s.ok()) {
          result.commit_ns[i] = NowNs();
        } else {
          if (errors.fetch_add(1) < 3) std::cerr << s << "\n";
          (void)conn.Exec("ROLLBACK");
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  result.errors = errors.load();
  result.max_slip_ns = *std::max_element(slips.begin(), slips.end());
  return result;
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::filesystem::path p(path);
  std::error_code ec;
  if (p.has_parent_path())
    std::filesystem::create_directories(p.parent_path(), ec);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

bool WriteResults(const std::string& stem, const nlohmann::json& doc,
                  const std::string& md) {
  absl::Status s = WriteFile(stem + ".json", doc.dump(2) + "\n");
  if (s.ok()) s = WriteFile(stem + ".md", md);
  if (!s.ok()) {
    std::cerr << s << "\n";
    return false;
  }
  std::cout << md;
  return true;
}

double EventsPerSecond(int64_t events, int64_t ns) {
  return ns > 0 ? events * 1e9 / ns : 0;
}

RecordArrival WaitForRecords(WatermarkProbe& probe, const std::string& topic,
                             int partitions, int64_t target,
                             absl::Duration timeout,
                             const std::function<bool()>& alive) {
  RecordArrival arrival;
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    auto total = probe.Total(topic, partitions);
    const int64_t now = NowNs();
    if (total.ok()) {
      arrival.last_total = *total;
      if (arrival.first_ns == 0 && *total > 0) arrival.first_ns = now;
      if (*total >= target) {
        arrival.done_ns = now;
        break;
      }
    }
    if (!alive()) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return arrival;
}

absl::Status WaitForWarmup(const std::string& conninfo,
                           const std::string& aggregatetype,
                           const ReceiptRecorder& recorder,
                           absl::Duration timeout,
                           const std::function<bool()>& alive,
                           const std::string& on_failure) {
  auto conn = PgConn::Connect(conninfo);
  if (!conn.ok()) return conn.status();
  const absl::Time deadline = absl::Now() + timeout;
  while (recorder.warmups() == 0) {
    if (absl::Now() > deadline || !alive()) {
      return absl::DeadlineExceededError(on_failure);
    }
    absl::Status s = (*conn)->Exec(absl::StrCat(
        "INSERT INTO public.outbox (aggregatetype, aggregateid, type, "
        "payload) VALUES ('",
        aggregatetype, "', 'warmup', 'Warmup', '", EventPayload(-1), "')"));
    if (!s.ok()) return s;
    for (int i = 0; i < 20 && recorder.warmups() == 0; ++i) {
      absl::SleepFor(absl::Milliseconds(100));
    }
  }
  return absl::OkStatus();
}

void DrainReceipts(const ReceiptRecorder& recorder, int64_t committed,
                   absl::Duration stall, int64_t load_end_ns,
                   absl::Duration max_after_load) {
  const int64_t max_after_load_ns =
      max_after_load == absl::InfiniteDuration()
          ? INT64_MAX
          : absl::ToInt64Nanoseconds(max_after_load);
  int64_t last_count = -1;
  absl::Time last_progress = absl::Now();
  while (recorder.received() < committed) {
    const int64_t c = recorder.received();
    if (c != last_count) {
      last_count = c;
      last_progress = absl::Now();
    } else if (absl::Now() - last_progress > stall ||
               NowNs() - load_end_ns > max_after_load_ns) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

double LatencySample::committed_per_s() const {
  const double span_s = (last_commit_ns - first_commit_ns) / 1e9;
  return span_s > 0 ? committed / span_s : 0;
}

double LatencySample::delivered_per_s() const {
  if (delivered() == 0) return 0;
  const double span_s = (last_receipt_ns - first_commit_ns) / 1e9;
  return span_s > 0 ? delivered() / span_s : 0;
}

LatencySample MeasureLatencies(const LoadResult& load,
                               const ReceiptRecorder& recorder) {
  LatencySample sample;
  sample.sorted_ms.reserve(load.commit_ns.size());
  int64_t first_commit = INT64_MAX;
  for (size_t i = 0; i < load.commit_ns.size(); ++i) {
    const int64_t c = load.commit_ns[i];
    if (c == 0) continue;
    ++sample.committed;
    first_commit = std::min(first_commit, c);
    sample.last_commit_ns = std::max(sample.last_commit_ns, c);
    const int64_t r = recorder.receipt_ns(i);
    if (r == 0) continue;
    sample.last_receipt_ns = std::max(sample.last_receipt_ns, r);
    sample.sorted_ms.push_back((r - c) / 1e6);
  }
  sample.first_commit_ns = sample.committed > 0 ? first_commit : 0;
  std::sort(sample.sorted_ms.begin(), sample.sorted_ms.end());
  return sample;
}

nlohmann::json LatencyQuantiles(const std::vector<double>& sorted_ms) {
  return {{"p50", Quantile(sorted_ms, 0.50)},
          {"p90", Quantile(sorted_ms, 0.90)},
          {"p99", Quantile(sorted_ms, 0.99)},
          {"p999", Quantile(sorted_ms, 0.999)},
          {"max", sorted_ms.empty() ? 0 : sorted_ms.back()},
          {"min", sorted_ms.empty() ? 0 : sorted_ms.front()}};
}

std::string FormatMs(double ms) {
  if (ms >= 100) return absl::StrFormat("%.0f", ms);
  if (ms >= 10) return absl::StrFormat("%.1f", ms);
  return absl::StrFormat("%.2f", ms);
}

absl::Status WriteCdfPlot(const std::string& out, const CdfPlot& plot,
                          const std::vector<CdfLine>& lines) {
  const std::string stem = absl::StrCat(plot.name, "_cdf");
  std::string dat;
  // Panels in the order their rate first appears: (rate, [(index, label)]).
  std::vector<std::pair<int, std::vector<std::pair<int, std::string>>>> panels;
  int index = 0;
  for (const CdfLine& line : lines) {
    if (line.points.empty()) continue;
    absl::StrAppend(&dat, "# ", line.label, " ", line.rate,
                    "/s\n# latency_ms fraction\n");
    for (const auto& [ms, q] : line.points) {
      absl::StrAppend(&dat,
                      absl::StrFormat("%.4f %.6f\n", std::max(ms, 0.01), q));
    }
    absl::StrAppend(&dat, "\n\n");
    auto panel = std::find_if(panels.begin(), panels.end(), [&](const auto& p) {
      return p.first == line.rate;
    });
    if (panel == panels.end()) {
      panels.push_back({line.rate, {}});
      panel = panels.end() - 1;
    }
    panel->second.emplace_back(index++, line.label);
  }
  absl::Status s = WriteFile(absl::StrCat(out, "/", stem, ".dat"), dat);
  if (!s.ok()) return s;
  const int columns = std::max<int>(1, panels.size());
  std::string gp = absl::StrCat(
      "# Generated by ", plot.generator, ": gnuplot ", stem,
      ".gp (in this directory)\n"
      "set terminal pngcairo size ",
      columns * 560,
      ",480 font 'sans,10'\n"
      "set output '",
      stem, ".png'\nset multiplot layout 1,", columns, " title '", plot.title,
      "'\n"
      "set logscale x\nset grid\n"
      "set xlabel 'latency (ms, log)'\nset ylabel 'fraction of events'\n"
      "set yrange [0:1]\nset xrange [",
      plot.x_min_ms,
      ":*]\n"
      "set key left top opaque box\n");
  for (const auto& [rate, labels] : panels) {
    absl::StrAppend(&gp, "set title '", rate, " events/s'\nplot ");
    bool first = true;
    for (const auto& [i, label] : labels) {
      absl::StrAppend(&gp, first ? "" : ", \\\n     ", "'", stem,
                      ".dat' index ", i, " using 1:2 with lines lw 2 title '",
                      label, "'");
      first = false;
    }
    absl::StrAppend(&gp, "\n");
  }
  absl::StrAppend(&gp, "unset multiplot\n");
  return WriteFile(absl::StrCat(out, "/", stem, ".gp"), gp);
}

}  // namespace outboxd::bench
