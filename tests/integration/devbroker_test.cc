// The dev broker (outbox-devbroker, librdkafka's mock cluster) as the other
// integration tests use it: real Kafka clients (kcat, a librdkafka
// idempotent producer, the harness's KafkaReader) against its bootstrap
// list, its control protocol, and broker outages.
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "tests/harness/child_process.h"
#include "tests/harness/dev_broker.h"
#include "tests/harness/kafka_reader.h"

namespace outboxd::testing {
namespace {

// --- a librdkafka producer for the tests ------------------------------------

struct DeliveryCounts {
  int delivered = 0;
  int failed = 0;
  std::string last_error;
};

void OnDelivery(rd_kafka_t* /*rk*/, const rd_kafka_message_t* msg,
                void* opaque) {
  auto* counts = static_cast<DeliveryCounts*>(opaque);
  if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
    ++counts->delivered;
  } else {
    ++counts->failed;
    counts->last_error = rd_kafka_err2name(msg->err);
  }
}

// Idempotent (acks=all) producer; delivery reports are counted on the
// calling thread by Poll/Flush.
class TestProducer {
 public:
  explicit TestProducer(const std::string& bootstrap) {
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    char errstr[512];
    const std::pair<const char*, const char*> settings[] = {
        {"enable.idempotence", "true"},
        {"acks", "all"},
        {"linger.ms", "5"},
        {"message.max.bytes", "10000000"},
        {"retry.backoff.ms", "50"},
        {"message.timeout.ms", "60000"},
        {"log.connection.close", "false"},
    };
    EXPECT_EQ(rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(),
                                errstr, sizeof(errstr)),
              RD_KAFKA_CONF_OK)
        << errstr;
    for (const auto& [name, value] : settings) {
      EXPECT_EQ(rd_kafka_conf_set(conf, name, value, errstr, sizeof(errstr)),
                RD_KAFKA_CONF_OK)
          << name << ": " << errstr;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, OnDelivery);
    rd_kafka_conf_set_opaque(conf, &counts_);
    rk_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    EXPECT_NE(rk_, nullptr) << errstr;
  }
  ~TestProducer() {
    if (rk_ != nullptr) {
      rd_kafka_flush(rk_, 5000);
      rd_kafka_destroy(rk_);
    }
  }

  void Produce(
      const std::string& topic, const std::string& key,
      const std::string& value,
      const std::vector<std::pair<std::string, std::string>>& headers = {}) {
    rd_kafka_headers_t* hdrs = rd_kafka_headers_new(headers.size());
    for (const auto& [name, header_value] : headers) {
      rd_kafka_header_add(hdrs, name.data(), name.size(), header_value.data(),
                          header_value.size());
    }
    while (true) {
      rd_kafka_resp_err_t err = rd_kafka_producev(
          rk_, RD_KAFKA_V_TOPIC(topic.c_str()),
          RD_KAFKA_V_KEY(key.data(), key.size()),
          RD_KAFKA_V_VALUE(const_cast<char*>(value.data()), value.size()),
          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(hdrs),
          RD_KAFKA_V_END);
      if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
        rd_kafka_poll(rk_, 100);
        continue;
      }
      ASSERT_EQ(err, RD_KAFKA_RESP_ERR_NO_ERROR) << rd_kafka_err2name(err);
      return;  // the producer now owns hdrs
    }
  }
  void Poll(int ms) { rd_kafka_poll(rk_, ms); }
  // True when every message got its delivery report within `timeout_ms`.
  bool Flush(int timeout_ms) {
    return rd_kafka_flush(rk_, timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR;
  }
  int outstanding() { return rd_kafka_outq_len(rk_); }
  const DeliveryCounts& counts() const { return counts_; }

 private:
  rd_kafka_t* rk_ = nullptr;
  DeliveryCounts counts_;
};

// Record values "seq-<n>" => n; -1 for anything else.
int SequenceOf(const ConsumedRecord& record) {
  int seq = -1;
  absl::string_view value = record.value.value_or("");
  if (!absl::ConsumePrefix(&value, "seq-") || !absl::SimpleAtoi(value, &seq)) {
    return -1;
  }
  return seq;
}

