#include "tests/harness/kafka_cluster.h"

#include <librdkafka/rdkafka.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <tuple>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"
#include "tests/harness/child_process.h"

#ifndef OUTBOXD_SOURCE_DIR
#error "OUTBOXD_SOURCE_DIR must name the source tree"
#endif

namespace outboxd::testing {
namespace {

const char* const kScript = OUTBOXD_SOURCE_DIR "/scripts/kafka-cluster.sh";
// JVM start on a loaded 2-core machine plus (the first time) resolving the
// jars with Maven.
constexpr absl::Duration kStartTimeout = absl::Seconds(300);
constexpr absl::Duration kNodeTimeout = absl::Seconds(180);
constexpr absl::Duration kStopTimeout = absl::Seconds(60);
constexpr int kMetadataTimeoutMs = 10000;
constexpr absl::Duration kLeaderWait = absl::Seconds(60);

void LogFromRdkafka(const rd_kafka_t* /*rk*/, int /*level*/, const char* fac,
                    const char* buf) {
  spdlog::debug("kafka cluster admin {}: {}", fac, buf);
}

struct HandleDeleter {
  void operator()(rd_kafka_t* rk) const { rd_kafka_destroy(rk); }
};
using Handle = std::unique_ptr<rd_kafka_t, HandleDeleter>;

// A client handle for metadata and admin requests.
absl::StatusOr<Handle> NewClient(const std::string& bootstrap) {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char errstr[512];
  const std::pair<const char*, std::string> settings[] = {
      {"bootstrap.servers", bootstrap},
      {"log.connection.close", "false"},
      {"topic.metadata.refresh.interval.ms", "1000"},
  };
  for (const auto& [name, value] : settings) {
    if (rd_kafka_conf_set(conf, name, value.c_str(), errstr, sizeof(errstr)) !=
        RD_KAFKA_CONF_OK) {
      rd_kafka_conf_destroy(conf);
      return absl::InternalError(absl::StrCat(name, ": ", errstr));
    }
  }
  rd_kafka_conf_set_log_cb(conf, LogFromRdkafka);
  rd_kafka_t* rk =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  if (rk == nullptr) {
    rd_kafka_conf_destroy(conf);
    return absl::InternalError(absl::StrCat("rd_kafka_new: ", errstr));
  }
  return Handle(rk);
}

std::map<std::tuple<int, int, bool>, std::unique_ptr<KafkaCluster>>&
SharedClusters() {
  static auto* clusters =
      new std::map<std::tuple<int, int, bool>, std::unique_ptr<KafkaCluster>>;
  return *clusters;
}

void StopSharedClusters() { SharedClusters().clear(); }

}  // namespace

absl::StatusOr<std::unique_ptr<KafkaCluster>> KafkaCluster::Start(
    const KafkaClusterOptions& options) {
  if (options.nodes != 1 && options.nodes != 3) {
    return absl::InvalidArgumentError("KafkaCluster: nodes must be 1 or 3");
  }
  char dir_template[] = "/tmp/outboxd-kafka-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp: ", std::strerror(errno)));
  }
  std::unique_ptr<KafkaCluster> cluster(new KafkaCluster());
  cluster->options_ = options;
  cluster->dir_ = dir_template;
  std::vector<std::string> argv = {
      "bash", kScript, "start", "--nodes", absl::StrCat(options.nodes), "--dir",
      cluster->dir_, "--partitions", absl::StrCat(options.partitions),
      // The nodes go away with this process even if it crashes.
      "--watch-pid", absl::StrCat(getpid())};
  if (!options.auto_create_topics) argv.push_back("--no-auto-create");
  absl::Time begin = absl::Now();
  absl::StatusOr<CommandResult> result = RunCommand(argv, kStartTimeout);
  cluster->running_ = true;  // whatever came up goes away with `cluster`
  if (!result.ok()) return result.status();
  if (result->exit_code != 0) {
    return absl::UnavailableError(
        absl::StrCat("kafka-cluster.sh start failed (exit code ",
                     result->exit_code, "):\n", result->output));
  }
  cluster->start_time_ = absl::Now() - begin;
  // The bootstrap list is the last line; node timings come before it.
  absl::string_view output = absl::StripTrailingAsciiWhitespace(result->output);
  size_t newline = output.rfind('\n');
  cluster->bootstrap_ = std::string(
      newline == absl::string_view::npos ? output : output.substr(newline + 1));
  if (cluster->bootstrap_.rfind("127.0.0.1:", 0) != 0) {
    return absl::InternalError(absl::StrCat(
        "kafka-cluster.sh start: no bootstrap list in:\n", result->output));
  }
  spdlog::info("kafka cluster: {} node(s) at {} ready in {}", options.nodes,
               cluster->bootstrap_, absl::FormatDuration(cluster->start_time_));
  std::fprintf(stderr, "%s", result->output.c_str());
  return cluster;
}

