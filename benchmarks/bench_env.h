// BenchEnv: what every end-to-end benchmark stands on. A throwaway
// PostgreSQL 15 cluster (tests/harness PgCluster) with pg_stat_statements
// preloaded and the outbox installed (sql/outbox.sql), a role the publisher
// runs as (so that its statements can be told apart), the broker (the dev
// broker, a single-node Apache Kafka with --broker=apache, or a given Kafka
// cluster), and a way to run outboxd as a child process with its log in a
// file.
//
// Threading: one thread drives a BenchEnv.
#ifndef OUTBOXD_BENCHMARKS_BENCH_ENV_H_
#define OUTBOXD_BENCHMARKS_BENCH_ENV_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/harness/child_process.h"
#include "tests/harness/dev_broker.h"
#include "tests/harness/kafka_cluster.h"
#include "tests/harness/pg_cluster.h"

namespace outboxd::bench {

inline constexpr char kPublisherRole[] = "outboxd_bench";
inline constexpr int kPartitions = 4;
// What the results say the PostgreSQL cluster was (BenchEnv::Start).
inline constexpr char kPostgresSetup[] =
    "15, fsync=off, synchronous_commit=on, throwaway cluster";

// The text of `path` in the source tree, e.g. "sql/outbox.sql"; NotFound
// when it cannot be read.
absl::StatusOr<std::string> SourceFile(const std::string& path);

// A publisher mode of the latency and live benchmarks: "cdc",
// "poll<interval>" (--source=poll --poll-interval=<interval>, e.g. poll100ms)
// or "notify" (--source=notify, sql/outbox_notify.sql installed, 1 s
// safety-net poll).
struct PublisherMode {
  std::string name;      // as given on the command line
  std::string source;    // cdc | poll | notify
  std::string interval;  // --poll-interval, "" = default
};
absl::StatusOr<PublisherMode> ParsePublisherMode(const std::string& name);
// Every name of a --modes list, in order; the first bad one's error.
absl::StatusOr<std::vector<PublisherMode>> ParsePublisherModes(
    const std::vector<std::string>& names);
// The poll interval (0 for cdc).
absl::Duration PollInterval(const PublisherMode& mode);
// outboxd's flags for the mode: --source, and --slot=`slot` (cdc) or
// --poll-interval (poll); poll and notify refuse --slot with exit 2.
std::vector<std::string> ModeArgs(const PublisherMode& mode,
                                  const std::string& slot);
// outboxd's flags for one run of a mode: ModeArgs, --topic=`topic`, a
// metrics server on a free port, info logs, then `extra` (the benchmark's
// --outboxd_args).
std::vector<std::string> ModeRunArgs(const PublisherMode& mode,
                                     const std::string& slot,
                                     const std::string& topic,
                                     const std::vector<std::string>& extra);

// The broker a benchmark runs on: the dev broker (librdkafka's mock
// cluster) or a single-node Apache Kafka (tests/harness/kafka_cluster.h).
enum class BrokerKind { kDev, kApache };
// The --broker flag (dev|apache, default dev) that live_bench,
// first_event_bench and latency_bench share; an error naming the flag for
// anything else (the benchmarks exit 2 on it).
absl::StatusOr<BrokerKind> BrokerFlag();
// "dev" or "apache".
std::string BrokerName(BrokerKind broker);
// The stem of a benchmark's result files: `base` on the dev broker,
// "<base>-apache" on Apache Kafka, so that the two runs do not overwrite
// each other (benchmarks/run-*.sh name the same files).
std::string ResultStem(const std::string& base, BrokerKind broker);

struct BenchEnvOptions {
  std::string outboxd_binary;  // "" = the one built with the harness
  std::string work_dir;        // outboxd logs go here
  // A Kafka cluster to use instead of starting a broker ("" = start the one
  // `broker` names). broker() and devbroker_pid() are only valid with the
  // dev broker.
  std::string bootstrap;
  BrokerKind broker = BrokerKind::kDev;
  // Extra PostgreSQL settings ("name=value"), after the defaults (a later
  // one wins), e.g. more connections and slots for many databases.
  std::vector<std::string> pg_settings;
};

// The options of a benchmark that takes --outboxd and --work_dir.
BenchEnvOptions EnvOptions(std::string outboxd_binary, std::string work_dir,
                           BrokerKind broker = BrokerKind::kDev);

class BenchEnv {
 public:
  static absl::StatusOr<std::unique_ptr<BenchEnv>> Start(
      const BenchEnvOptions& options);

