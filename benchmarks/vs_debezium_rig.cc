#include "benchmarks/vs_debezium_rig.h"

#include <csignal>
#include <filesystem>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "benchmarks/bench_results.h"

namespace outboxd::bench::vs_debezium {
namespace {

std::vector<std::string> OutboxdArgs(const RigOptions& rig,
                                     const PublisherKind& p,
                                     const std::string& slot) {
  std::vector<std::string> args = {
      absl::StrCat("--topic-prefix=", p.topic_prefix),
      absl::StrCat("--slot=", slot), "--metrics-address=127.0.0.1:0"};
  args.insert(args.end(), rig.outboxd_args.begin(), rig.outboxd_args.end());
  args.insert(args.end(), p.outboxd_args.begin(), p.outboxd_args.end());
  return args;
}

std::string Properties(const Settings& kv) {
  std::string text;
  for (const auto& [k, v] : kv) absl::StrAppend(&text, k, "=", v, "\n");
  return text;
}

// The Connect worker and connector configuration of one run.
struct ConnectConfig {
  Settings worker;
  Settings connector;
};

ConnectConfig DebeziumConfig(BenchEnv& env, const PublisherKind& p,
                             const std::string& slot, const std::string& dir,
                             int rest_port) {
  ConnectConfig c;
  c.worker = {
      {"bootstrap.servers", env.bootstrap()},
      {"key.converter", "org.apache.kafka.connect.storage.StringConverter"},
      {"value.converter", "org.apache.kafka.connect.storage.StringConverter"},
      {"offset.storage.file.filename", absl::StrCat(dir, "/offsets")},
      {"listeners", absl::StrCat("http://127.0.0.1:", rest_port)},
  };
  c.connector = {
      {"name", absl::StrCat("outbox-", slot)},
      {"connector.class", "io.debezium.connector.postgresql.PostgresConnector"},
      {"tasks.max", "1"},
      {"database.hostname", "127.0.0.1"},
      {"database.port", absl::StrCat(env.pg().port())},
      {"database.user", "postgres"},
      {"database.password", ""},
      {"database.dbname", "postgres"},
      {"topic.prefix", "dbz"},
      {"plugin.name", "pgoutput"},
      {"slot.name", slot},
      {"publication.name", kDebeziumPublication},
      {"publication.autocreate.mode", "filtered"},
      {"table.include.list", "public.outbox"},
      {"snapshot.mode", "no_data"},
      {"transforms", "outbox"},
      {"transforms.outbox.type", "io.debezium.transforms.outbox.EventRouter"},
      {"key.converter", "org.apache.kafka.connect.storage.StringConverter"},
      {"value.converter", "org.apache.kafka.connect.storage.StringConverter"},
  };
  if (p.tuned) {
    for (const auto& kv : kTunedConnector) c.connector.push_back(kv);
    for (const auto& kv : kTunedWorker) c.worker.push_back(kv);
    c.connector.push_back(
        {"transforms.outbox.route.topic.replacement",
         absl::StrCat(kTunedTopicPrefix, "${routedByValue}")});
  }
  if (!p.route_topic.empty()) {
    c.connector.push_back(
        {"transforms.outbox.route.topic.replacement", p.route_topic});
  }
  return c;
}

}  // namespace

std::string Quote(const std::string& s) {
  return absl::StrCat("'", absl::StrReplaceAll(s, {{"'", "''"}}), "'");
}

absl::StatusOr<PublisherKind> ParsePublisher(const std::string& name) {
  if (name == "outboxd") {
    return PublisherKind{name,  absl::StrCat(kOutboxdPrefix, "outbox.event."),
                         false, false,
                         {},    ""};
  }
  if (absl::StartsWith(name, "outboxd-") && name.size() > 8) {
    return PublisherKind{
        name,  absl::StrCat(kOutboxdPrefix, name.substr(8), ".outbox.event."),
        false, false,
        {},    ""};
  }
  if (name == "debezium") {
    return PublisherKind{name, kDebeziumTopicPrefix, true, false, {}, ""};
  }
  if (name == "debezium-tuned") {
    return PublisherKind{name, kTunedTopicPrefix, true, true, {}, ""};
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown publisher ", name));
}

std::string SlotName(const std::string& prefix, const std::string& name) {
  return absl::StrCat(prefix, absl::StrReplaceAll(name, {{"-", "_"}}));
}

absl::StatusOr<std::unique_ptr<testing::ChildProcess>> StartPublisher(
    BenchEnv& env, const RigOptions& rig, const PublisherKind& p,
    const std::string& slot, const std::string& log_name,
    nlohmann::json* settings) {
  if (!p.debezium) {
    std::vector<std::string> args = OutboxdArgs(rig, p, slot);
    if (settings != nullptr) *settings = {{"outboxd_args", args}};
    return env.StartOutboxd(args, log_name);
  }
  const std::string dir = absl::StrCat(env.work_dir(), "/", log_name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto port = testing::FreeTcpPort();
  if (!port.ok()) return port.status();
  ConnectConfig c = DebeziumConfig(env, p, slot, dir, *port);
  absl::Status s = WriteFile(dir + "/worker.properties", Properties(c.worker));
  if (s.ok()) {
    s = WriteFile(dir + "/connector.properties", Properties(c.connector));
  }
  if (!s.ok()) return s;
  if (settings != nullptr) {
    nlohmann::json w, k;
    for (const auto& [key, v] : c.worker) w[key] = v;
    for (const auto& [key, v] : c.connector) k[key] = v;
    *settings = {{"worker", w}, {"connector", k}};
  }
  testing::ChildOptions o;
  // The JVM options of Kafka's connect-standalone.sh / kafka-run-class.sh.
  o.argv = {"java",
            "-Xms256M",
            "-Xmx2G",
            "-server",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true"};
  if (!rig.connect_log4j.empty()) {
    o.argv.push_back(
        absl::StrCat("-Dlog4j2.configurationFile=", rig.connect_log4j));
  }
  for (const char* a :
       {"-cp", "", "org.apache.kafka.connect.cli.ConnectStandalone", "", ""}) {
    o.argv.push_back(a);
  }
  size_t n = o.argv.size();
  o.argv[n - 4] = absl::StrCat(rig.connect_libs, "/*");
  o.argv[n - 2] = dir + "/worker.properties";
  o.argv[n - 1] = dir + "/connector.properties";
  o.capture_stdout = false;
  o.stderr_file = absl::StrCat(env.work_dir(), "/", log_name, ".log");
  return testing::ChildProcess::Start(o);
}

absl::Status StopPublisher(testing::ChildProcess& child) {
  child.Signal(SIGTERM);
  std::optional<int> code = child.Wait(absl::Seconds(60));
  if (!code) {
    child.Signal(SIGKILL);
    (void)child.Wait(absl::Seconds(10));
    return absl::DeadlineExceededError("publisher did not stop in 60 s");
  }
  return absl::OkStatus();
}

absl::Status WaitStreaming(BenchEnv& env, const std::string& slot,
                           testing::ChildProcess& child,
                           const std::string& log) {
  absl::Time deadline = absl::Now() + absl::Seconds(180);
  while (absl::Now() < deadline) {
    if (!child.Running()) {
      return absl::InternalError(absl::StrCat(
          "publisher exited before streaming ", slot, " (see ", log, ")"));
    }
    if (env.WaitSlotActive(slot, absl::Milliseconds(200)).ok()) {
      return absl::OkStatus();
    }
  }
  return absl::DeadlineExceededError(
      absl::StrCat("slot ", slot, " not streamed in 180 s (see ", log, ")"));
}

}  // namespace outboxd::bench::vs_debezium
