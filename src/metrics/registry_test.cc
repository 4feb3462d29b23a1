#include "metrics/registry.h"

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

TEST(RegistryTest, CounterWithoutLabels) {
  Registry r;
  Counter& c = r.AddCounter("x_total", "Things counted").Get();
  c.Increment();
  c.Increment(2);
  c.Increment(-5);  // ignored: counters only grow
  EXPECT_EQ(r.Exposition(),
            "# HELP x_total Things counted\n"
            "# TYPE x_total counter\n"
            "x_total 3\n");
}

TEST(RegistryTest, LabelsAreEscapedAndSorted) {
  Registry r;
  auto& f = r.AddCounter("pub_total", "by topic", {"topic"});
  f.Labels({"b"}).Increment();
  f.Labels({"a\"q\\x\ny"}).Increment(4);
  EXPECT_EQ(r.Exposition(),
            "# HELP pub_total by topic\n"
            "# TYPE pub_total counter\n"
            "pub_total{topic=\"a\\\"q\\\\x\\ny\"} 4\n"
            "pub_total{topic=\"b\"} 1\n");
}

TEST(RegistryTest, HelpIsEscaped) {
  Registry r;
  r.AddGauge("g", "line\\one\ntwo").Get().Set(-1.5);
  EXPECT_EQ(r.Exposition(),
            "# HELP g line\\\\one\\ntwo\n# TYPE g gauge\ng -1.5\n");
}

TEST(RegistryTest, FamilyWithoutChildrenHasOnlyHelpAndType) {
  Registry r;
  r.AddCounter("c_total", "none yet", {"topic"});
  EXPECT_EQ(r.Exposition(), "# HELP c_total none yet\n# TYPE c_total counter\n");
}

TEST(RegistryTest, HistogramBucketsAreCumulativeWithSumAndCount) {
  Registry r;
  auto& h = r.AddHistogram("lat_seconds", "latency", {0.005, 0.1, 1}, {"k"})
                .Labels({"v"});
  h.Observe(0.005);  // le is inclusive
  h.Observe(0.05);
  h.Observe(0.05);
  h.Observe(7);
  EXPECT_EQ(r.Exposition(),
            "# HELP lat_seconds latency\n"
            "# TYPE lat_seconds histogram\n"
            "lat_seconds_bucket{k=\"v\",le=\"0.005\"} 1\n"
            "lat_seconds_bucket{k=\"v\",le=\"0.1\"} 3\n"
            "lat_seconds_bucket{k=\"v\",le=\"1\"} 3\n"
            "lat_seconds_bucket{k=\"v\",le=\"+Inf\"} 4\n"
            "lat_seconds_sum{k=\"v\"} 7.105\n"
            "lat_seconds_count{k=\"v\"} 4\n");
}

TEST(RegistryTest, FormatValue) {
  EXPECT_EQ(FormatValue(0), "0");
  EXPECT_EQ(FormatValue(123456789012.0), "123456789012");
  EXPECT_EQ(FormatValue(0.25), "0.25");
  EXPECT_EQ(FormatValue(1.0 / 0.0), "+Inf");
  EXPECT_EQ(FormatValue(-1.0 / 0.0), "-Inf");
  EXPECT_EQ(FormatValue(0.0 / 0.0), "NaN");
  EXPECT_EQ(FormatValue(1e20), "1e+20");
}

TEST(RegistryTest, NameValidation) {
  EXPECT_TRUE(IsValidMetricName("outboxd_events_total"));
  EXPECT_TRUE(IsValidMetricName("a:b"));
  EXPECT_FALSE(IsValidMetricName("1abc"));
  EXPECT_FALSE(IsValidMetricName("a-b"));
  EXPECT_TRUE(IsValidLabelName("topic"));
  EXPECT_FALSE(IsValidLabelName("__reserved"));
  EXPECT_FALSE(IsValidLabelName("a:b"));
}

TEST(RegistryDeathTest, DuplicateNameAborts) {
  Registry r;
  r.AddCounter("dup_total", "x");
  EXPECT_DEATH(r.AddGauge("dup_total", "y"), "duplicate");
}

TEST(RegistryTest, ConcurrentUpdatesAreNotLost) {
  Registry r;
  auto& f = r.AddCounter("n_total", "n", {"t"});
  Histogram& h = r.AddHistogram("h", "h", {1}).Get();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10000; ++i) {
        f.Labels({t % 2 ? "odd" : "even"}).Increment();
        h.Observe(0.5);
        if (i % 1000 == 0) r.Exposition();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(f.Labels({"odd"}).Value(), 20000);
  EXPECT_EQ(f.Labels({"even"}).Value(), 20000);
  EXPECT_EQ(h.Collect().count, 40000u);
}

TEST(OutboxdMetricsTest, EveryMetricIsExposedWithHelpAndType) {
  Registry r;
  OutboxdMetrics m(&r);
  m.PublishedTo("outbox.event.order").Increment();
  std::string text = r.Exposition();
  for (const char* name :
       {"outboxd_events_published_total", "outboxd_delivery_errors_total",
        "outboxd_events_dead_lettered_total", "outboxd_events_in_flight",
        "outboxd_confirmed_lsn", "outboxd_server_wal_end_lsn",
        "outboxd_slot_lag_bytes", "outboxd_commit_to_ack_seconds",
        "outboxd_reconnects_total", "outboxd_source_queries_total",
        "outboxd_streaming", "outboxd_kafka_brokers_up"}) {
    EXPECT_THAT(text, HasSubstr(std::string("# TYPE ") + name)) << name;
    EXPECT_THAT(text, HasSubstr(std::string("# HELP ") + name)) << name;
  }
  EXPECT_THAT(text, HasSubstr(
      "outboxd_events_published_total{topic=\"outbox.event.order\"} 1\n"));
  EXPECT_FALSE(m.Ready());
  m.streaming->Set(1);
  m.kafka_brokers_up->Set(3);
  EXPECT_TRUE(m.Ready());
}

TEST(MetricsServerTest, ServesMetricsHealthAndReadiness) {
  Registry r;
  r.AddCounter("served_total", "x").Get().Increment(7);
  std::atomic<bool> ready{false};
  auto server = MetricsServer::Start("127.0.0.1:0", &r,
                                     [&] { return ready.load(); });
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
  r.AddCounter("served_total", "x").Get().Increment();
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
