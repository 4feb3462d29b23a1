// The first event after a start, and after a standby takeover
// (benchmarks/README.md, benchmark 6).
//
// One throwaway cluster, one broker (the dev broker, or Apache Kafka with
// --broker=apache), one topic, and an independent
// consumer (ReceiptRecorder: assigned to every partition from the start,
// fetch.wait.max.ms=1) that runs the whole time and timestamps each record
// on receipt, in this process's monotonic clock. Phases, each repeated
// `--reps` times:
//
//   floor     the instrument: a warm librdkafka producer in this process
//             (outboxd's settings, linger.ms=0) produces one record; time
//             to its receipt. And a cold one: from rd_kafka_new to the
//             receipt of the record produced right after it (what a fresh
//             producer costs before its first record: connection, metadata,
//             idempotent producer id).
//   start     a slot with nothing to read but one event committed while no
//             outboxd runs; time from just before outboxd's fork/exec to the
//             receipt of that record.
//   steady    after each start's first record, outboxd idle: `--steady`
//             single events 0.3-1.3 s apart; commit (PQexec returned) to
//             receipt.
//   start-live  an empty slot, outboxd started, one event committed as soon
//             as the log says "streaming from slot"; commit to receipt.
//   takeover  an active outboxd streaming (one event through it), and a
//             standby on the same slot waiting ("is active in another
//             process" in its log) for 0.5-0.75 s (random phase); SIGKILL
//             to the active one and one event committed right after; time
//             from the kill to the receipt. Once with the standby's default
//             flags and once with --standby-poll-interval=5ms
//             (how often a standby checks the slot; README "Standby").
//
// Reports min/median/max per phase. Writes <out>/first-event.json and
// first-event.md (first-event-apache.* with --broker=apache: a single-node
// Apache Kafka instead of the dev broker, for every phase, the floor
// included). Measures only; asserts nothing.
//
// This file: the flags, the phases and main(); where a start's time goes is
// read from outboxd's log by first_event_milestones.
//
//   first_event_bench --reps=7 --phases=floor,start,steady,start-live,takeover
//   first_event_bench --reps=1 --broker=apache
#include <algorithm>
#include <csignal>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "benchmarks/bench_cli.h"
#include "benchmarks/bench_env.h"
#include "benchmarks/bench_kafka.h"
#include "benchmarks/bench_pg.h"
#include "benchmarks/bench_proc.h"
#include "benchmarks/bench_results.h"
#include "benchmarks/first_event_milestones.h"
#include "nlohmann/json.hpp"
#include "tests/harness/child_process.h"

ABSL_FLAG(int, reps, 7, "repetitions of each phase");
ABSL_FLAG(int, steady, 5, "idle single events after each start's first one");
ABSL_FLAG(std::vector<std::string>, phases,
          std::vector<std::string>({"floor", "start", "steady", "start-live",
                                    "takeover"}),
          "floor, start, steady (needs start), start-live, takeover");
ABSL_FLAG(bool, routed, false,
          "route by aggregate type (outboxd's default: outbox.event.order) "
          "instead of --topic=bench.first, so that outboxd looks the topic up "
          "when its first event arrives");
ABSL_FLAG(int, fetch_wait_ms, 1, "consumer fetch.wait.max.ms");
ABSL_FLAG(std::string, out, "benchmarks/results", "output directory");
ABSL_FLAG(std::string, outboxd, "", "outboxd binary (default: the build's)");
ABSL_FLAG(std::vector<std::string>, outboxd_args, {},
          "extra outboxd flags, comma-separated (e.g. --log-level=debug)");
ABSL_FLAG(std::string, kafka_debug, "",
          "librdkafka debug contexts for outboxd (--kafka-property=debug=...), "
          "e.g. broker,topic,metadata,msg (commas are not split here)");
ABSL_FLAG(std::string, work_dir, "/tmp/outboxd-bench-first-event",
          "outboxd logs");

namespace outboxd::bench::first_event {
namespace {

// The topic every record goes to (and the consumer reads).
std::string Topic() {
  return absl::GetFlag(FLAGS_routed) ? "outbox.event.order" : "bench.first";
}
constexpr char kSlot[] = "bench_first";
constexpr size_t kCapacity = 100000;
constexpr absl::Duration kTimeout = absl::Seconds(30);

class Rig {
 public:
  Rig(BenchEnv& env, ReceiptRecorder& recorder, PgConn& conn)
      : env_(env), recorder_(recorder), conn_(conn) {}