  testing::PgCluster& pg() { return *pg_; }
  testing::DevBroker& broker() { return *broker_; }
  const std::string& bootstrap() const { return bootstrap_; }
  BrokerKind broker_kind() const { return broker_kind_; }
  // What the results say the broker was, e.g. "Apache Kafka 3.9.0 (KRaft),
  // 1 node, 4 partitions per topic".
  const std::string& broker_description() const { return broker_description_; }
  // The broker's process (the dev broker, or the Kafka node's JVM); -1 with
  // a given bootstrap.
  pid_t broker_pid() const { return broker_pid_; }
  // Creates `topic` with kPartitions partitions on the dev broker or Apache
  // Kafka (which then has every partition's leader): the dev broker would
  // auto-create it with as many, Apache Kafka gets it up front so that the
  // two runs compare.
  absl::Status CreateTopic(const std::string& topic);
  // Superuser conninfo for the load generator and the measurements.
  std::string AdminConnInfo() const { return pg_->ConnInfo("postgres"); }
  // Conninfo of the publisher's role (superuser, replication) for `dbname`.
  std::string PublisherConnInfo(const std::string& dbname = "postgres") const;
  pid_t postmaster_pid() const { return postmaster_pid_; }
  pid_t devbroker_pid() const { return devbroker_pid_; }
  const std::string& work_dir() const { return work_dir_; }

  // Starts outboxd with `args` (besides --pg/--brokers) and its log in
  // work_dir/<log_name>.log.
  absl::StatusOr<std::unique_ptr<testing::ChildProcess>> StartOutboxd(
      const std::vector<std::string>& args, const std::string& log_name);
  // The same with --pg pointing to `dbname`.
  absl::StatusOr<std::unique_ptr<testing::ChildProcess>> StartOutboxdOn(
      const std::string& dbname, const std::vector<std::string>& args,
      const std::string& log_name);
  // SIGTERM, then wait; returns the exit code (or an error after 30 s).
  absl::StatusOr<int> StopOutboxd(testing::ChildProcess& outboxd);

  // Installs sql/outbox_notify.sql's trigger for a notify mode, drops it
  // for the others.
  absl::Status PrepareMode(const PublisherMode& mode);

  // calls summed over pg_stat_statements for the publisher's role.
  absl::StatusOr<double> PublisherStatementCalls();
  // xact_commit + xact_rollback of the database.
  absl::StatusOr<double> DatabaseTransactions();
  // Waits until the slot exists and a walsender streams it.
  absl::Status WaitSlotActive(const std::string& slot, absl::Duration timeout);
  // A pgoutput slot, created before the rows it is meant to read.
  absl::Status CreateSlot(const std::string& slot);
  // Drops the slot (retrying while a walsender still holds it) and outboxd's
  // record of it: a slot dropped on purpose must not look lost to the next
  // outboxd on that name (README "Lost slots").
  void DropSlot(const std::string& slot);

  // pg_recvlogical (`binary`) streams `slot` (pgoutput, protocol 1,
  // outbox_pub; logical decoding messages too when `messages`) to /dev/null
  // until `end_lsn`: the walsender's decoding and streaming limit, which the
  // throughput benchmarks compare outboxd to.
  struct RecvLogicalRun {
    double seconds = 0;
    double postgres_cpu_s = 0;  // of the whole cluster, over the run
  };
  absl::StatusOr<RecvLogicalRun> RunPgRecvLogical(const std::string& binary,
                                                  const std::string& slot,
                                                  const std::string& end_lsn,
                                                  bool messages);

 private:
  BenchEnv() = default;
  std::unique_ptr<testing::PgCluster> pg_;
  std::unique_ptr<testing::DevBroker> broker_;
  std::unique_ptr<testing::KafkaCluster> kafka_;
  std::string bootstrap_;
  BrokerKind broker_kind_ = BrokerKind::kDev;
  std::string broker_description_;
  pid_t broker_pid_ = -1;
  std::string outboxd_binary_;
  std::string work_dir_;
  pid_t postmaster_pid_ = -1;
  pid_t devbroker_pid_ = -1;
};

// BenchEnv::Start; prints "setup: <error>" to stderr and returns null when
// it fails.
std::unique_ptr<BenchEnv> StartBenchEnvOrReport(const BenchEnvOptions& options);

}  // namespace outboxd::bench

#endif  // OUTBOXD_BENCHMARKS_BENCH_ENV_H_
