// KafkaCluster: a real Apache Kafka cluster (KRaft, 1 or 3 combined
// broker+controller JVMs on 127.0.0.1) for tests, run through
// scripts/kafka-cluster.sh. The reader helpers of kafka_reader.h work
// against its bootstrap() as against the dev broker's.
//
// A JVM costs seconds to start, so a test binary normally shares one
// cluster across its tests: KafkaCluster::Shared(options) starts it on first
// use and stops it when the binary exits. If the binary dies without
// stopping it, the script's watchdog stops the nodes within a second or two.
#ifndef OUTBOXD_TESTS_HARNESS_KAFKA_CLUSTER_H_
#define OUTBOXD_TESTS_HARNESS_KAFKA_CLUSTER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace outboxd::testing {

struct KafkaClusterOptions {
  int nodes = 1;  // 1 or 3
  // num.partitions: partitions of auto-created topics.
  int partitions = 1;
  bool auto_create_topics = true;
};

class KafkaCluster {
 public:
  // Formats and starts the nodes in a fresh directory under /tmp and waits
  // until every node is ready. 3 nodes: replication factor 3 and
  // min.insync.replicas=2 by default (internal topics included); 1 node: 1.
  static absl::StatusOr<std::unique_ptr<KafkaCluster>> Start(
      const KafkaClusterOptions& options = {});
  // The cluster of this test binary with these options, started on first
  // use and stopped at exit. Not thread-safe (gtest runs tests on one
  // thread).
  static absl::StatusOr<KafkaCluster*> Shared(
      const KafkaClusterOptions& options = {});

  // Stop().
  ~KafkaCluster();
  KafkaCluster(const KafkaCluster&) = delete;
  KafkaCluster& operator=(const KafkaCluster&) = delete;

  const std::string& bootstrap() const { return bootstrap_; }
  int nodes() const { return options_.nodes; }
  const std::string& dir() const { return dir_; }
  // The log file of node `node` (appended to across restarts).
  std::string NodeLog(int node) const;
  // The folder of the rig's jars (kafka-clients among them), for
  // `java -cp "<libs>/*"`.
  std::string LibsDir() const;
  // Time from the start command to every node being ready.
  absl::Duration start_time() const { return start_time_; }

  // Creates `topic` with these topic configs and waits until every
  // partition has a leader. replication_factor -1: the cluster's default.
  absl::Status CreateTopic(
      const std::string& topic, int partitions, int replication_factor = -1,
      const std::map<std::string, std::string>& configs = {});
  // SIGKILL to node `node` (node ids are 0..nodes()-1); returns once it is
  // gone.
  absl::Status KillNode(int node);
  // Starts node `node` again (killing it first if it runs) on its old
  // ports and data and waits until it is ready.
  absl::Status RestartNode(int node);
  // The node id leading `topic`'s `partition`, as the cluster's metadata
  // says now; -1 while it has no leader.
  absl::StatusOr<int> LeaderOf(const std::string& topic, int partition);
  // The leader of each partition of `topic` (index = partition).
  absl::StatusOr<std::vector<int>> Leaders(const std::string& topic);

  // Makes the cluster's transaction coordinator and group coordinator
  // ready: a fresh cluster creates its transaction state and offsets topics
  // on first use, which takes a while on a loaded machine, so a test waits
  // for it once here rather than in each outboxd's start (init_transactions
  // of a throwaway transactional producer, then a committed-offsets
  // lookup of a throwaway group).
  absl::Status WarmUpCoordinators(absl::Duration timeout = absl::Minutes(3));

  // Kills every node and removes the data directory. Idempotent.
  absl::Status Stop();

 private:
  KafkaCluster() = default;
  absl::Status Script(const std::vector<std::string>& args,
                      absl::Duration timeout);

  KafkaClusterOptions options_;
  std::string dir_;
  std::string bootstrap_;
  absl::Duration start_time_;
  bool running_ = false;
};

}  // namespace outboxd::testing

#endif  // OUTBOXD_TESTS_HARNESS_KAFKA_CLUSTER_H_