  // A new bench id; the record carrying it is the `expected()`th received.
  int64_t NextId() { return next_id_++; }
  int64_t expected() const { return next_id_; }

  // Commits one event with bench id `id`; the time right after the commit.
  absl::StatusOr<int64_t> Insert(int64_t id) {
    absl::Status s = conn_.Exec(absl::StrCat(
        "INSERT INTO public.outbox (aggregatetype, aggregateid, type, "
        "payload) VALUES ('order', 'order-",
        id, "', 'OrderCreated', '", EventPayload(id), "')"));
    if (!s.ok()) return s;
    return NowNs();
  }

  // Waits until every id handed out so far was received; the receipt time
  // of the last one (ids are received in the order they were committed,
  // one at a time), 0 on timeout.
  int64_t WaitReceived(absl::Duration timeout = kTimeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (recorder_.received() < expected()) {
      if (absl::Now() > deadline) return 0;
      absl::SleepFor(absl::Microseconds(200));
    }
    return recorder_.last_receipt_ns();
  }

  // Commits one event and waits for it: commit to receipt in ms, or
  // kDeadlineExceeded "<phase>: no record".
  absl::StatusOr<double> CommitToReceiptMs(const std::string& phase) {
    auto committed = Insert(NextId());
    if (!committed.ok()) return committed.status();
    const int64_t received = WaitReceived();
    if (received == 0) {
      return absl::DeadlineExceededError(absl::StrCat(phase, ": no record"));
    }
    return (received - *committed) / 1e6;
  }

  BenchEnv& env() { return env_; }

