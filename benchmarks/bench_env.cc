#include "benchmarks/bench_env.h"

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "benchmarks/bench_kafka.h"
#include "benchmarks/bench_pg.h"
#include "benchmarks/bench_proc.h"

ABSL_FLAG(std::string, broker, "dev",
          "the broker to run on: dev (the dev broker, librdkafka's mock "
          "cluster) or apache (a single-node Apache Kafka, jars from "
          "scripts/fetch-kafka.sh)");

namespace outboxd::bench {

absl::StatusOr<BrokerKind> BrokerFlag() {
  const std::string name = absl::GetFlag(FLAGS_broker);
  if (name == "dev") return BrokerKind::kDev;
  if (name == "apache") return BrokerKind::kApache;
  return absl::InvalidArgumentError(
      absl::StrCat("--broker: must be dev or apache, not \"", name, "\""));
}

std::string BrokerName(BrokerKind broker) {
  return broker == BrokerKind::kApache ? "apache" : "dev";
}

std::string ResultStem(const std::string& base, BrokerKind broker) {
  return broker == BrokerKind::kDev
             ? base
             : absl::StrCat(base, "-", BrokerName(broker));
}

namespace {

// The broker JVM's settings (scripts/kafka-cluster.sh: KAFKA_HEAP,
// KAFKA_JVM_OPTS after its own -XX:+UseSerialGC -XX:TieredStopAtLevel=1).
std::string KafkaJvm() {
  const char* heap = std::getenv("KAFKA_HEAP");
  const char* opts = std::getenv("KAFKA_JVM_OPTS");
  return absl::StrCat("JVM -Xmx", heap && *heap ? heap : "512m",
                      " -XX:+UseSerialGC -XX:TieredStopAtLevel=1",
                      opts && *opts ? absl::StrCat(" ", opts) : "",
                      " (later options win)");
}

// The broker jar's version in the rig's folder (kafka_<scala>-<version>.jar),
// "" if there is none.
std::string KafkaVersion(const std::string& libs_dir) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(libs_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (absl::StartsWith(name, "kafka_") && absl::EndsWith(name, ".jar") &&
        name.find('-') != std::string::npos) {
      const size_t dash = name.find('-');
      return name.substr(dash + 1, name.size() - dash - 1 - 4);
    }
  }
  return "";
}

// A just-started Kafka answers InitProducerId with "coordinator load in
// progress" for a while, and librdkafka retries that every 500 ms: the first
// idempotent producer would measure the cluster's boot, not outboxd. One
// idempotent record delivered here (to a topic of its own) waits that out
// before any measurement.
absl::Status WarmUpKafka(const std::string& bootstrap) {
  auto rk =
      NewKafkaHandle(RD_KAFKA_PRODUCER, {{"bootstrap.servers", bootstrap},
                                         {"enable.idempotence", "true"},
                                         {"acks", "all"},
                                         {"message.timeout.ms", "60000"}});
  if (!rk.ok()) return rk.status();
  const int64_t t0 = NowNs();
  const char value[] = "warmup";
  rd_kafka_resp_err_t err = rd_kafka_producev(
      *rk, RD_KAFKA_V_TOPIC("bench.warmup"),
      RD_KAFKA_V_VALUE(const_cast<char*>(value), sizeof(value) - 1),
      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR) err = rd_kafka_flush(*rk, 70000);
  rd_kafka_destroy(*rk);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return absl::UnavailableError(
        absl::StrCat("Kafka warm-up record: ", rd_kafka_err2str(err)));
  }
  std::cerr << "Kafka warm-up record (idempotent producer id) in "
            << (NowNs() - t0) / 1e6 << " ms\n";
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> SourceFile(const std::string& path) {
  std::ifstream file(std::string(OUTBOXD_SOURCE_DIR) + "/" + path);
  if (!file) return absl::NotFoundError(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

absl::StatusOr<PublisherMode> ParsePublisherMode(const std::string& name) {
  if (name == "cdc") return PublisherMode{name, "cdc", ""};
  if (name == "notify") return PublisherMode{name, "notify", "1s"};
  if (absl::StartsWith(name, "poll")) {
    std::string interval = name.substr(4);
    absl::Duration d;
    if (interval.empty() || !absl::ParseDuration(interval, &d)) {
      return absl::InvalidArgumentError(
          absl::StrCat("mode ", name, ": poll needs an interval, e.g. poll1s"));
    }
    return PublisherMode{name, "poll", interval};
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown mode ", name));
}

absl::StatusOr<std::vector<PublisherMode>> ParsePublisherModes(
    const std::vector<std::string>& names) {
  std::vector<PublisherMode> modes;
  for (const std::string& name : names) {
    absl::StatusOr<PublisherMode> mode = ParsePublisherMode(name);
    if (!mode.ok()) return mode.status();
    modes.push_back(*std::move(mode));
  }
  return modes;
}

absl::Duration PollInterval(const PublisherMode& mode) {
  absl::Duration d = absl::ZeroDuration();
  if (!mode.interval.empty()) (void)absl::ParseDuration(mode.interval, &d);
  return d;
}

std::vector<std::string> ModeArgs(const PublisherMode& mode,
                                  const std::string& slot) {
  std::vector<std::string> args = {absl::StrCat("--source=", mode.source)};
  if (mode.source == "cdc") args.push_back(absl::StrCat("--slot=", slot));
  if (!mode.interval.empty()) {
    args.push_back(absl::StrCat("--poll-interval=", mode.interval));
  }
  return args;
}

std::vector<std::string> ModeRunArgs(const PublisherMode& mode,
                                     const std::string& slot,
                                     const std::string& topic,
                                     const std::vector<std::string>& extra) {
  std::vector<std::string> args = ModeArgs(mode, slot);
  args.insert(args.end(),
              {absl::StrCat("--topic=", topic), "--metrics-address=127.0.0.1:0",
               "--log-level=info"});
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

absl::StatusOr<std::unique_ptr<BenchEnv>> BenchEnv::Start(
    const BenchEnvOptions& options) {
  std::unique_ptr<BenchEnv> env(new BenchEnv());
  env->outboxd_binary_ =
      options.outboxd_binary.empty() ? OUTBOXD_BINARY : options.outboxd_binary;
  env->work_dir_ = options.work_dir;
  std::filesystem::create_directories(env->work_dir_);

  testing::PgClusterOptions pg_options;
  pg_options.settings = {
      "shared_preload_libraries=pg_stat_statements",
      "pg_stat_statements.track=all",
      "pg_stat_statements.max=1000",
      "shared_buffers=256MB",
      "max_wal_size=8GB",
      "checkpoint_timeout=30min",
      "max_connections=50",
  };
  for (const std::string& setting : options.pg_settings) {
    pg_options.settings.push_back(setting);
  }
  auto pg = testing::PgCluster::Start(pg_options);
  if (!pg.ok()) return pg.status();
  env->pg_ = *std::move(pg);

  absl::StatusOr<std::string> sql = SourceFile("sql/outbox.sql");
  if (!sql.ok()) return sql.status();
  absl::Status s = env->pg_->Exec("postgres", *sql);
  if (!s.ok()) return s;
  s = env->pg_->Exec(
      "postgres", absl::StrCat("CREATE EXTENSION pg_stat_statements; "
                               "CREATE ROLE ",
                               kPublisherRole, " LOGIN SUPERUSER REPLICATION"));
  if (!s.ok()) return s;
  // The postmaster is the parent of any backend: ask one for its pid.
  auto conn = PgConn::Connect(env->AdminConnInfo());
  if (!conn.ok()) return conn.status();
  auto pid_text = (*conn)->Query("SELECT pg_backend_pid()");
  if (!pid_text.ok()) return pid_text.status();
  int pid = 0;
  (void)absl::SimpleAtoi(*pid_text, &pid);
  env->postmaster_pid_ = ParentPid(pid);

  env->broker_kind_ = options.broker;
  if (!options.bootstrap.empty()) {
    env->bootstrap_ = options.bootstrap;
    env->broker_description_ = absl::StrCat("Kafka at ", options.bootstrap);
    std::cerr << "postmaster pid " << env->postmaster_pid_ << ", Kafka "
              << env->bootstrap() << "\n";
    return env;
  }
  if (options.broker == BrokerKind::kApache) {
    testing::KafkaClusterOptions kafka_options;
    kafka_options.nodes = 1;
    kafka_options.partitions = kPartitions;  // as the dev broker's topics
    auto kafka = testing::KafkaCluster::Start(kafka_options);
    if (!kafka.ok()) return kafka.status();
    env->kafka_ = *std::move(kafka);
    env->bootstrap_ = env->kafka_->bootstrap();
    absl::Status warm = WarmUpKafka(env->bootstrap_);
    if (!warm.ok()) return warm;
    std::ifstream pid_file(env->kafka_->dir() + "/node-0/pid");
    pid_file >> env->broker_pid_;
    const std::string version = KafkaVersion(env->kafka_->LibsDir());
    env->broker_description_ = absl::StrCat(
        "Apache Kafka", version.empty() ? "" : " ", version,
        " (KRaft, JVM), 1 node, ", kPartitions,
        " partitions per topic, topics created up front; ", KafkaJvm());
    std::cerr << "postmaster pid " << env->postmaster_pid_
              << ", Apache Kafka pid " << env->broker_pid_ << ", bootstrap "
              << env->bootstrap() << "\n";
    return env;
  }
  auto broker = testing::DevBroker::Start(/*brokers=*/1, kPartitions);
  if (!broker.ok()) return broker.status();
  env->broker_ = *std::move(broker);
  env->bootstrap_ = env->broker_->bootstrap();
  env->devbroker_pid_ = ChildPidByName("outbox-devbrok");
  env->broker_pid_ = env->devbroker_pid_;
  env->broker_description_ =
      absl::StrCat("outbox-devbroker (librdkafka mock cluster), 1 broker, ",
                   kPartitions, " partitions");
  std::cerr << "postmaster pid " << env->postmaster_pid_ << ", dev broker pid "
            << env->devbroker_pid_ << ", bootstrap " << env->bootstrap()
            << "\n";
  return env;
}

absl::Status BenchEnv::CreateTopic(const std::string& topic) {
  if (kafka_ != nullptr) return kafka_->CreateTopic(topic, kPartitions);
  if (broker_ != nullptr) return broker_->CreateTopic(topic, kPartitions);
  return absl::FailedPreconditionError(
      absl::StrCat("cannot create topic ", topic, " on a given Kafka"));
}

std::string BenchEnv::PublisherConnInfo(const std::string& dbname) const {
  // In a conninfo string a later keyword overrides an earlier one.
  return absl::StrCat(pg_->ConnInfo(dbname), " user=", kPublisherRole,
                      " application_name=outboxd");
}

absl::StatusOr<std::unique_ptr<testing::ChildProcess>> BenchEnv::StartOutboxd(
    const std::vector<std::string>& args, const std::string& log_name) {
  return StartOutboxdOn("postgres", args, log_name);
}

absl::StatusOr<std::unique_ptr<testing::ChildProcess>> BenchEnv::StartOutboxdOn(
    const std::string& dbname, const std::vector<std::string>& args,
    const std::string& log_name) {
  testing::ChildOptions o;
  o.argv = {outboxd_binary_, absl::StrCat("--pg=", PublisherConnInfo(dbname)),
            absl::StrCat("--brokers=", bootstrap())};
  for (const std::string& a : args) o.argv.push_back(a);
  o.capture_stdout = false;
  o.stderr_file = absl::StrCat(work_dir_, "/", log_name, ".log");
  return testing::ChildProcess::Start(o);
}

absl::StatusOr<int> BenchEnv::StopOutboxd(testing::ChildProcess& outboxd) {
  outboxd.Signal(SIGTERM);
  std::optional<int> code = outboxd.Wait(absl::Seconds(30));
  if (!code) return absl::DeadlineExceededError("outboxd did not stop in 30s");
  return *code;
}

absl::Status BenchEnv::PrepareMode(const PublisherMode& mode) {
  if (mode.source != "notify") {
    return pg_->Exec("postgres",
                     "DROP TRIGGER IF EXISTS outbox_notify ON public.outbox");
  }
  absl::StatusOr<std::string> sql = SourceFile("sql/outbox_notify.sql");
  if (!sql.ok()) return sql.status();
  return pg_->Exec("postgres", *sql);
}

absl::StatusOr<double> BenchEnv::PublisherStatementCalls() {
  auto v = pg_->Query(
      "postgres",
      absl::StrCat("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s "
                   "JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = '",
                   kPublisherRole, "'"));
  if (!v.ok()) return v.status();
  double d = 0;
  (void)absl::SimpleAtod(*v, &d);
  return d;
}

absl::StatusOr<double> BenchEnv::DatabaseTransactions() {
  auto v = pg_->Query("postgres",
                      "SELECT xact_commit + xact_rollback FROM "
                      "pg_stat_database WHERE datname = 'postgres'");
  if (!v.ok()) return v.status();
  double d = 0;
  (void)absl::SimpleAtod(*v, &d);
  return d;
}

absl::Status BenchEnv::CreateSlot(const std::string& slot) {
  return pg_->Exec("postgres",
                   absl::StrCat("SELECT pg_create_logical_replication_slot('",
                                slot, "', 'pgoutput')"));
}

void BenchEnv::DropSlot(const std::string& slot) {
  pg_->Exec("postgres",
            absl::StrCat("DELETE FROM outbox.publisher_state WHERE slot_name "
                         "= '",
                         slot, "'"))
      .IgnoreError();
  for (int i = 0; i < 100; ++i) {
    auto exists = pg_->Query(
        "postgres", absl::StrCat("SELECT count(*) FROM pg_replication_slots "
                                 "WHERE slot_name = '",
                                 slot, "'"));
    if (exists.ok() && *exists == "0") return;
    if (pg_->Exec("postgres",
                  absl::StrCat("SELECT pg_drop_replication_slot('", slot, "')"))
            .ok()) {
      return;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  std::cerr << "could not drop slot " << slot << "\n";
}

absl::Status BenchEnv::WaitSlotActive(const std::string& slot,
                                      absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    auto v =
        pg_->Query("postgres",
                   absl::StrCat("SELECT active FROM pg_replication_slots WHERE "
                                "slot_name = '",
                                slot, "'"));
    if (v.ok() && *v == "t") return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("slot ", slot, " not streamed within the timeout"));
}

absl::StatusOr<BenchEnv::RecvLogicalRun> BenchEnv::RunPgRecvLogical(
    const std::string& binary, const std::string& slot,
    const std::string& end_lsn, bool messages) {
  std::vector<std::string> argv = {binary,
                                   "-d",
                                   AdminConnInfo(),
                                   "--start",
                                   "-S",
                                   slot,
                                   "-o",
                                   "proto_version=1",
                                   "-o",
                                   "publication_names=outbox_pub",
                                   "-f",
                                   "/dev/null",
                                   "-E",
                                   end_lsn,
                                   "--no-loop",
                                   "-s",
                                   "1"};
  if (messages) {
    argv.push_back("-o");
    argv.push_back("messages=true");
  }
  const double pg_cpu0 = ClusterCpuSeconds(postmaster_pid_);
  const int64_t t0 = NowNs();
  auto result = testing::RunCommand(argv, absl::Minutes(10));
  const int64_t t1 = NowNs();
  if (!result.ok()) return result.status();
  if (result->exit_code != 0) {
    return absl::InternalError(absl::StrCat(
        "pg_recvlogical exit ", result->exit_code, ": ", result->output));
  }
  RecvLogicalRun run;
  run.seconds = (t1 - t0) / 1e9;
  run.postgres_cpu_s = ClusterCpuSeconds(postmaster_pid_) - pg_cpu0;
  return run;
}

BenchEnvOptions EnvOptions(std::string outboxd_binary, std::string work_dir,
                           BrokerKind broker) {
  BenchEnvOptions options;
  options.outboxd_binary = std::move(outboxd_binary);
  options.work_dir = std::move(work_dir);
  options.broker = broker;
  return options;
}

std::unique_ptr<BenchEnv> StartBenchEnvOrReport(
    const BenchEnvOptions& options) {
  absl::StatusOr<std::unique_ptr<BenchEnv>> env = BenchEnv::Start(options);
  if (!env.ok()) {
    std::cerr << "setup: " << env.status() << "\n";
    return nullptr;
  }
  return *std::move(env);
}

}  // namespace outboxd::bench