// Every sequence 0..count-1 exactly once, and within each partition in
// increasing offset order (records arrive sorted by partition, offset).
void ExpectExactlyOnceInOrder(const std::vector<ConsumedRecord>& records,
                              int count) {
  std::vector<int> seen(count, 0);
  std::map<int32_t, int> last_seq_in_partition;
  for (const ConsumedRecord& record : records) {
    int seq = SequenceOf(record);
    ASSERT_GE(seq, 0) << "unexpected value in partition " << record.partition;
    ASSERT_LT(seq, count);
    ++seen[seq];
    auto [it, inserted] = last_seq_in_partition.emplace(record.partition, seq);
    if (!inserted) {
      EXPECT_LT(it->second, seq)
          << "reordered in partition " << record.partition << " at offset "
          << record.offset;
      it->second = seq;
    }
  }
  int missing = 0, duplicated = 0;
  for (int n : seen) {
    if (n == 0) ++missing;
    if (n > 1) ++duplicated;
  }
  EXPECT_EQ(missing, 0);
  EXPECT_EQ(duplicated, 0);
}

std::string TempPath(const std::string& name) {
  return absl::StrCat(::testing::TempDir(), "/devbroker_test_", getpid(), "_",
                      name);
}

// --- tests over one broker for the whole binary ------------------------------

class DevBrokerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<DevBroker>> broker = DevBroker::Start(3, 4);
    ASSERT_TRUE(broker.ok()) << broker.status();
    broker_ = std::move(*broker).release();
  }
  static void TearDownTestSuite() {
    delete broker_;
    broker_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(broker_, nullptr); }

  static DevBroker* broker_;
};

DevBroker* DevBrokerTest::broker_ = nullptr;

TEST_F(DevBrokerTest, BootstrapListsOneLoopbackListenerPerBroker) {
  std::vector<std::string> servers = absl::StrSplit(broker_->bootstrap(), ',');
  ASSERT_EQ(servers.size(), 3u) << broker_->bootstrap();
  for (const std::string& server : servers) {
    EXPECT_TRUE(absl::StartsWith(server, "127.0.0.1:")) << server;
  }
  // kcat sees the three brokers and nothing else.
  absl::StatusOr<CommandResult> result =
      RunCommand({"kcat", "-L", "-b", broker_->bootstrap(), "-m", "10"},
                 absl::Seconds(30));
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->exit_code, 0) << result->output;
  EXPECT_TRUE(absl::StrContains(result->output, " 3 brokers:"))
      << result->output;
}

TEST_F(DevBrokerTest, KcatRecordsWithHeadersReadBack) {
  ASSERT_TRUE(broker_->CreateTopic("kcat-headers", 3).ok());
  const std::string input = TempPath("kcat_input.txt");
  {
    std::ofstream out(input);
    out << "k1:first\nk2:second\nk3:third\n";
  }
  absl::StatusOr<CommandResult> produced = RunCommand(
      {"kcat", "-P", "-b", broker_->bootstrap(), "-t", "kcat-headers",
       "-K:", "-H", "trace=abc", "-H", "source=kcat", "-l", input},
      absl::Seconds(30));
  std::remove(input.c_str());
  ASSERT_TRUE(produced.ok()) << produced.status();
  ASSERT_EQ(produced->exit_code, 0) << produced->output;

  absl::StatusOr<std::vector<ConsumedRecord>> records =
      ReadTopic(broker_->bootstrap(), "kcat-headers", 3, absl::Seconds(30));
  ASSERT_TRUE(records.ok()) << records.status();
  ASSERT_EQ(records->size(), 3u);
  std::map<std::string, std::string> value_by_key;
  for (const ConsumedRecord& record : *records) {
    EXPECT_EQ(record.topic, "kcat-headers");
    EXPECT_GE(record.partition, 0);
    EXPECT_LT(record.partition, 3);  // the topic's 3, not the default 4
    ASSERT_TRUE(record.value.has_value());
    value_by_key[record.key] = *record.value;
    EXPECT_EQ(record.Header("trace"), "abc");
    EXPECT_EQ(record.Header("source"), "kcat");
    EXPECT_EQ(record.Header("absent"), std::nullopt);
    ASSERT_EQ(record.headers.size(), 2u);
    EXPECT_EQ(record.headers[0].first, "trace");
    EXPECT_TRUE(record.create_time);
    EXPECT_GT(record.timestamp_ms, 1600000000000);  // after 2020
  }
  EXPECT_EQ(value_by_key,
            (std::map<std::string, std::string>{
                {"k1", "first"}, {"k2", "second"}, {"k3", "third"}}));
}