absl::StatusOr<KafkaCluster*> KafkaCluster::Shared(
    const KafkaClusterOptions& options) {
  auto key = std::make_tuple(options.nodes, options.partitions,
                             options.auto_create_topics);
  auto& clusters = SharedClusters();
  auto it = clusters.find(key);
  if (it != clusters.end()) return it->second.get();
  static bool registered = [] {
    return std::atexit(StopSharedClusters) == 0;
  }();
  (void)registered;
  ASSIGN_OR_RETURN(std::unique_ptr<KafkaCluster> cluster, Start(options));
  KafkaCluster* raw = cluster.get();
  clusters.emplace(key, std::move(cluster));
  return raw;
}

KafkaCluster::~KafkaCluster() {
  absl::Status status = Stop();
  if (!status.ok()) spdlog::warn("kafka cluster: {}", status.ToString());
}

std::string KafkaCluster::NodeLog(int node) const {
  return absl::StrCat(dir_, "/node-", node, "/server.log");
}

std::string KafkaCluster::LibsDir() const {
  std::ifstream in(absl::StrCat(dir_, "/libs"));
  std::string line;
  std::getline(in, line);
  return line;
}

absl::Status KafkaCluster::Script(const std::vector<std::string>& args,
                                  absl::Duration timeout) {
  std::vector<std::string> argv = {"bash", kScript};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back("--dir");
  argv.push_back(dir_);
  ASSIGN_OR_RETURN(CommandResult result, RunCommand(argv, timeout));
  if (result.exit_code != 0) {
    return absl::InternalError(
        absl::StrCat("kafka-cluster.sh ", args[0], " failed (exit code ",
                     result.exit_code, "):\n", result.output));
  }
  if (!result.output.empty()) std::fprintf(stderr, "%s", result.output.c_str());
  return absl::OkStatus();
}

absl::Status KafkaCluster::KillNode(int node) {
  return Script({"kill-node", "--node", absl::StrCat(node)}, kStopTimeout);
}

absl::Status KafkaCluster::RestartNode(int node) {
  return Script({"restart-node", "--node", absl::StrCat(node)}, kNodeTimeout);
}

absl::Status KafkaCluster::WarmUpCoordinators(absl::Duration timeout) {
  const int timeout_ms = static_cast<int>(absl::ToInt64Milliseconds(timeout));
  char errstr[512];
  auto conf_for = [&](const char* key, const char* value) {
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap_.c_str(), errstr,
                      sizeof(errstr));
    rd_kafka_conf_set(conf, key, value, errstr, sizeof(errstr));
    return conf;
  };
  rd_kafka_t* rk = rd_kafka_new(
      RD_KAFKA_PRODUCER, conf_for("transactional.id", "outboxd-test-warmup"),
      errstr, sizeof(errstr));
  if (rk == nullptr) return absl::InternalError(errstr);
  rd_kafka_error_t* error = rd_kafka_init_transactions(rk, timeout_ms);
  absl::Status status = absl::OkStatus();
  if (error != nullptr) {
    status = absl::UnavailableError(
        absl::StrCat("init_transactions: ", rd_kafka_error_string(error)));
    rd_kafka_error_destroy(error);
  }
  rd_kafka_destroy(rk);
  if (!status.ok()) return status;
  rk = rd_kafka_new(RD_KAFKA_CONSUMER,
                    conf_for("group.id", "outboxd-test-warmup"), errstr,
                    sizeof(errstr));
  if (rk == nullptr) return absl::InternalError(errstr);
  rd_kafka_topic_partition_list_t* parts = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(parts, "warmup", 0);
  const rd_kafka_resp_err_t err = rd_kafka_committed(rk, parts, timeout_ms);
  rd_kafka_topic_partition_list_destroy(parts);
  rd_kafka_destroy(rk);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return absl::UnavailableError(
        absl::StrCat("committed offsets: ", rd_kafka_err2str(err)));
  }
  return absl::OkStatus();
}

absl::Status KafkaCluster::Stop() {
  if (!running_) return absl::OkStatus();
  running_ = false;
  return Script({"stop"}, kStopTimeout);
}

