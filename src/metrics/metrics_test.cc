#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "metrics/http_server.h"
#include "metrics/outboxd_metrics.h"

namespace outboxd::metrics {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// The whole exposition of outboxd's metrics: every name, type, help text,
// label name and histogram bucket, in registration order. A change here is
// a change for every dashboard and alert that reads outboxd.
TEST(OutboxdMetricsTest, ExpositionIsExact) {
  Registry r;
  OutboxdMetrics m(&r);
  SourceMetrics& s = m.ForSource();
  m.start_time_seconds->Set(1700000000.5);
  s.PublishedTo("b").Increment();
  s.PublishedTo("a\"q\\x\ny").Increment(2);
  m.source_queries->Labels({"poll"}).Increment();
  s.commit_to_ack_seconds->Observe(0.0025);  // le is inclusive
  s.commit_to_ack_seconds->Observe(0.003);
  s.confirmed_lsn->Set(23456789012.0);
  m.delivery_errors->Increment(-5);  // ignored: counters only grow
  s.dead_lettered->Increment(3);
  EXPECT_EQ(
      r.Exposition(),
      R"(# HELP outboxd_events_published_total Events acknowledged by the Kafka broker, by topic
# TYPE outboxd_events_published_total counter
outboxd_events_published_total{topic="a\"q\\x\ny"} 2
outboxd_events_published_total{topic="b"} 1
# HELP outboxd_delivery_errors_total Delivery reports with an error (the pipeline stops on them)
# TYPE outboxd_delivery_errors_total counter
outboxd_delivery_errors_total 0
# HELP outboxd_events_dead_lettered_total Invalid events produced to the dead-letter topic
# TYPE outboxd_events_dead_lettered_total counter
outboxd_events_dead_lettered_total 3
# HELP outboxd_invalid_events_total Rows or messages that could not become an event
# TYPE outboxd_invalid_events_total counter
outboxd_invalid_events_total 0
# HELP outboxd_reserved_headers_dropped_total Reserved header names (id, eventType, outbox.*) in a headers column, dropped from the record
# TYPE outboxd_reserved_headers_dropped_total counter
outboxd_reserved_headers_dropped_total 0
# HELP outboxd_events_in_flight Events handed to the producer and not yet acknowledged
# TYPE outboxd_events_in_flight gauge
outboxd_events_in_flight 0
# HELP outboxd_confirmed_lsn Flush position last confirmed to PostgreSQL, as a byte position
# TYPE outboxd_confirmed_lsn gauge
outboxd_confirmed_lsn 23456789012
# HELP outboxd_server_wal_end_lsn Newest WAL position the server reported (XLogData/keepalive walEnd)
# TYPE outboxd_server_wal_end_lsn gauge
outboxd_server_wal_end_lsn 0
# HELP outboxd_slot_lag_bytes Server WAL end minus confirmed position: WAL the slot retains because of outboxd
# TYPE outboxd_slot_lag_bytes gauge
outboxd_slot_lag_bytes 0
# HELP outboxd_commit_to_ack_seconds Time from an event's commit in PostgreSQL to its acknowledgement by Kafka
# TYPE outboxd_commit_to_ack_seconds histogram
outboxd_commit_to_ack_seconds_count 2
outboxd_commit_to_ack_seconds_sum 0.0055
outboxd_commit_to_ack_seconds_bucket{le="0.001"} 0
outboxd_commit_to_ack_seconds_bucket{le="0.0025"} 1
outboxd_commit_to_ack_seconds_bucket{le="0.005"} 2
outboxd_commit_to_ack_seconds_bucket{le="0.01"} 2
outboxd_commit_to_ack_seconds_bucket{le="0.025"} 2
outboxd_commit_to_ack_seconds_bucket{le="0.05"} 2
outboxd_commit_to_ack_seconds_bucket{le="0.1"} 2
outboxd_commit_to_ack_seconds_bucket{le="0.25"} 2
outboxd_commit_to_ack_seconds_bucket{le="0.5"} 2
outboxd_commit_to_ack_seconds_bucket{le="1"} 2
outboxd_commit_to_ack_seconds_bucket{le="2.5"} 2
outboxd_commit_to_ack_seconds_bucket{le="5"} 2
outboxd_commit_to_ack_seconds_bucket{le="10"} 2
outboxd_commit_to_ack_seconds_bucket{le="30"} 2
outboxd_commit_to_ack_seconds_bucket{le="60"} 2
outboxd_commit_to_ack_seconds_bucket{le="+Inf"} 2
# HELP outboxd_reconnects_total Reconnections to PostgreSQL after a lost connection
# TYPE outboxd_reconnects_total counter
outboxd_reconnects_total 0
# HELP outboxd_source_queries_total Queries issued by the polling or notify publisher
# TYPE outboxd_source_queries_total counter
outboxd_source_queries_total{source="poll"} 1
# HELP outboxd_streaming 1 while the source is streaming (replication started or poller running), else 0
# TYPE outboxd_streaming gauge
outboxd_streaming 0
# HELP outboxd_kafka_brokers_up Kafka broker connections in state UP (librdkafka statistics)
# TYPE outboxd_kafka_brokers_up gauge
outboxd_kafka_brokers_up 0
# HELP outboxd_kafka_requests_total Produce requests sent to the Kafka brokers (librdkafka statistics, every second)
# TYPE outboxd_kafka_requests_total counter
outboxd_kafka_requests_total 0
# HELP outboxd_kafka_records_sent_total Records sent in produce requests, a retried record again (librdkafka statistics, every second); per request: divide the rates
# TYPE outboxd_kafka_records_sent_total counter
outboxd_kafka_records_sent_total 0
# HELP outboxd_cleanup_deleted_rows_total Outbox rows deleted by --cleanup-after
# TYPE outboxd_cleanup_deleted_rows_total counter
outboxd_cleanup_deleted_rows_total 0
# HELP outboxd_start_time_seconds Start time of the process since the Unix epoch
# TYPE outboxd_start_time_seconds gauge
outboxd_start_time_seconds 1700000000.5
# HELP outboxd_slot_lost 1 when the replication slot outboxd streamed from is gone, invalidated or re-created (events may be missing), until a republish completes
# TYPE outboxd_slot_lost gauge
outboxd_slot_lost 0
# HELP outboxd_republished_events_total Outbox rows republished after a lost slot (--on-slot-loss=republish)
# TYPE outboxd_republished_events_total counter
outboxd_republished_events_total 0
# HELP outboxd_reconcile_missing_events_total Outbox rows the reconciler found never published (older than --reconcile-margin, committed before the confirmed position), published late with header outbox.reconciled
# TYPE outboxd_reconcile_missing_events_total counter
outboxd_reconcile_missing_events_total 0
# HELP outboxd_source_failed 1 while the source is stopped by a failure of its own and waits to be retried (several sources: the others go on; one source: outboxd exits instead)
# TYPE outboxd_source_failed gauge
outboxd_source_failed 0
# HELP outboxd_slot_failover_ready 1 when the replication slot is a failover slot and the primary's synchronized_standby_slots names an active physical slot (a promoted standby would have it; PostgreSQL 17+), else 0
# TYPE outboxd_slot_failover_ready gauge
outboxd_slot_failover_ready 0
# HELP outboxd_publication_missing_tables Outbox tables (--table) whose inserts the publication does not carry now (ALTER PUBLICATION ... DROP TABLE): their events are not streamed; 0 when it carries every one
# TYPE outboxd_publication_missing_tables gauge
outboxd_publication_missing_tables 0
# HELP outboxd_stage_lsn Newest position that reached the stage, as a byte position (CDC only): wal = server walEnd, received/produced/acknowledged = commit LSN of the newest event, confirmed = position confirmed to the slot
# TYPE outboxd_stage_lsn gauge
outboxd_stage_lsn{stage="acknowledged"} 0
outboxd_stage_lsn{stage="confirmed"} 0
outboxd_stage_lsn{stage="produced"} 0
outboxd_stage_lsn{stage="received"} 0
outboxd_stage_lsn{stage="wal"} 0
# HELP outboxd_stage_lag_seconds Now minus the commit time of the newest event that reached the stage; 0 when the stage holds every event received
# TYPE outboxd_stage_lag_seconds gauge
outboxd_stage_lag_seconds{stage="acknowledged"} 0
outboxd_stage_lag_seconds{stage="confirmed"} 0
outboxd_stage_lag_seconds{stage="produced"} 0
outboxd_stage_lag_seconds{stage="received"} 0
# HELP outboxd_slot_retained_wal_bytes WAL the replication slot retains: pg_current_wal_lsn() minus its restart_lsn (pg_replication_slots, read every --slot-metrics-interval)
# TYPE outboxd_slot_retained_wal_bytes gauge
outboxd_slot_retained_wal_bytes 0
# HELP outboxd_slot_wal_status 1 for the replication slot's current wal_status (pg_replication_slots), 0 for the others
# TYPE outboxd_slot_wal_status gauge
outboxd_slot_wal_status{status="extended"} 0
outboxd_slot_wal_status{status="lost"} 0
outboxd_slot_wal_status{status="reserved"} 0
outboxd_slot_wal_status{status="unreserved"} 0
# HELP outboxd_stalled 1 while events are pending and nothing was acknowledged for --stall-timeout, by reason
# TYPE outboxd_stalled gauge
outboxd_stalled{reason="queue_full"} 0
outboxd_stalled{reason="topic_metadata"} 0
outboxd_stalled{reason="unacknowledged"} 0
)");
}

// Before the first event a labelled family shows its HELP and TYPE lines
// (prometheus-cpp alone would leave the metric out until a child exists).
TEST(OutboxdMetricsTest, LabelledFamiliesAreListedBeforeTheirFirstChild) {
  Registry r;
  OutboxdMetrics m(&r);
  m.ForSource();
  std::string text = r.Exposition();
  EXPECT_THAT(text, HasSubstr("# HELP outboxd_events_published_total Events "
                              "acknowledged by the Kafka broker, by topic\n"
                              "# TYPE outboxd_events_published_total counter\n"
                              "# HELP outboxd_delivery_errors_total "));
  EXPECT_THAT(text, HasSubstr("# TYPE outboxd_source_queries_total counter\n"
                              "# HELP outboxd_streaming "));
  EXPECT_THAT(text, Not(HasSubstr("outboxd_events_published_total{")));
}

TEST(OutboxdMetricsTest, ReadyNeedsStreamingAndABroker) {
  Registry r;
  OutboxdMetrics m(&r);
  EXPECT_EQ(m.NotReadyReason(), "not streaming from the source");
  SourceMetrics& s = m.ForSource();
  EXPECT_FALSE(m.Ready());
  s.streaming->Set(1);
  EXPECT_FALSE(m.Ready());
  m.kafka_brokers_up->Set(3);
  EXPECT_TRUE(m.Ready());
  EXPECT_EQ(m.NotReadyReason(), "");
  s.streaming->Set(0);
  EXPECT_FALSE(m.Ready());
  EXPECT_EQ(m.NotReadyReason(), "not streaming from the source");
}

TEST(OutboxdMetricsTest, AStallMakesItNotReadyWithTheReason) {
  Registry r;
  OutboxdMetrics m(&r);
  SourceMetrics& s = m.ForSource();
  s.streaming->Set(1);
  m.kafka_brokers_up->Set(1);
  s.Stalled(StallReason::kQueueFull).Set(1);
  EXPECT_FALSE(m.Ready());
  EXPECT_EQ(m.NotReadyReason(),
            "stalled (queue_full): events pending and nothing acknowledged "
            "for --stall-timeout");
  s.Stalled(StallReason::kQueueFull).Set(0);
  EXPECT_TRUE(m.Ready());
}

// Polling sources have no LSNs: outboxd_stage_lsn keeps its HELP and TYPE
// lines but no child, and updates go nowhere.
TEST(OutboxdMetricsTest, DropStageLsnRemovesTheChildren) {
  Registry r;
  OutboxdMetrics m(&r);
  SourceMetrics& s = m.ForSource();
  EXPECT_THAT(r.Exposition(), HasSubstr("outboxd_stage_lsn{stage=\"wal\"} 0"));
  s.DropStageLsn();
  s.DropStageLsn();  // twice is fine
  s.StageLsn(Stage::kReceived).Set(42);
  std::string text = r.Exposition();
  EXPECT_THAT(text, HasSubstr("# TYPE outboxd_stage_lsn gauge\n"));
  EXPECT_THAT(text, Not(HasSubstr("outboxd_stage_lsn{")));
  EXPECT_THAT(text,
              HasSubstr("outboxd_stage_lag_seconds{stage=\"received\"} 0"));
}

// The null object: a private registry; every update works and is kept,
// nothing is exposed anywhere else.
TEST(OutboxdMetricsTest, DefaultConstructedIsAWorkingNullObject) {
  Registry exposed;
  OutboxdMetrics on_exposed(&exposed);
  on_exposed.ForSource();
  OutboxdMetrics null_metrics;
  ASSERT_NE(null_metrics.registry, nullptr);
  EXPECT_NE(null_metrics.registry, &exposed);
  SourceMetrics& s = null_metrics.ForSource();
  s.PublishedTo("t").Increment();
  null_metrics.QueriedBy("poll").Increment();
  s.commit_to_ack_seconds->Observe(0.1);
  s.streaming->Set(1);
  null_metrics.kafka_brokers_up->Set(1);
  EXPECT_EQ(s.PublishedTo("t").Value(), 1);
  EXPECT_TRUE(null_metrics.Ready());
  EXPECT_FALSE(on_exposed.Ready());
  EXPECT_THAT(exposed.Exposition(),
              Not(HasSubstr("outboxd_events_published_total{")));
}

TEST(OutboxdMetricsTest, ChildrenAreCachedByLabelValues) {
  Registry r;
  OutboxdMetrics m(&r);
  SourceMetrics& s = m.ForSource();
  Counter& a = s.PublishedTo("a");
  EXPECT_EQ(&a, &s.PublishedTo(std::string("a")));
  EXPECT_EQ(&a, &s.events_published->Labels({"a"}));
  EXPECT_NE(&a, &s.PublishedTo("b"));
  EXPECT_EQ(&m.QueriedBy("poll"), &m.source_queries->Labels({"poll"}));
  // Extra values are dropped, missing ones are empty.
  EXPECT_EQ(&a, &s.events_published->Labels({"a", "extra"}));
  EXPECT_EQ(&s.PublishedTo(""), &s.events_published->Labels({}));
}

TEST(OutboxdMetricsTest, ConcurrentUpdatesAreNotLost) {
  Registry r;
  OutboxdMetrics m(&r);
  SourceMetrics& s = m.ForSource();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10000; ++i) {
        s.PublishedTo(t % 2 ? "odd" : "even").Increment();
        s.commit_to_ack_seconds->Observe(0.5);
        if (i % 1000 == 0) r.Exposition();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(s.PublishedTo("odd").Value(), 20000);
  EXPECT_EQ(s.PublishedTo("even").Value(), 20000);
  EXPECT_THAT(r.Exposition(),
              HasSubstr("outboxd_commit_to_ack_seconds_count 40000\n"));
}

// The label values of `label` in every series of `family` ("" when a
// series has no such label), from the registry's Collect().
std::vector<std::string> LabelValues(const Registry& r,
                                     const std::string& family,
                                     const std::string& label) {
  std::vector<std::string> values;
  for (const prometheus::MetricFamily& f : r.Collect()) {
    if (f.name != family) continue;
    for (const prometheus::ClientMetric& m : f.metric) {
      std::string value;
      for (const prometheus::ClientMetric::Label& l : m.label) {
        if (l.name == label) value = l.value;
      }
      values.push_back(value);
    }
  }
  return values;
}

// The families that are one per process, never labelled by source.
const std::vector<std::string> kProcessFamilies = {
    "outboxd_delivery_errors_total",    "outboxd_source_queries_total",
    "outboxd_kafka_brokers_up",         "outboxd_kafka_requests_total",
    "outboxd_kafka_records_sent_total", "outboxd_cleanup_deleted_rows_total",
    "outboxd_start_time_seconds"};

// --databases: every per-source family has exactly one series per source
// (and per other label value) and none without a source label, so sum()
// counts each once; the per-process families have no source label at all.
TEST(OutboxdMetricsTest, SeveralSourcesLabelEveryPerSourceSeries) {
  Registry r;
  OutboxdMetrics process(&r);
  SourceMetrics& a = process.ForSource("a");
  SourceMetrics& b = process.ForSource("b");
  EXPECT_EQ(a.name(), "a");
  a.PublishedTo("t").Increment();
  b.PublishedTo("t").Increment(2);
  process.source_queries->Labels({"poll"}).Increment();

  Registry one;
  OutboxdMetrics single(&one);
  single.ForSource().PublishedTo("t").Increment();
  single.source_queries->Labels({"poll"}).Increment();
  std::vector<std::string> names;
  for (const prometheus::MetricFamily& f : one.Collect()) {
    names.push_back(f.name);
  }
  std::vector<std::string> several_names;
  for (const prometheus::MetricFamily& f : r.Collect()) {
    several_names.push_back(f.name);
  }
  // The same families in the same order.
  EXPECT_EQ(several_names, names);

  for (const std::string& name : names) {
    std::vector<std::string> sources = LabelValues(r, name, "source");
    const bool per_process =
        std::find(kProcessFamilies.begin(), kProcessFamilies.end(), name) !=
        kProcessFamilies.end();
    if (per_process) {
      // The same series as with one source (outboxd_source_queries_total's
      // own `source` label names the poll/notify mode).
      EXPECT_EQ(sources, LabelValues(one, name, "source")) << name;
      continue;
    }
    // Per source: each series of the one-source exposition, once per
    // source, and nothing unlabelled.
    const size_t per_source = LabelValues(one, name, "source").size();
    ASSERT_GT(per_source, 0u) << name;
    EXPECT_EQ(std::count(sources.begin(), sources.end(), "a"),
              static_cast<long>(per_source))
        << name;
    EXPECT_EQ(std::count(sources.begin(), sources.end(), "b"),
              static_cast<long>(per_source))
        << name;
    EXPECT_EQ(sources.size(), 2 * per_source) << name;
  }
}

TEST(OutboxdMetricsTest, ASourceUpdatesItsOwnSeries) {
  Registry r;
  OutboxdMetrics process(&r);
  SourceMetrics& a = process.ForSource("a");
  SourceMetrics& b = process.ForSource("b");
  EXPECT_EQ(&process.ForSource("a"), &a);
  EXPECT_NE(&a, &b);
  // Per source: a child each.
  EXPECT_NE(a.confirmed_lsn, b.confirmed_lsn);
  EXPECT_NE(a.events_published, b.events_published);
  a.confirmed_lsn->Set(1234);
  b.reconnects->Increment();
  a.PublishedTo("t").Increment(3);
  b.commit_to_ack_seconds->Observe(0.002);
  a.StageLsn(Stage::kConfirmed).Set(99);
  b.Stalled(StallReason::kQueueFull).Set(1);
  b.slot_wal_status[0]->Set(1);
  b.slot_retained_wal_bytes->Set(4096);
  process.kafka_brokers_up->Set(2);
  const std::string text = r.Exposition();
  for (const char* line : {
           "outboxd_confirmed_lsn{source=\"a\"} 1234\n",
           "outboxd_confirmed_lsn{source=\"b\"} 0\n",
           "outboxd_reconnects_total{source=\"a\"} 0\n",
           "outboxd_reconnects_total{source=\"b\"} 1\n",
           "outboxd_events_published_total{source=\"a\",topic=\"t\"} 3\n",
           "outboxd_commit_to_ack_seconds_count{source=\"b\"} 1\n",
           "outboxd_commit_to_ack_seconds_count{source=\"a\"} 0\n",
           "outboxd_stage_lsn{source=\"a\",stage=\"confirmed\"} 99\n",
           "outboxd_stalled{reason=\"queue_full\",source=\"b\"} 1\n",
           "outboxd_slot_wal_status{source=\"b\",status=\"reserved\"} 1\n",
           "outboxd_slot_retained_wal_bytes{source=\"b\"} 4096\n",
           "outboxd_kafka_brokers_up 2\n",
       }) {
    EXPECT_THAT(text, HasSubstr(line));
  }
  EXPECT_THAT(text, Not(HasSubstr("\noutboxd_confirmed_lsn ")));
  EXPECT_THAT(text, Not(HasSubstr("\noutboxd_reconnects_total ")));
  EXPECT_THAT(text, Not(HasSubstr("outboxd_kafka_brokers_up{")));
}

// The one unnamed source: its series carry no source label.
TEST(OutboxdMetricsTest, AnUnnamedSourceHasNoLabel) {
  Registry r;
  OutboxdMetrics m(&r);
  SourceMetrics& s = m.ForSource();
  EXPECT_EQ(&m.ForSource(""), &s);
  EXPECT_EQ(s.name(), "");
  s.PublishedTo("t").Increment();
  s.slot_wal_status[0]->Set(1);
  const std::string text = r.Exposition();
  EXPECT_THAT(text,
              HasSubstr("outboxd_events_published_total{topic=\"t\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("outboxd_confirmed_lsn 0\n"));
  EXPECT_THAT(text, Not(HasSubstr("source=")));
}

// /readyz with several sources: one streaming source is enough (another may
// be a standby for its slot), a broker must be up, and a stalled source
// makes the process unready, named in the reason.
TEST(OutboxdMetricsTest, ReadinessOfSeveralSources) {
  Registry r;
  OutboxdMetrics process(&r);
  SourceMetrics& a = process.ForSource("a");
  SourceMetrics& b = process.ForSource("b");
  EXPECT_EQ(process.NotReadyReason(), "not streaming from any source");
  process.kafka_brokers_up->Set(1);
  EXPECT_EQ(process.NotReadyReason(), "not streaming from any source");
  b.streaming->Set(1);  // a waits as a standby
  EXPECT_TRUE(process.Ready()) << process.NotReadyReason();
  process.kafka_brokers_up->Set(0);
  EXPECT_EQ(process.NotReadyReason(), "no Kafka broker connection up");
  process.kafka_brokers_up->Set(1);
  a.streaming->Set(1);
  a.Stalled(StallReason::kTopicMetadata).Set(1);
  EXPECT_EQ(process.NotReadyReason(),
            "source a stalled (topic_metadata): events pending and nothing "
            "acknowledged for --stall-timeout");
  a.Stalled(StallReason::kTopicMetadata).Set(0);
  // A stalled source is not ready even while it reconnects.
  b.streaming->Set(0);
  b.Stalled(StallReason::kUnacknowledged).Set(1);
  EXPECT_THAT(process.NotReadyReason(), HasSubstr("source b stalled"));
  b.Stalled(StallReason::kUnacknowledged).Set(0);
  EXPECT_TRUE(process.Ready());
  // A source stopped by a failure of its own, while the other streams.
  b.source_failed->Set(1);
  EXPECT_THAT(process.NotReadyReason(), HasSubstr("source b failed"));
  b.source_failed->Set(0);
  a.streaming->Set(0);
  EXPECT_FALSE(process.Ready());
}

TEST(MetricsServerTest, ServesMetricsHealthAndReadiness) {
  Registry r;
  r.AddCounter("served_total", "x").Add({}).Increment(7);
  std::atomic<bool> ready{false};
  auto server = MetricsServer::Start("127.0.0.1:0", &r, [&] {
    return ready.load() ? std::string() : std::string("why not");
  });
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->port(), 0);
  httplib::Client client("127.0.0.1", (*server)->port());
  auto res = client.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_THAT(res->get_header_value("Content-Type"),
              HasSubstr("text/plain; version=0.0.4"));
  EXPECT_THAT(res->body, HasSubstr("served_total 7\n"));
  res = client.Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  res = client.Get("/readyz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
  EXPECT_EQ(res->body, "not ready: why not\n");
  ready = true;
  res = client.Get("/readyz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  res = client.Get("/nothing");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
}

TEST(MetricsServerTest, BadAddressAndBusyPort) {
  Registry r;
  EXPECT_FALSE(MetricsServer::Start("nonsense", &r, nullptr).ok());
  EXPECT_FALSE(MetricsServer::Start("127.0.0.1:70000", &r, nullptr).ok());
  auto first = MetricsServer::Start("127.0.0.1:0", &r, nullptr);
  ASSERT_TRUE(first.ok());
  auto second = MetricsServer::Start(
      "127.0.0.1:" + std::to_string((*first)->port()), &r, nullptr);
  EXPECT_TRUE(absl::IsUnavailable(second.status())) << second.status();
}

// A TCP connection to 127.0.0.1:port, or -1.
int ConnectTo(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// 50 clients holding idle connections and 10 sending a request one byte per
// second (slowloris) must not keep /healthz and /metrics from answering
// within a second; idle connections are closed after the keep-alive bound.
TEST(MetricsServerTest, IdleAndSlowClientsDoNotStarveHealthz) {
  Registry r;
  r.AddCounter("served_total", "x").Add({}).Increment();
  auto server = MetricsServer::Start("127.0.0.1:0", &r, nullptr);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();

  std::vector<int> idle;
  for (int i = 0; i < 50; ++i) {
    int fd = ConnectTo(port);
    ASSERT_GE(fd, 0);
    idle.push_back(fd);
  }
  std::atomic<bool> stop{false};
  std::vector<std::thread> slow;
  for (int i = 0; i < 10; ++i) {
    slow.emplace_back([port, &stop] {
      int fd = ConnectTo(port);
      if (fd < 0) return;
      const std::string request =
          "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " +
          std::string(1000, 'a');
      for (size_t i = 0; i < request.size() && !stop.load(); ++i) {
        if (send(fd, &request[i], 1, MSG_NOSIGNAL) != 1) break;
        for (int t = 0; t < 10 && !stop.load(); ++t) {
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
      }
      close(fd);
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));

  // Probes over 4 s: before and after the idle connections' bound.
  const auto start = std::chrono::steady_clock::now();
  int probes = 0;
  std::chrono::steady_clock::duration slowest{};
  while (std::chrono::steady_clock::now() - start < std::chrono::seconds(4)) {
    for (const char* path : {"/healthz", "/metrics"}) {
      httplib::Client client("127.0.0.1", port);
      client.set_connection_timeout(std::chrono::seconds(1));
      client.set_read_timeout(std::chrono::seconds(1));
      const auto t0 = std::chrono::steady_clock::now();
      auto res = client.Get(path);
      const auto took = std::chrono::steady_clock::now() - t0;
      ASSERT_TRUE(res) << path << " did not answer within 1 s (probe " << probes
                       << ")";
      EXPECT_EQ(res->status, 200) << path;
      EXPECT_LT(took, std::chrono::seconds(1)) << path;
      slowest = std::max(slowest, took);
      ++probes;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
  }
  EXPECT_GE(probes, 8);
  std::printf("[ measure ] %d probes, slowest %lld ms\n", probes,
              static_cast<long long>(
                  std::chrono::duration_cast<std::chrono::milliseconds>(slowest)
                      .count()));

  // The idle connections were closed by the server (EOF), not kept forever.
  int closed = 0;
  for (int fd : idle) {
    char c;
    timeval tv{0, 100000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (recv(fd, &c, 1, 0) == 0) ++closed;
    close(fd);
  }
  EXPECT_EQ(closed, 50);
  stop = true;
  for (std::thread& t : slow) t.join();
}

// A client still sending when the server stops does not hold up the stop
// (outboxd's exit): the destructor returns after kStopTimeout.
TEST(MetricsServerTest, StopDoesNotWaitForASlowClient) {
  Registry r;
  auto server = MetricsServer::Start("127.0.0.1:0", &r, nullptr);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  std::atomic<bool> stop{false};
  std::thread slow([port, &stop] {
    int fd = ConnectTo(port);
    if (fd < 0) return;
    const std::string request =
        "GET /metrics HTTP/1.1\r\nX-Slow: " + std::string(1000, 'a');
    // At most 20 s, one byte every 500 ms.
    for (size_t i = 0; i < 40 && !stop.load(); ++i) {
      if (send(fd, &request[i], 1, MSG_NOSIGNAL) != 1) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    close(fd);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  const auto t0 = std::chrono::steady_clock::now();
  server->reset();
  const auto took = std::chrono::steady_clock::now() - t0;
  stop = true;
  slow.join();
  EXPECT_LT(took, MetricsServer::kStopTimeout + std::chrono::seconds(2));
  std::printf(
      "[ measure ] stop with a slow client took %lld ms\n",
      static_cast<long long>(
          std::chrono::duration_cast<std::chrono::milliseconds>(took).count()));
}

}  // namespace
}  // namespace outboxd::metrics