TEST_F(DevBrokerTest, TombstoneAndLargeRecord) {
  ASSERT_TRUE(broker_->CreateTopic("large", 1).ok());
  std::string big(1536 * 1024, 'x');  // 1.5 MiB, over the 1 MB defaults
  big[0] = 'B';
  big.back() = 'E';
  {
    TestProducer producer(broker_->bootstrap());
    producer.Produce("large", "big", big, {{"h", "1"}});
    ASSERT_TRUE(producer.Flush(30000));
    EXPECT_EQ(producer.counts().delivered, 1) << producer.counts().last_error;
  }
  // kcat -Z sends the empty value as null: a tombstone.
  absl::StatusOr<CommandResult> tombstone =
      RunCommand({"sh", "-c",
                  absl::StrCat("printf 'gone:' | kcat -P -b ",
                               broker_->bootstrap(), " -t large -K: -Z")},
                 absl::Seconds(30));
  ASSERT_TRUE(tombstone.ok()) << tombstone.status();
  ASSERT_EQ(tombstone->exit_code, 0) << tombstone->output;

  absl::StatusOr<std::vector<ConsumedRecord>> records =
      ReadTopic(broker_->bootstrap(), "large", 2, absl::Seconds(30));
  ASSERT_TRUE(records.ok()) << records.status();
  ASSERT_EQ(records->size(), 2u);
  EXPECT_EQ((*records)[0].key, "big");
  ASSERT_TRUE((*records)[0].value.has_value());
  EXPECT_EQ((*records)[0].value->size(), big.size());
  EXPECT_TRUE(*(*records)[0].value == big);
  EXPECT_EQ((*records)[0].Header("h"), "1");
  EXPECT_EQ((*records)[1].key, "gone");
  EXPECT_EQ((*records)[1].value, std::nullopt);
  EXPECT_EQ((*records)[1].offset, (*records)[0].offset + 1);
}

TEST_F(DevBrokerTest, ReadingAMissingTopicIsNotFound) {
  absl::StatusOr<std::vector<ConsumedRecord>> records =
      ReadTopic(broker_->bootstrap(), "never-created", 1, absl::Seconds(3));
  EXPECT_EQ(records.status().code(), absl::StatusCode::kNotFound)
      << records.status();
  // Looking did not create it.
  absl::StatusOr<CommandResult> listed =
      RunCommand({"kcat", "-L", "-b", broker_->bootstrap(), "-m", "10"},
                 absl::Seconds(30));
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_FALSE(absl::StrContains(listed->output, "never-created"))
      << listed->output;
}

// A quirk other tests must know: the 2.0.2 mock answers Metadata at a
// version without AllowAutoTopicCreation, so any client naming a topic in a
// Metadata request (kcat -L -t, a consumer, an existence check) creates it
// with 4 partitions.
TEST_F(DevBrokerTest, NamingATopicInMetadataCreatesIt) {
  absl::StatusOr<CommandResult> listed =
      RunCommand({"kcat", "-L", "-b", broker_->bootstrap(), "-t",
                  "named-in-metadata", "-m", "10"},
                 absl::Seconds(30));
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_TRUE(absl::StrContains(listed->output,
                                "topic \"named-in-metadata\" with 4 "
                                "partitions"))
      << listed->output;
}

TEST_F(DevBrokerTest, ProducerAutoCreatesTopicsWithFourPartitions) {
  TestProducer producer(broker_->bootstrap());
  for (int i = 0; i < 40; ++i) {
    producer.Produce("auto-created", absl::StrCat("key-", i),
                     absl::StrCat("seq-", i));
  }
  ASSERT_TRUE(producer.Flush(30000));
  EXPECT_EQ(producer.counts().delivered, 40) << producer.counts().last_error;
  absl::StatusOr<std::vector<ConsumedRecord>> records =
      ReadTopic(broker_->bootstrap(), "auto-created", 40, absl::Seconds(30));
  ASSERT_TRUE(records.ok()) << records.status();
  ExpectExactlyOnceInOrder(*records, 40);
  std::set<int32_t> partitions;
  for (const ConsumedRecord& record : *records) {
    partitions.insert(record.partition);
  }
  EXPECT_EQ(*partitions.rbegin(), 3) << "40 keys should reach partition 3";
}

