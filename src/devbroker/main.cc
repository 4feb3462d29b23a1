// outbox-devbroker: a development Kafka cluster on 127.0.0.1 for tests and
// demos (docs/ARCHITECTURE.md, "Test rigs"). It hosts librdkafka's mock
// cluster, prints one `BOOTSTRAP=<host:port,...>` line on stdout once the
// brokers listen, then serves control commands, one per line, from stdin and
// optionally from a FIFO (--control). Every command gets exactly one reply line
// on stdout, `ok` or `error: <reason>` (blank lines are ignored):
//
//   topic <name> [partitions]           create a topic (replication min(3,N))
//   down <broker_id|all>                broker closes connections, refuses new
//   up <broker_id|all>                  broker accepts connections again
//   rtt <broker_id|all> <ms>            delay every response by ms
//   error <api_key> <error_code> [count]  next `count` (1) requests of that
//                                       API fail with the code (cluster-wide)
//   clear <api_key>                     drop pushed errors for that API
//   quit                                reply ok, exit 0
//
// Single-threaded apart from librdkafka's own threads: the main loop polls
// stdin, the FIFO and a signalfd; the mock cluster's control functions are
// thread-safe (they enqueue ops to the mock's thread).
#include <errno.h>
#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "flags/flags.h"

ABSL_FLAG(int, brokers, 3, "Number of mock brokers (ids 1..N), 1 to 32.");
ABSL_FLAG(int, partitions, 4,
          "Partition count for `topic <name>` and --topic entries given "
          "without a count. Topics auto-created by a producer's Metadata "
          "request always get 4 partitions: librdkafka 2.0.2's mock cluster "
          "has no setting for that, so create topics explicitly when another "
          "count matters.");
ABSL_FLAG(std::vector<std::string>, topic, {},
          "Topics to create before BOOTSTRAP is printed, comma-separated "
          "NAME or NAME:PARTITIONS.");
ABSL_FLAG(std::string, control, "",
          "Also read commands from this FIFO (created when absent). Replies "
          "still go to stdout.");
ABSL_FLAG(bool, exit_on_eof, false,
          "Exit 0 when stdin reaches EOF. Off by default so the broker can "
          "run in the background with stdin from /dev/null.");
ABSL_FLAG(std::string, log_level, "info",
          "Log level for stderr: trace, debug, info, warn, error, critical, "
          "off.");

namespace outboxd::devbroker {
namespace {

constexpr int kMaxBrokers = 32;
constexpr int kMaxPartitions = 10000;

// --- flags ------------------------------------------------------------------

constexpr char kUsage[] =
    "outbox-devbroker: runs librdkafka's mock Kafka cluster on 127.0.0.1, "
    "prints\n"
    "BOOTSTRAP=<host:port,...> on stdout, then reads commands from stdin\n"
    "(and --control), one per line, answering `ok` or `error: <reason>`:\n"
    "  topic <name> [partitions]\n"
    "  down <broker_id|all>      up <broker_id|all>\n"
    "  rtt <broker_id|all> <ms>\n"
    "  error <api_key> <error_code|ERROR_NAME> [count]\n"
    "  clear <api_key>\n"
    "  quit\n"
    "SIGTERM/SIGINT exit 0.\n\n"
    "usage: outbox-devbroker [flags]";

// A --topic entry: NAME or NAME:PARTITIONS.
struct TopicEntry {
  std::string name;
  int partitions;
};

// The flags' values that parse but make no sense, as one line each.
absl::StatusOr<std::vector<TopicEntry>> CheckFlags() {
  int brokers = absl::GetFlag(FLAGS_brokers);
  if (brokers < 1 || brokers > kMaxBrokers) {
    return absl::InvalidArgumentError(
        absl::StrCat("--brokers must be 1..", kMaxBrokers, ", got ", brokers));
  }
  int partitions = absl::GetFlag(FLAGS_partitions);
  if (partitions < 1 || partitions > kMaxPartitions) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--partitions must be 1..", kMaxPartitions, ", got ", partitions));
  }
  std::vector<TopicEntry> topics;
  for (const std::string& entry : absl::GetFlag(FLAGS_topic)) {
    std::pair<std::string, std::string> parts =
        absl::StrSplit(entry, absl::MaxSplits(':', 1));
    TopicEntry topic{parts.first, partitions};
    if (!parts.second.empty() &&
        (!absl::SimpleAtoi(parts.second, &topic.partitions) ||
         topic.partitions < 1 || topic.partitions > kMaxPartitions)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--topic ", entry, ": bad partition count"));
    }
    topics.push_back(std::move(topic));
  }
  return topics;
}

// --- the cluster ------------------------------------------------------------

void LogFromRdkafka(const rd_kafka_t* /*rk*/, int level, const char* fac,
                    const char* buf) {
  // syslog levels: 0..3 error, 4 warning, 5..6 info, 7 debug.
  if (level <= 3) {
    spdlog::error("rdkafka {}: {}", fac, buf);
  } else if (level == 4) {
    spdlog::warn("rdkafka {}: {}", fac, buf);
  } else if (level <= 6) {
    spdlog::info("rdkafka {}: {}", fac, buf);
  } else {
    spdlog::debug("rdkafka {}: {}", fac, buf);
  }
}

// Owns the rd_kafka_t that hosts the mock cluster and the cluster itself.
// The cluster must be destroyed before the handle.
class MockCluster {
 public:
  static absl::StatusOr<std::unique_ptr<MockCluster>> Create(int brokers) {
    char errstr[512];
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, LogFromRdkafka);
    // No bootstrap.servers: this handle only hosts the cluster.
    rd_kafka_t* rk =
        rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (rk == nullptr) {
      rd_kafka_conf_destroy(conf);
      return absl::InternalError(absl::StrCat("rd_kafka_new: ", errstr));
    }
    rd_kafka_mock_cluster_t* mcluster = rd_kafka_mock_cluster_new(rk, brokers);
    if (mcluster == nullptr) {
      rd_kafka_destroy(rk);
      return absl::UnavailableError(
          "rd_kafka_mock_cluster_new failed (see rdkafka log above)");
    }
    return std::unique_ptr<MockCluster>(new MockCluster(rk, mcluster, brokers));
  }