absl::StatusOr<std::vector<int>> KafkaCluster::Leaders(
    const std::string& topic) {
  ASSIGN_OR_RETURN(Handle rk, NewClient(bootstrap_));
  const rd_kafka_metadata_t* md = nullptr;
  // All topics: asking for one topic by name could auto-create it.
  rd_kafka_resp_err_t err = rd_kafka_metadata(rk.get(), /*all_topics=*/1,
                                              nullptr, &md, kMetadataTimeoutMs);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return absl::UnavailableError(
        absl::StrCat("metadata: ", rd_kafka_err2str(err)));
  }
  std::vector<int> leaders;
  bool found = false;
  for (int t = 0; t < md->topic_cnt; ++t) {
    const rd_kafka_metadata_topic_t& mt = md->topics[t];
    if (topic != mt.topic) continue;
    found = true;
    leaders.assign(static_cast<size_t>(mt.partition_cnt), -1);
    for (int p = 0; p < mt.partition_cnt; ++p) {
      const rd_kafka_metadata_partition_t& mp = mt.partitions[p];
      if (mp.id >= 0 && mp.id < mt.partition_cnt) {
        leaders[static_cast<size_t>(mp.id)] = mp.leader;
      }
    }
  }
  rd_kafka_metadata_destroy(md);
  if (!found) {
    return absl::NotFoundError(absl::StrCat("no topic '", topic, "'"));
  }
  return leaders;
}

absl::StatusOr<int> KafkaCluster::LeaderOf(const std::string& topic,
                                           int partition) {
  ASSIGN_OR_RETURN(std::vector<int> leaders, Leaders(topic));
  if (partition < 0 || partition >= static_cast<int>(leaders.size())) {
    return absl::NotFoundError(
        absl::StrCat("topic '", topic, "' has no partition ", partition));
  }
  return leaders[static_cast<size_t>(partition)];
}

absl::Status KafkaCluster::CreateTopic(
    const std::string& topic, int partitions, int replication_factor,
    const std::map<std::string, std::string>& configs) {
  ASSIGN_OR_RETURN(Handle rk, NewClient(bootstrap_));
  char errstr[512];
  rd_kafka_NewTopic_t* new_topic = rd_kafka_NewTopic_new(
      topic.c_str(), partitions, replication_factor, errstr, sizeof(errstr));
  if (new_topic == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("topic '", topic, "': ", errstr));
  }
  for (const auto& [name, value] : configs) {
    rd_kafka_resp_err_t err =
        rd_kafka_NewTopic_set_config(new_topic, name.c_str(), value.c_str());
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      rd_kafka_NewTopic_destroy(new_topic);
      return absl::InvalidArgumentError(absl::StrCat(
          "topic '", topic, "' config ", name, ": ", rd_kafka_err2str(err)));
    }
  }
  rd_kafka_queue_t* queue = rd_kafka_queue_new(rk.get());
  rd_kafka_CreateTopics(rk.get(), &new_topic, 1, nullptr, queue);
  rd_kafka_NewTopic_destroy(new_topic);
  rd_kafka_event_t* event = rd_kafka_queue_poll(queue, 60000);
  absl::Status status;
  if (event == nullptr) {
    status = absl::DeadlineExceededError(
        absl::StrCat("CreateTopics '", topic, "': no result"));
  } else if (rd_kafka_event_error(event) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    status = absl::UnavailableError(absl::StrCat(
        "CreateTopics '", topic, "': ", rd_kafka_event_error_string(event)));
  } else {
    const rd_kafka_CreateTopics_result_t* result =
        rd_kafka_event_CreateTopics_result(event);
    size_t count = 0;
    const rd_kafka_topic_result_t** results =
        rd_kafka_CreateTopics_result_topics(result, &count);
    for (size_t i = 0; i < count; ++i) {
      if (rd_kafka_topic_result_error(results[i]) !=
          RD_KAFKA_RESP_ERR_NO_ERROR) {
        status = absl::FailedPreconditionError(absl::StrCat(
            "CreateTopics '", topic,
            "': ", rd_kafka_topic_result_error_string(results[i])));
      }
    }
  }
  if (event != nullptr) rd_kafka_event_destroy(event);
  rd_kafka_queue_destroy(queue);
  RETURN_IF_ERROR(status);

  // The controller answers before every partition has a leader.
  absl::Time deadline = absl::Now() + kLeaderWait;
  while (true) {
    absl::StatusOr<std::vector<int>> leaders = Leaders(topic);
    if (leaders.ok() && static_cast<int>(leaders->size()) == partitions) {
      bool all = true;
      for (int leader : *leaders) all = all && leader >= 0;
      if (all) return absl::OkStatus();
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "topic '", topic, "': not every partition has a leader after ",
          absl::FormatDuration(kLeaderWait)));
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
}

}  // namespace outboxd::testing