TEST_F(DevBrokerTest, IdempotentProducerDeliversEverythingAcrossOutages) {
  const std::string topic = "outage";
  ASSERT_TRUE(broker_->CreateTopic(topic, 4).ok());
  constexpr int kPerPhase = 300;
  TestProducer producer(broker_->bootstrap());
  int seq = 0;
  auto produce_some = [&] {
    for (int i = 0; i < kPerPhase; ++i, ++seq) {
      producer.Produce(topic, absl::StrCat("key-", seq % 17),
                       absl::StrCat("seq-", seq));
      if (i % 50 == 0) producer.Poll(0);
    }
  };

  produce_some();
  ASSERT_TRUE(producer.Flush(30000));

  // One broker down: the partitions it leads wait (the mock moves no
  // leaders), the others go on.
  ASSERT_TRUE(broker_->SetBrokerDown(2).ok());
  produce_some();
  producer.Poll(1500);
  ASSERT_TRUE(broker_->SetBrokerUp(2).ok());
  ASSERT_TRUE(producer.Flush(60000)) << producer.outstanding() << " left";

  // Every broker down: nothing can be delivered until they are back.
  ASSERT_TRUE(broker_->SetAllBrokersDown().ok());
  int delivered_before = producer.counts().delivered;
  produce_some();
  producer.Poll(1500);
  EXPECT_EQ(producer.counts().delivered, delivered_before)
      << "delivered while every broker was down";
  ASSERT_TRUE(broker_->SetAllBrokersUp().ok());
  ASSERT_TRUE(producer.Flush(60000)) << producer.outstanding() << " left";

  EXPECT_EQ(producer.counts().delivered, 3 * kPerPhase)
      << producer.counts().last_error;
  EXPECT_EQ(producer.counts().failed, 0) << producer.counts().last_error;

  absl::StatusOr<std::vector<ConsumedRecord>> records =
      ReadTopic(broker_->bootstrap(), topic, 3 * kPerPhase, absl::Seconds(60));
  ASSERT_TRUE(records.ok()) << records.status();
  EXPECT_EQ(records->size(), 3u * kPerPhase);
  ExpectExactlyOnceInOrder(*records, 3 * kPerPhase);
}

TEST_F(DevBrokerTest, SlowBrokerStillDelivers) {
  ASSERT_TRUE(broker_->CreateTopic("slow", 2).ok());
  ASSERT_TRUE(broker_->SetRtt(1, 200).ok());
  ASSERT_TRUE(broker_->SetRtt(2, 200).ok());
  ASSERT_TRUE(broker_->SetRtt(3, 200).ok());
  TestProducer producer(broker_->bootstrap());
  absl::Time start = absl::Now();
  producer.Produce("slow", "k", "seq-0");
  ASSERT_TRUE(producer.Flush(30000));
  absl::Duration took = absl::Now() - start;
  for (int id = 1; id <= 3; ++id) ASSERT_TRUE(broker_->SetRtt(id, 0).ok());
  EXPECT_EQ(producer.counts().delivered, 1);
  // Metadata, InitProducerId and Produce each pay the delay.
  EXPECT_GE(took, absl::Milliseconds(400));
}