  ~MockCluster() {
    rd_kafka_mock_cluster_destroy(mcluster_);
    rd_kafka_destroy(rk_);
  }
  MockCluster(const MockCluster&) = delete;
  MockCluster& operator=(const MockCluster&) = delete;

  std::string bootstraps() const {
    return rd_kafka_mock_cluster_bootstraps(mcluster_);
  }
  int brokers() const { return brokers_; }
  rd_kafka_mock_cluster_t* get() { return mcluster_; }

 private:
  MockCluster(rd_kafka_t* rk, rd_kafka_mock_cluster_t* mcluster, int brokers)
      : rk_(rk), mcluster_(mcluster), brokers_(brokers) {}

  rd_kafka_t* rk_;
  rd_kafka_mock_cluster_t* mcluster_;
  int brokers_;
};

absl::Status KafkaStatus(absl::string_view what, rd_kafka_resp_err_t err) {
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      what, ": ", rd_kafka_err2name(err), " (", rd_kafka_err2str(err), ")"));
}

absl::StatusOr<int> ParseInt(absl::string_view text, absl::string_view what,
                             int min, int max) {
  int value;
  if (!absl::SimpleAtoi(text, &value) || value < min || value > max) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " must be an integer in ", min, "..", max, ", got '", text, "'"));
  }
  return value;
}

// "all" => -1 (the mock's wildcard), else 1..brokers.
absl::StatusOr<int32_t> ParseBrokerId(absl::string_view text, int brokers) {
  if (text == "all") return -1;
  return ParseInt(text, "broker id", 1, brokers);
}