 private:
  BenchEnv& env_;
  ReceiptRecorder& recorder_;
  PgConn& conn_;
  int64_t next_id_ = 0;
};

std::vector<std::string> OutboxdArgs(const std::vector<std::string>& extra) {
  std::vector<std::string> args = {absl::StrCat("--slot=", kSlot),
                                   "--metrics-address=127.0.0.1:0"};
  if (!absl::GetFlag(FLAGS_routed)) {
    args.push_back(absl::StrCat("--topic=", Topic()));
  }
  bool log_level = false;
  for (const std::string& a : absl::GetFlag(FLAGS_outboxd_args)) {
    log_level |= absl::StartsWith(a, "--log-level");
    args.push_back(a);
  }
  if (!log_level) args.push_back("--log-level=info");
  if (!absl::GetFlag(FLAGS_kafka_debug).empty()) {
    args.push_back(absl::StrCat("--kafka-property=debug=",
                                absl::GetFlag(FLAGS_kafka_debug)));
  }
  for (const std::string& a : extra) args.push_back(a);
  return args;
}

bool WaitForLog(const std::string& path, const std::string& needle,
                absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (testing::ReadFile(path).find(needle) != std::string::npos) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return false;
}

struct Series {
  std::string phase;
  std::string what;
  std::vector<double> ms;
};

nlohmann::json Summary(const Series& s) {
  std::vector<double> sorted = s.ms;
  std::sort(sorted.begin(), sorted.end());
  return {{"phase", s.phase},
          {"what", s.what},
          {"n", sorted.size()},
          {"min_ms", sorted.empty() ? 0 : sorted.front()},
          {"median_ms", Quantile(sorted, 0.5)},
          {"max_ms", sorted.empty() ? 0 : sorted.back()},
          {"samples_ms", s.ms}};
}

// --- floor -----------------------------------------------------------------

absl::StatusOr<rd_kafka_t*> NewProducer(const std::string& bootstrap) {
  return NewKafkaHandle(RD_KAFKA_PRODUCER, {{"bootstrap.servers", bootstrap},
                                            {"enable.idempotence", "true"},
                                            {"acks", "all"},
                                            {"linger.ms", "0"}});
}

absl::Status Produce(rd_kafka_t* rk, int64_t id) {
  const std::string topic = Topic();
  const std::string value = EventPayload(id);
  const std::string key = absl::StrCat("order-", id);
  rd_kafka_resp_err_t err = rd_kafka_producev(
      rk, RD_KAFKA_V_TOPIC(topic.c_str()),
      RD_KAFKA_V_KEY(const_cast<char*>(key.data()), key.size()),
      RD_KAFKA_V_VALUE(const_cast<char*>(value.data()), value.size()),
      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
  if (err) {
    return absl::InternalError(
        absl::StrCat("produce: ", rd_kafka_err2str(err)));
  }
  return absl::OkStatus();
}

absl::Status RunFloor(Rig& rig, int reps, std::vector<Series>& out) {
  Series warm{"floor", "warm producer: produce -> consumer receipt", {}};
  Series cold{"floor",
              "cold producer: rd_kafka_new -> receipt of its first record",
              {}};
  auto rk = NewProducer(rig.env().bootstrap());
  if (!rk.ok()) return rk.status();
  absl::Status s = Produce(*rk, rig.NextId());  // warms it up
  rd_kafka_flush(*rk, 10000);
  if (s.ok() && rig.WaitReceived() == 0) {
    s = absl::DeadlineExceededError("floor: warm-up record not received");
  }
  for (int i = 0; s.ok() && i < reps; ++i) {
    absl::SleepFor(absl::Milliseconds(200));
    const int64_t t0 = NowNs();
    s = Produce(*rk, rig.NextId());
    rd_kafka_poll(*rk, 0);
    const int64_t t1 = rig.WaitReceived();
    if (s.ok() && t1 == 0) s = absl::DeadlineExceededError("floor: timeout");
    if (s.ok()) warm.ms.push_back((t1 - t0) / 1e6);
    rd_kafka_flush(*rk, 10000);
  }
  rd_kafka_destroy(*rk);
  for (int i = 0; s.ok() && i < reps; ++i) {
    const int64_t t0 = NowNs();
    auto fresh = NewProducer(rig.env().bootstrap());
    if (!fresh.ok()) return fresh.status();
    s = Produce(*fresh, rig.NextId());
    const int64_t t1 = rig.WaitReceived();
    if (s.ok() && t1 == 0) s = absl::DeadlineExceededError("floor: timeout");
    if (s.ok()) cold.ms.push_back((t1 - t0) / 1e6);
    rd_kafka_flush(*fresh, 10000);
    rd_kafka_destroy(*fresh);
  }
  out.push_back(warm);
  out.push_back(cold);
  return s;
}

// --- start and steady -------------------------------------------------------

absl::Status RunStart(Rig& rig, int reps, int steady, bool with_steady,
                      std::vector<Series>& out,
                      std::vector<std::vector<double>>& milestones) {
  Series start{"start",
               "outboxd fork/exec -> first record received (one event "
               "committed before the start)",
               {}};
  Series idle{
      "steady", "outboxd running and idle: commit -> record received", {}};
  std::mt19937 rng(12);
  std::uniform_int_distribution<int> gap_ms(300, 1300);
  for (int i = 0; i < reps; ++i) {
    auto committed = rig.Insert(rig.NextId());
    if (!committed.ok()) return committed.status();
    absl::SleepFor(absl::Milliseconds(100));
    const std::string log_name = absl::StrCat("outboxd-start-", i);
    const absl::Time wall0 = absl::Now();  // to read beside outboxd's log
    const int64_t t0 = NowNs();
    auto outboxd = rig.env().StartOutboxd(OutboxdArgs({}), log_name);
    if (!outboxd.ok()) return outboxd.status();
    const int64_t t1 = rig.WaitReceived();
    if (t1 == 0) {
      return absl::DeadlineExceededError(absl::StrCat("start: no record (see ",
                                                      rig.env().work_dir(), "/",
                                                      log_name, ".log)"));
    }
    start.ms.push_back((t1 - t0) / 1e6);
    std::cerr << absl::StreamFormat(
        "start %d: %.1f ms (exec at %s UTC)\n", i, start.ms.back(),
        absl::FormatTime("%H:%M:%E3S", wall0, absl::UTCTimeZone()));
    for (int k = 0; with_steady && k < steady; ++k) {
      absl::SleepFor(absl::Milliseconds(gap_ms(rng)));
      absl::StatusOr<double> ms = rig.CommitToReceiptMs("steady");
      if (!ms.ok()) return ms.status();
      idle.ms.push_back(*ms);
    }
    auto code = rig.env().StopOutboxd(**outboxd);
    if (!code.ok()) return code.status();
    std::vector<double> at = MilestoneOffsets(
        absl::StrCat(rig.env().work_dir(), "/", log_name, ".log"), wall0);
    at.push_back(start.ms.back());
    milestones.push_back(at);
  }
  out.push_back(start);
  if (with_steady) out.push_back(idle);
  return absl::OkStatus();
}

// The first event committed right after outboxd says it streams, with an
// empty slot: what the loop and the producer do with an event that arrives
// live just after a start.
absl::Status RunStartLive(Rig& rig, int reps, std::vector<Series>& out) {
  Series live{"start-live",
              "outboxd started on an empty slot; one event committed as "
              "soon as its log says \"streaming from slot\": commit -> "
              "record received",
              {}};
  for (int i = 0; i < reps; ++i) {
    const std::string log_name = absl::StrCat("outboxd-start-live-", i);
    auto outboxd = rig.env().StartOutboxd(OutboxdArgs({}), log_name);
    if (!outboxd.ok()) return outboxd.status();
    if (!WaitForLog(absl::StrCat(rig.env().work_dir(), "/", log_name, ".log"),
                    "streaming from slot", kTimeout)) {
      return absl::DeadlineExceededError(
          absl::StrCat("start-live: outboxd does not stream (see ",
                       rig.env().work_dir(), "/", log_name, ".log)"));
    }
    absl::StatusOr<double> ms = rig.CommitToReceiptMs("start-live");
    if (!ms.ok()) return ms.status();
    live.ms.push_back(*ms);
    auto code = rig.env().StopOutboxd(**outboxd);
    if (!code.ok()) return code.status();
  }
  out.push_back(live);
  return absl::OkStatus();
}

// --- takeover --------------------------------------------------------------

// A standby configuration (README "Standby").
struct Standby {
  std::string id;    // in the log file names
  std::string name;  // in the results
  std::vector<std::string> flags;
};

absl::Status RunTakeover(Rig& rig, int reps, const Standby& standby_config,
                         std::vector<Series>& out) {
  const std::string& name = standby_config.name;
  const std::vector<std::string>& standby_flags = standby_config.flags;
  // The kill comes at a random point after the standby started waiting, as
  // for a standby that has been waiting for a while.
  Series takeover{"takeover",
                  absl::StrCat("SIGKILL to the active outboxd -> the event "
                               "committed right after it received, standby ",
                               name),
                  {}};
  std::mt19937 rng(34);
  std::uniform_int_distribution<int64_t> wait_ms(0, 250);
  for (int i = 0; i < reps; ++i) {
    const std::string active_log =
        absl::StrCat("outboxd-active-", standby_config.id, "-", i);
    const std::string standby_log =
        absl::StrCat("outboxd-standby-", standby_config.id, "-", i);
    auto active = rig.env().StartOutboxd(OutboxdArgs({}), active_log);
    if (!active.ok()) return active.status();
    auto c = rig.Insert(rig.NextId());
    if (!c.ok()) return c.status();
    if (rig.WaitReceived() == 0) {
      return absl::DeadlineExceededError(
          absl::StrCat("takeover: the active outboxd published nothing (see ",
                       rig.env().work_dir(), "/", active_log, ".log)"));
    }
    auto standby =
        rig.env().StartOutboxd(OutboxdArgs(standby_flags), standby_log);
    if (!standby.ok()) return standby.status();
    if (!WaitForLog(
            absl::StrCat(rig.env().work_dir(), "/", standby_log, ".log"),
            "is active in another process", kTimeout)) {
      return absl::DeadlineExceededError(
          absl::StrCat("takeover: the standby is not waiting (see ",
                       rig.env().work_dir(), "/", standby_log, ".log)"));
    }
    absl::SleepFor(absl::Milliseconds(500 + wait_ms(rng)));
    const int64_t t0 = NowNs();
    (*active)->Signal(SIGKILL);
    c = rig.Insert(rig.NextId());
    if (!c.ok()) return c.status();
    const int64_t t1 = rig.WaitReceived();
    if (t1 == 0) {
      return absl::DeadlineExceededError(
          absl::StrCat("takeover: no record from the standby (see ",
                       rig.env().work_dir(), "/", standby_log, ".log)"));
    }
    takeover.ms.push_back((t1 - t0) / 1e6);
    std::cerr << absl::StreamFormat("takeover %s %d: %.1f ms\n", name, i,
                                    takeover.ms.back());
    (*active)->Wait(absl::Seconds(10));
    auto code = rig.env().StopOutboxd(**standby);
    if (!code.ok()) return code.status();
  }
  out.push_back(takeover);
  return absl::OkStatus();
}

std::string Markdown(const nlohmann::json& series) {
  std::string md =
      "| phase | what | n | min ms | median ms | max ms |\n"
      "|---|---|---:|---:|---:|---:|\n";
  for (const nlohmann::json& s : series) {
    absl::StrAppend(&md, "| ", s["phase"].get<std::string>(), " | ",
                    s["what"].get<std::string>(), " | ", s["n"].get<int>(),
                    " | ", FormatMs(s["min_ms"].get<double>()), " | ",
                    FormatMs(s["median_ms"].get<double>()), " | ",
                    FormatMs(s["max_ms"].get<double>()), " |\n");
  }
  return md;
}

int Main(int argc, char** argv) {
  const std::optional<BrokerKind> broker = ParseBenchFlags(argc, argv);
  if (!broker) return kBadFlags;
  const std::vector<std::string> phases = absl::GetFlag(FLAGS_phases);
  auto has = [&phases](const char* p) {
    return std::find(phases.begin(), phases.end(), p) != phases.end();
  };
  const int reps = absl::GetFlag(FLAGS_reps);
  const std::string out = absl::GetFlag(FLAGS_out);
  StartedBench bench = StartBench(EnvOptions(
      absl::GetFlag(FLAGS_outboxd), absl::GetFlag(FLAGS_work_dir), *broker));
  if (bench.env == nullptr) return 1;
  BenchEnv* env = bench.env.get();
  absl::Status s = env->CreateTopic(Topic());
  if (s.ok()) s = env->CreateSlot(kSlot);
  if (!s.ok()) {
    std::cerr << "setup: " << s << "\n";
    return 1;
  }
  auto recorder =
      ReceiptRecorder::Start(env->bootstrap(), Topic(), kPartitions, kCapacity,
                             absl::GetFlag(FLAGS_fetch_wait_ms));
  auto conn = PgConn::Connect(env->AdminConnInfo());
  if (!recorder.ok() || !conn.ok()) {
    std::cerr << "setup: " << recorder.status() << " " << conn.status() << "\n";
    return 1;
  }
  Rig rig(*env, **recorder, **conn);
  std::vector<Series> series;
  std::vector<std::vector<double>> milestones;
  nlohmann::json failures = nlohmann::json::array();
  auto note = [&failures](const char* phase, const absl::Status& st) {
    if (!st.ok()) AddFailure(failures, phase, {{"phase", phase}}, st);
  };
  if (has("floor")) note("floor", RunFloor(rig, reps, series));
  if (has("start")) {
    note("start", RunStart(rig, reps, absl::GetFlag(FLAGS_steady),
                           has("steady"), series, milestones));
  }
  if (has("start-live")) note("start-live", RunStartLive(rig, reps, series));
  if (has("takeover")) {
    // outboxd's defaults, and the README's fast standby.
    note("takeover",
         RunTakeover(rig, reps,
                     {"default", "defaults (--standby-poll-interval=20ms)", {}},
                     series));
    note("takeover", RunTakeover(rig, reps,
                                 {"fast",
                                  "--standby-poll-interval=5ms",
                                  {"--standby-poll-interval=5ms"}},
                                 series));
  }
  (*recorder)->Stop();

  nlohmann::json doc;
  doc["benchmark"] = "first-event";
  doc["machine"] = bench.machine;
  doc["setup"] = {
      {"postgres", kPostgresSetup},
      {"broker", env->broker_description()},
      {"consumer", absl::StrCat("librdkafka, assign from the beginning, "
                                "fetch.wait.max.ms=",
                                absl::GetFlag(FLAGS_fetch_wait_ms),
                                ", running before every phase")},
      {"outboxd", absl::StrJoin(OutboxdArgs({}), " ")},
  };
  doc["series"] = nlohmann::json::array();
  for (const Series& x : series) doc["series"].push_back(Summary(x));
  doc["start_breakdown"] = Breakdown(milestones);
  doc["duplicates"] = (*recorder)->duplicates();
  doc["failures"] = failures;
  const std::string stem = out + "/" + ResultStem("first-event", *broker);
  const std::string md =
      absl::StrCat("First event, broker: ", env->broker_description(), "\n\n") +
      Markdown(doc["series"]) + BreakdownMarkdown(doc["start_breakdown"]);
  if (!WriteResults(stem, doc, md)) return 1;
  return failures.empty() ? 0 : 1;
}

}  // namespace
}  // namespace outboxd::bench::first_event

int main(int argc, char** argv) {
  return outboxd::bench::first_event::Main(argc, argv);
}