TEST_F(DevBrokerTest, BrokerIdsOutsideTheClusterAreRejected) {
  EXPECT_EQ(broker_->SetBrokerDown(4).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(broker_->SetBrokerUp(0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(broker_->SetRtt(1, -5).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(broker_->CreateTopic("bad topic", 1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(broker_->CreateTopic("zero", 0).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(broker_->CreateTopic("twice", 1).ok());
  EXPECT_EQ(broker_->CreateTopic("twice", 1).code(),
            absl::StatusCode::kInvalidArgument);
}

// --- the binary itself: protocol, flags, signals -----------------------------

struct RawBroker {
  std::unique_ptr<ChildProcess> process;
  std::string bootstrap;

  // Sends one command and returns the reply line ("" on timeout).
  std::string Send(const std::string& line) {
    if (!process->WriteStdin(line + "\n")) return "";
    return process->ReadLine(absl::Seconds(10)).value_or("");
  }
};

RawBroker StartRaw(std::vector<std::string> extra_args = {}) {
  ChildOptions options;
  options.argv = {OUTBOXD_DEVBROKER_BINARY, "--brokers=2", "--log-level=warn"};
  options.argv.insert(options.argv.end(), extra_args.begin(), extra_args.end());
  options.pipe_stdin = true;
  RawBroker raw;
  absl::StatusOr<std::unique_ptr<ChildProcess>> process =
      ChildProcess::Start(options);
  EXPECT_TRUE(process.ok()) << process.status();
  if (!process.ok()) return raw;
  raw.process = std::move(*process);
  std::string line = raw.process->ReadLine(absl::Seconds(20)).value_or("");
  absl::string_view view = line;
  EXPECT_TRUE(absl::ConsumePrefix(&view, "BOOTSTRAP=")) << line;
  raw.bootstrap = std::string(view);
  return raw;
}

TEST(DevBrokerProtocolTest, EveryCommandAnswersOneLine) {
  RawBroker raw = StartRaw();
  ASSERT_NE(raw.process, nullptr);
  EXPECT_EQ(raw.Send("topic proto 2"), "ok");
  EXPECT_EQ(raw.Send("topic proto-default"), "ok");
  EXPECT_EQ(raw.Send("down all"), "ok");
  EXPECT_EQ(raw.Send("up all"), "ok");
  EXPECT_EQ(raw.Send("down 1"), "ok");
  EXPECT_EQ(raw.Send("up 1"), "ok");
  EXPECT_EQ(raw.Send("rtt all 0"), "ok");
  EXPECT_EQ(raw.Send("error 0 NOT_LEADER_FOR_PARTITION 2"), "ok");
  EXPECT_EQ(raw.Send("clear 0"), "ok");
  EXPECT_EQ(raw.Send("error 3 -195"), "ok");
  EXPECT_EQ(raw.Send("clear 3"), "ok");
  // Blank lines are ignored: no reply, and the next command is answered.
  ASSERT_TRUE(raw.process->WriteStdin("   \n\n"));
  EXPECT_EQ(raw.process->ReadLine(absl::Milliseconds(300)), std::nullopt);
  EXPECT_EQ(raw.Send("topic after-blank 1"), "ok");

  for (const char* bad :
       {"frobnicate", "topic", "topic a b", "down", "down 3", "up x", "rtt 1",
        "rtt 1 fast", "error", "error 0 NO_SUCH_ERROR", "error x 6",
        "error 0 6 0", "quit now"}) {
    std::string reply = raw.Send(bad);
    EXPECT_TRUE(absl::StartsWith(reply, "error: ")) << bad << " => " << reply;
  }
  // Still serving after the errors.
  EXPECT_EQ(raw.Send("topic after-errors 1"), "ok");

  EXPECT_EQ(raw.Send("quit"), "ok");
  EXPECT_EQ(raw.process->Wait(absl::Seconds(10)), 0);
}

TEST(DevBrokerProtocolTest, InjectedProduceErrorsAreRetriedWithoutLoss) {
  RawBroker raw = StartRaw({"--topic=injected:1"});
  ASSERT_NE(raw.process, nullptr);
  // The next produce requests fail with retriable errors; the idempotent
  // producer retries and keeps order.
  ASSERT_EQ(raw.Send("error 0 NOT_LEADER_FOR_PARTITION 3"), "ok");
  ASSERT_EQ(raw.Send("error 0 -195 2"), "ok");  // _TRANSPORT: disconnect
  TestProducer producer(raw.bootstrap);
  for (int i = 0; i < 100; ++i) {
    producer.Produce("injected", "k", absl::StrCat("seq-", i));
    if (i % 10 == 0) producer.Poll(20);
  }
  ASSERT_TRUE(producer.Flush(60000));
  EXPECT_EQ(producer.counts().delivered, 100) << producer.counts().last_error;
  absl::StatusOr<std::vector<ConsumedRecord>> records =
      ReadTopic(raw.bootstrap, "injected", 100, absl::Seconds(30));
  ASSERT_TRUE(records.ok()) << records.status();
  ASSERT_EQ(records->size(), 100u);
  ExpectExactlyOnceInOrder(*records, 100);
  EXPECT_EQ(raw.Send("quit"), "ok");
}

TEST(DevBrokerProtocolTest, SigtermExitsZero) {
  RawBroker raw = StartRaw();
  ASSERT_NE(raw.process, nullptr);
  raw.process->Signal(SIGTERM);
  EXPECT_EQ(raw.process->Wait(absl::Seconds(10)), 0);
}

TEST(DevBrokerProtocolTest, StdinEofKeepsRunningUnlessAsked) {
  RawBroker raw = StartRaw();
  ASSERT_NE(raw.process, nullptr);
  raw.process->CloseStdin();
  EXPECT_EQ(raw.process->Wait(absl::Seconds(1)), std::nullopt);
  // Still a working cluster.
  absl::StatusOr<CommandResult> listed = RunCommand(
      {"kcat", "-L", "-b", raw.bootstrap, "-m", "10"}, absl::Seconds(30));
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->exit_code, 0) << listed->output;
  raw.process->Signal(SIGINT);
  EXPECT_EQ(raw.process->Wait(absl::Seconds(10)), 0);

  RawBroker eof = StartRaw({"--exit-on-eof"});
  ASSERT_NE(eof.process, nullptr);
  eof.process->CloseStdin();
  EXPECT_EQ(eof.process->Wait(absl::Seconds(10)), 0);
}

TEST(DevBrokerProtocolTest, ControlFifoTakesCommands) {
  const std::string fifo = TempPath("control.fifo");
  RawBroker raw = StartRaw({"--control=" + fifo});
  ASSERT_NE(raw.process, nullptr);
  {
    std::ofstream control(fifo);
    control << "topic via-fifo 2\nnonsense\n";
  }
  EXPECT_EQ(raw.process->ReadLine(absl::Seconds(10)), "ok");
  std::optional<std::string> second = raw.process->ReadLine(absl::Seconds(10));
  ASSERT_TRUE(second.has_value());
  EXPECT_TRUE(absl::StartsWith(*second, "error: ")) << *second;
  absl::StatusOr<CommandResult> listed = RunCommand(
      {"kcat", "-L", "-b", raw.bootstrap, "-t", "via-fifo", "-m", "10"},
      absl::Seconds(30));
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_TRUE(absl::StrContains(listed->output, "with 2 partitions"))
      << listed->output;
  EXPECT_EQ(raw.Send("quit"), "ok");
  EXPECT_EQ(raw.process->Wait(absl::Seconds(10)), 0);
  std::remove(fifo.c_str());
}

TEST(DevBrokerProtocolTest, FlagsHelpAndErrors) {
  absl::StatusOr<CommandResult> help =
      RunCommand({OUTBOXD_DEVBROKER_BINARY, "--help"}, absl::Seconds(10));
  ASSERT_TRUE(help.ok()) << help.status();
  EXPECT_EQ(help->exit_code, 0);
  for (const char* flag : {"--brokers", "--partitions", "--topic", "--control",
                           "--exit-on-eof", "--log-level"}) {
    EXPECT_TRUE(absl::StrContains(help->output, flag)) << flag;
  }

  for (std::vector<std::string> args :
       {std::vector<std::string>{"--no-such-flag"},
        std::vector<std::string>{"--brokers=zero"},
        std::vector<std::string>{"--brokers=0"},
        std::vector<std::string>{"--partitions=-1"},
        std::vector<std::string>{"--log-level=loud"},
        std::vector<std::string>{"stray"}}) {
    args.insert(args.begin(), OUTBOXD_DEVBROKER_BINARY);
    absl::StatusOr<CommandResult> bad = RunCommand(args, absl::Seconds(10));
    ASSERT_TRUE(bad.ok()) << bad.status();
    EXPECT_EQ(bad->exit_code, 2) << args[1] << ": " << bad->output;
    EXPECT_EQ(std::count(bad->output.begin(), bad->output.end(), '\n'), 1)
        << args[1] << ": " << bad->output;
  }
}

}  // namespace
}  // namespace outboxd::testing