// A numeric Kafka error code (negative for librdkafka-internal ones such as
// -195 _TRANSPORT) or its name as rd_kafka_err2name prints it.
absl::StatusOr<rd_kafka_resp_err_t> ParseErrorCode(absl::string_view text) {
  int code;
  if (absl::SimpleAtoi(text, &code)) {
    return static_cast<rd_kafka_resp_err_t>(code);
  }
  const rd_kafka_err_desc* descs;
  size_t count;
  rd_kafka_get_err_descs(&descs, &count);
  std::string wanted = absl::AsciiStrToUpper(text);
  absl::string_view wanted_view = wanted;
  absl::ConsumePrefix(&wanted_view, "RD_KAFKA_RESP_ERR_");
  for (size_t i = 0; i < count; ++i) {
    if (descs[i].name != nullptr && wanted_view == descs[i].name) {
      return descs[i].code;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown error code '", text, "'"));
}

absl::Status CreateTopic(MockCluster& cluster, const std::string& name,
                         int partitions) {
  if (name.empty() || name.size() > 249 ||
      name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRS"
                             "TUVWXYZ0123456789._-") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid topic name '", name, "'"));
  }
  int replication = std::min(3, cluster.brokers());
  RETURN_IF_ERROR(
      KafkaStatus(absl::StrCat("create topic ", name),
                  rd_kafka_mock_topic_create(cluster.get(), name.c_str(),
                                             partitions, replication)));
  spdlog::info("created topic {} with {} partitions", name, partitions);
  return absl::OkStatus();
}

// What the main loop should do after a command.
enum class After { kContinue, kQuit };

absl::StatusOr<After> RunCommand(MockCluster& cluster, absl::string_view line) {
  std::vector<absl::string_view> words =
      absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
  if (words.empty()) return absl::InvalidArgumentError("empty command");
  absl::string_view cmd = words[0];
  auto want_args = [&](size_t min, size_t max,
                       absl::string_view usage) -> absl::Status {
    if (words.size() - 1 < min || words.size() - 1 > max) {
      return absl::InvalidArgumentError(absl::StrCat("usage: ", usage));
    }
    return absl::OkStatus();
  };

  if (cmd == "quit") {
    RETURN_IF_ERROR(want_args(0, 0, "quit"));
    return After::kQuit;
  }
  if (cmd == "topic") {
    RETURN_IF_ERROR(want_args(1, 2, "topic <name> [partitions]"));
    int partitions = absl::GetFlag(FLAGS_partitions);
    if (words.size() == 3) {
      ASSIGN_OR_RETURN(partitions,
                       ParseInt(words[2], "partitions", 1, kMaxPartitions));
    }
    RETURN_IF_ERROR(CreateTopic(cluster, std::string(words[1]), partitions));
    return After::kContinue;
  }
  if (cmd == "down" || cmd == "up") {
    RETURN_IF_ERROR(want_args(1, 1, absl::StrCat(cmd, " <broker_id|all>")));
    ASSIGN_OR_RETURN(int32_t id, ParseBrokerId(words[1], cluster.brokers()));
    rd_kafka_resp_err_t err =
        cmd == "down" ? rd_kafka_mock_broker_set_down(cluster.get(), id)
                      : rd_kafka_mock_broker_set_up(cluster.get(), id);
    RETURN_IF_ERROR(KafkaStatus(cmd, err));
    spdlog::info("broker {} {}", std::string(words[1]), std::string(cmd));
    return After::kContinue;
  }
  if (cmd == "rtt") {
    RETURN_IF_ERROR(want_args(2, 2, "rtt <broker_id|all> <ms>"));
    ASSIGN_OR_RETURN(int32_t id, ParseBrokerId(words[1], cluster.brokers()));
    ASSIGN_OR_RETURN(int ms, ParseInt(words[2], "rtt ms", 0, 3600 * 1000));
    RETURN_IF_ERROR(KafkaStatus(
        "rtt", rd_kafka_mock_broker_set_rtt(cluster.get(), id, ms)));
    spdlog::info("broker {} rtt {} ms", std::string(words[1]), ms);
    return After::kContinue;
  }
  if (cmd == "error") {
    RETURN_IF_ERROR(
        want_args(2, 3, "error <api_key> <error_code|ERROR_NAME> [count]"));
    ASSIGN_OR_RETURN(int api_key, ParseInt(words[1], "api_key", 0, 1000));
    ASSIGN_OR_RETURN(rd_kafka_resp_err_t code, ParseErrorCode(words[2]));
    int count = 1;
    if (words.size() == 4) {
      ASSIGN_OR_RETURN(count, ParseInt(words[3], "count", 1, 1000000));
    }
    std::vector<rd_kafka_resp_err_t> errors(static_cast<size_t>(count), code);
    rd_kafka_mock_push_request_errors_array(cluster.get(),
                                            static_cast<int16_t>(api_key),
                                            errors.size(), errors.data());
    spdlog::info("next {} requests of api {} fail with {}", count, api_key,
                 rd_kafka_err2name(code));
    return After::kContinue;
  }
  if (cmd == "clear") {
    RETURN_IF_ERROR(want_args(1, 1, "clear <api_key>"));
    ASSIGN_OR_RETURN(int api_key, ParseInt(words[1], "api_key", 0, 1000));
    rd_kafka_mock_clear_request_errors(cluster.get(),
                                       static_cast<int16_t>(api_key));
    return After::kContinue;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown command '", cmd,
                   "' (topic, down, up, rtt, error, clear, quit)"));
}

// Writes one reply line to stdout, unbuffered so a reader sees it at once.
void Reply(const std::string& line) {
  std::string out = line + "\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
}

// Accumulates bytes from one input and hands out complete lines.
struct LineSource {
  std::string name;
  int fd = -1;
  std::string buffer;
};

