#include "kafka/producer_stats.h"

#include <optional>

#include "gtest/gtest.h"

namespace outboxd {
namespace {

// A document librdkafka 2.0.2 emitted (a producer that sent 10 records,
// one per flush, to a mock cluster), trimmed of the window statistics and
// of fields outboxd does not read, plus a bootstrap entry that is down.
constexpr char kCaptured[] = R"json({
 "name": "rdkafka#producer-2", "client_id": "rdkafka", "type": "producer",
 "ts": 243528051, "time": 1796666172, "age": 1519093, "replyq": 0,
 "msg_cnt": 0, "msg_size": 0, "msg_max": 100000,
 "tx": 14, "tx_bytes": 1297, "rx": 14, "rx_bytes": 821,
 "txmsgs": 10, "txmsg_bytes": 10, "rxmsgs": 0, "rxmsg_bytes": 0,
 "brokers": {
  "localhost:9092/bootstrap": {
   "name": "localhost:9092/bootstrap", "nodeid": -1,
   "nodename": "localhost:9092", "source": "configured", "state": "DOWN",
   "tx": 2, "txbytes": 120, "rx": 2,
   "req": {"Produce": 0, "Metadata": 1, "ApiVersion": 1}, "toppars": {}},
  "127.0.0.1:38797/1": {
   "name": "127.0.0.1:38797/1", "nodeid": 1,
   "nodename": "127.0.0.1:38797", "source": "configured", "state": "UP",
   "stateage": 1518236, "outbuf_cnt": 0, "waitresp_cnt": 0,
   "tx": 14, "txbytes": 1297, "txerrs": 0, "txretries": 0, "rx": 14,
   "req": {"Produce": 10, "ListOffsets": 0, "Metadata": 1,
           "FindCoordinator": 0, "ApiVersion": 2, "InitProducerId": 1,
           "AddPartitionsToTxn": 0, "EndTxn": 0},
   "toppars": {"t-0": {"topic": "t", "partition": 0},
               "t-1": {"topic": "t", "partition": 1}}}},
 "topics": {"t": {"topic": "t", "partitions": {
   "0": {"partition": 0, "txmsgs": 5, "msgs": 5},
   "1": {"partition": 1, "txmsgs": 5, "msgs": 5}}}},
 "eos": {"idemp_state": "Assigned", "producer_id": 1, "producer_epoch": 0}
})json";

TEST(ProducerStatsTest, ReadsRequestsRecordsAndBrokersUp) {
  std::optional<ProducerStats> stats = ParseProducerStats(kCaptured);
  ASSERT_TRUE(stats.has_value());
  EXPECT_EQ(stats->brokers_up, 1);
  EXPECT_EQ(stats->produce_requests, 10);
  EXPECT_EQ(stats->records_sent, 10);
}

TEST(ProducerStatsTest, SumsProduceRequestsOverBrokers) {
  std::optional<ProducerStats> stats = ParseProducerStats(R"({
    "txmsgs": 900,
    "brokers": {"a/1": {"state": "UP", "req": {"Produce": 7}},
                "b/2": {"state": "UP", "req": {"Produce": 5, "Fetch": 3}},
                "c/3": {"state": "CONNECT"}}})");
  ASSERT_TRUE(stats.has_value());
  EXPECT_EQ(stats->brokers_up, 2);
  EXPECT_EQ(stats->produce_requests, 12);
  EXPECT_EQ(stats->records_sent, 900);
}

TEST(ProducerStatsTest, NotAStatisticsDocument) {
  EXPECT_FALSE(ParseProducerStats("").has_value());
  EXPECT_FALSE(ParseProducerStats("{\"brokers\": ").has_value());
  EXPECT_FALSE(ParseProducerStats("[1, 2]").has_value());
  EXPECT_FALSE(ParseProducerStats("{\"txmsgs\": 3}").has_value());
  // Fields of the wrong type count nothing.
  std::optional<ProducerStats> odd = ParseProducerStats(
      R"({"txmsgs": "many", "brokers": {"a": 1, "b": {"req": []}}})");
  ASSERT_TRUE(odd.has_value());
  EXPECT_EQ(odd->produce_requests, 0);
  EXPECT_EQ(odd->records_sent, 0);
}

TEST(ProducerCountersTest, IncrementsNeverGoBack) {
  ProducerCounters counters;
  ProducerStats stats;
  stats.produce_requests = 10;
  stats.records_sent = 40;
  ProducerCounters::Increment a = counters.Advance(stats);
  EXPECT_EQ(a.produce_requests, 10);
  EXPECT_EQ(a.records_sent, 40);
  stats.produce_requests = 15;
  stats.records_sent = 100;
  ProducerCounters::Increment b = counters.Advance(stats);
  EXPECT_EQ(b.produce_requests, 5);
  EXPECT_EQ(b.records_sent, 60);
  // A broker handle went away with its counts: nothing, a new base.
  stats.produce_requests = 3;
  ProducerCounters::Increment c = counters.Advance(stats);
  EXPECT_EQ(c.produce_requests, 0);
  EXPECT_EQ(c.records_sent, 0);
  stats.produce_requests = 4;
  EXPECT_EQ(counters.Advance(stats).produce_requests, 1);
}

}  // namespace
}  // namespace outboxd