absl::Status OpenControlFifo(const std::string& path, int* fd) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT || mkfifo(path.c_str(), 0600) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("control fifo ", path, ": ", std::strerror(errno)));
    }
  } else if (!S_ISFIFO(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("control path ", path, " exists and is not a FIFO"));
  }
  // O_RDWR: we hold a writer ourselves, so the FIFO never reports EOF when
  // a client closes it and we need not reopen it.
  *fd = open(path.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (*fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("open ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

// Serves until quit, a stop signal or (--exit-on-eof) the end of stdin.
absl::Status Run(const std::vector<TopicEntry>& topics) {
  // Block the stop signals before librdkafka starts threads (they inherit
  // the mask) and take them through a signalfd in the main loop.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  int signal_fd = signalfd(-1, &stop_signals, SFD_CLOEXEC);
  if (signal_fd < 0) {
    return absl::InternalError(
        absl::StrCat("signalfd: ", std::strerror(errno)));
  }

  LineSource stdin_source{"stdin", STDIN_FILENO, {}};
  LineSource control_source{"control", -1, {}};
  const std::string control_path = absl::GetFlag(FLAGS_control);
  if (!control_path.empty()) {
    RETURN_IF_ERROR(OpenControlFifo(control_path, &control_source.fd));
  }

  ASSIGN_OR_RETURN(std::unique_ptr<MockCluster> cluster,
                   MockCluster::Create(absl::GetFlag(FLAGS_brokers)));
  for (const TopicEntry& topic : topics) {
    absl::Status status = CreateTopic(*cluster, topic.name, topic.partitions);
    if (!status.ok()) {
      return absl::Status(status.code(), absl::StrCat("--topic ", topic.name,
                                                      ": ", status.message()));
    }
  }

  const std::string bootstraps = cluster->bootstraps();
  spdlog::info("mock cluster with {} brokers listening on {}",
               cluster->brokers(), bootstraps);
  Reply(absl::StrCat("BOOTSTRAP=", bootstraps));

  const bool exit_on_eof = absl::GetFlag(FLAGS_exit_on_eof);
  while (true) {
    std::vector<pollfd> fds;
    std::vector<LineSource*> sources;
    fds.push_back({signal_fd, POLLIN, 0});
    for (LineSource* source : {&stdin_source, &control_source}) {
      if (source->fd >= 0) {
        fds.push_back({source->fd, POLLIN, 0});
        sources.push_back(source);
      }
    }
    if (poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("poll: ", std::strerror(errno)));
    }
    if (fds[0].revents & POLLIN) {
      signalfd_siginfo info;
      if (read(signal_fd, &info, sizeof(info)) == sizeof(info)) {
        spdlog::info("signal {}: shutting down", strsignal(info.ssi_signo));
      }
      return absl::OkStatus();
    }
    for (size_t i = 0; i < sources.size(); ++i) {
      if (fds[i + 1].revents == 0) continue;
      LineSource* source = sources[i];
      char buf[4096];
      ssize_t n = read(source->fd, buf, sizeof(buf));
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        spdlog::info("{} closed", source->name);
        if (source->fd != STDIN_FILENO) close(source->fd);
        source->fd = -1;
        if (source == &stdin_source && exit_on_eof) return absl::OkStatus();
        continue;
      }
      source->buffer.append(buf, static_cast<size_t>(n));
      size_t newline;
      while ((newline = source->buffer.find('\n')) != std::string::npos) {
        std::string line = source->buffer.substr(0, newline);
        source->buffer.erase(0, newline + 1);
        if (absl::StripAsciiWhitespace(line).empty()) continue;
        spdlog::debug("{} command: {}", source->name, line);
        absl::StatusOr<After> after = RunCommand(*cluster, line);
        if (!after.ok()) {
          Reply(absl::StrCat("error: ", after.status().message()));
          continue;
        }
        Reply("ok");
        if (*after == After::kQuit) return absl::OkStatus();
      }
    }
  }
}

}  // namespace
}  // namespace outboxd::devbroker

int main(int argc, char** argv) {
  using outboxd::devbroker::TopicEntry;
  const outboxd::flags::Program program = {"outbox-devbroker",
                                           OUTBOXD_VERSION,
                                           outboxd::devbroker::kUsage,
                                           "devbroker/main.cc",
                                           {},
                                           &FLAGS_log_level};
  std::vector<TopicEntry> topics;
  return outboxd::flags::RunMain(
      argc, argv, program,
      [&](const outboxd::flags::ParsedCommandLine&) -> absl::Status {
        ASSIGN_OR_RETURN(topics, outboxd::devbroker::CheckFlags());
        return absl::OkStatus();
      },
      [&] { return outboxd::devbroker::Run(topics); });
}
