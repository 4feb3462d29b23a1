// Running outboxd in production (issue: metrics, logs, the SQL kit, event
// formats): real PostgreSQL 15 (throwaway cluster), the dev broker, outboxd
// as a child process, an independent consumer, curl for the scrapes.
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "outbox/value_format.h"
#include "tests/harness/child_process.h"
#include "tests/harness/dev_broker.h"
#include "tests/harness/kafka_reader.h"
#include "tests/harness/metrics_scrape.h"
#include "tests/harness/outboxd_test_base.h"
#include "tests/harness/pg_cluster.h"

namespace outboxd::testing {
namespace {

// Waits until `pred` holds (polling), at most `timeout`.
template <typename F>
bool Eventually(F pred, absl::Duration timeout = absl::Seconds(30)) {
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (pred()) return true;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return pred();
}

class OpsTest : public OutboxdTestBase {
 protected:
  OpsTest()
      : OutboxdTestBase({.db_stem = "ops",
                         .prefix_stem = "ops",
                         .slot_stem = "ops_slot",
                         .default_args = {"--status-interval=200ms"},
                         .ready = {"streaming from slot", "publishing from"}}) {
  }  // poll
  static void SetUpTestSuite() { StartServers(/*brokers=*/1); }

  std::string ConnInfo(const std::string& user = "postgres") const {
    return absl::StrCat("host=127.0.0.1 port=", cluster_->port(),
                        " user=", user, " dbname=", db_);
  }

  // Starts outboxd and waits until it streams (or publishes). `default_pg`
  // false: no --pg (the test gives it in `extra`).
  ChildProcess* StartOutboxd(std::vector<std::string> extra,
                             bool default_pg = true) {
    std::vector<std::string> argv = DefaultArgs(default_pg, Polling(extra));
    size_t n = LaunchOutboxd(std::move(extra), /*wait_ready=*/true, {},
                             std::move(argv));
    ChildProcess* p = outboxd_[n].get();
    EXPECT_TRUE(p != nullptr && p->Running())
        << "outboxd did not start streaming:\n"
        << ReadFile(LogPath(n));
    return p;
  }
};

// ---------------------------------------------------------------- metrics

TEST_F(OpsTest, MetricsScrapeMovesAsEventsFlow) {
  StartOutboxd({"--metrics-address=127.0.0.1:0"});
  int port = MetricsPort(ReadFile(LogPath(0)));
  ASSERT_GT(port, 0) << ReadFile(LogPath(0));
  int code = 0;
  EXPECT_EQ(Get(port, "/healthz", &code), "ok\n");
  EXPECT_EQ(code, 200);
  // Ready once streaming and a broker connection is up (statistics every
  // second).
  EXPECT_TRUE(Eventually([&] {
    Get(port, "/readyz", &code);
    return code == 200;
  })) << Get(port, "/metrics", &code);

  std::string before = Get(port, "/metrics", &code);
  ASSERT_EQ(code, 200);
  const std::string topic_series = absl::StrCat(
      "outboxd_events_published_total{topic=\"", prefix_, "order\"}");
  EXPECT_EQ(Sample(before, topic_series), -1);  // no event yet
  EXPECT_EQ(Sample(before, "outboxd_streaming"), 1);
  EXPECT_GE(Sample(before, "outboxd_kafka_brokers_up"), 1);
  EXPECT_EQ(Sample(before, "outboxd_commit_to_ack_seconds_count"), 0);
  for (const char* name : {"# TYPE outboxd_events_published_total counter",
                           "# TYPE outboxd_commit_to_ack_seconds histogram",
                           "# TYPE outboxd_slot_lag_bytes gauge",
                           "# HELP outboxd_confirmed_lsn "}) {
    EXPECT_NE(before.find(name), std::string::npos) << name;
  }
  double confirmed_before = Sample(before, "outboxd_confirmed_lsn");

  for (int i = 0; i < 25; ++i) {
    ASSERT_TRUE(Exec(absl::StrCat("SELECT outbox.emit('order', 'o", i % 5,
                                  "', 'Created', '{\"n\": ", i, "}')"))
                    .ok());
  }
  ASSERT_EQ(Read(prefix_ + "order", 25).size(), 25u);
  std::string after;
  EXPECT_TRUE(Eventually([&] {
    after = Get(port, "/metrics", &code);
    return Sample(after, topic_series) == 25 &&
           Sample(after, "outboxd_events_in_flight") == 0;
  })) << after;
  EXPECT_EQ(Sample(after, "outboxd_commit_to_ack_seconds_count"), 25);
  EXPECT_EQ(Sample(after, "outboxd_commit_to_ack_seconds_bucket{le=\"+Inf\"}"),
            25);
  EXPECT_GT(Sample(after, "outboxd_commit_to_ack_seconds_sum"), 0);
  EXPECT_GT(Sample(after, "outboxd_confirmed_lsn"), confirmed_before);
  EXPECT_GE(Sample(after, "outboxd_server_wal_end_lsn"),
            Sample(after, "outboxd_confirmed_lsn"));
  EXPECT_GE(Sample(after, "outboxd_slot_lag_bytes"), 0);
  EXPECT_EQ(Sample(after, "outboxd_delivery_errors_total"), 0);
  // librdkafka's statistics (every second) count the produce requests
  // that carried them: at least one, at most one per record.
  EXPECT_TRUE(Eventually([&] {
    after = Get(port, "/metrics", &code);
    return Sample(after, "outboxd_kafka_records_sent_total") >= 25;
  })) << after;
  EXPECT_GE(Sample(after, "outboxd_kafka_requests_total"), 1);
  EXPECT_LE(Sample(after, "outboxd_kafka_requests_total"),
            Sample(after, "outboxd_kafka_records_sent_total"));

  // An invalid row goes to the dead-letter topic and is counted.
  ASSERT_TRUE(Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, "
                   "payload, headers) VALUES ('order', 'x', 'Bad', '{}', "
                   "'[1]')")
                  .ok());
  EXPECT_TRUE(Eventually([&] {
    after = Get(port, "/metrics", &code);
    return Sample(after, "outboxd_events_dead_lettered_total") == 1;
  })) << after;

  // Idle: the lag closes (the position follows the server's WAL end).
  EXPECT_TRUE(Eventually([&] {
    after = Get(port, "/metrics", &code);
    return Sample(after, "outboxd_slot_lag_bytes") == 0;
  })) << after;

  outboxd_[0]->Signal(SIGTERM);
  EXPECT_EQ(outboxd_[0]->Wait(absl::Seconds(15)), 0);
}

// The metric names (and label values) every expression of a Grafana
// dashboard selects: `name` -> the `label="value"` matchers used with it.
std::map<std::string, std::set<std::string>> DashboardSelectors(
    const nlohmann::json& dashboard) {
  std::vector<std::string> exprs;
  std::vector<const nlohmann::json*> todo = {&dashboard};
  while (!todo.empty()) {
    const nlohmann::json* j = todo.back();
    todo.pop_back();
    if (j->is_object()) {
      for (const auto& [key, value] : j->items()) {
        // Panels' queries, and template variables' (label_values(...)).
        if ((key == "expr" || key == "definition") && value.is_string()) {
          exprs.push_back(value.get<std::string>());
        }
        todo.push_back(&value);
      }
    } else if (j->is_array()) {
      for (const auto& value : *j) todo.push_back(&value);
    }
  }
  std::map<std::string, std::set<std::string>> selectors;
  static const std::regex kSelector(R"((outboxd_[a-z0-9_]+)(\{([^}]*)\})?)");
  static const std::regex kExact(R"re(([a-z_]+)\s*=\s*"([^"$]*)")re");
  for (const std::string& e : exprs) {
    for (std::sregex_iterator it(e.begin(), e.end(), kSelector), end; it != end;
         ++it) {
      std::set<std::string>& matchers = selectors[(*it)[1].str()];
      const std::string inside = (*it)[3].str();
      for (std::sregex_iterator m(inside.begin(), inside.end(), kExact);
           m != std::sregex_iterator(); ++m) {
        // Exact matchers only (=, not =~ or !=), without template variables.
        if (m->position(0) > 0 && (inside[m->position(0) - 1] == '!' ||
                                   inside[m->position(0) - 1] == '~')) {
          continue;
        }
        matchers.insert(
            absl::StrCat((*m)[1].str(), "=\"", (*m)[2].str(), "\""));
      }
    }
  }
  return selectors;
}

// deploy/grafana/outboxd-dashboard.json names only metrics that a running
// outboxd serves from its start, with label values that exist (a labelled
// metric shows a series only once its child exists); and the slot metrics
// are read (pg_replication_slots) and the stage metrics move with an event.
TEST_F(OpsTest, DashboardNamesOnlyServedMetricsAndStagesMove) {
  StartOutboxd(
      {"--metrics-address=127.0.0.1:0", "--slot-metrics-interval=100ms"});
  int port = MetricsPort(ReadFile(LogPath(0)));
  ASSERT_GT(port, 0) << ReadFile(LogPath(0));
  int code = 0;
  std::string scrape;
  EXPECT_TRUE(Eventually([&] {
    scrape = Get(port, "/metrics", &code);
    return Sample(scrape, "outboxd_slot_wal_status{status=\"reserved\"}") == 1;
  })) << scrape;
  EXPECT_EQ(Sample(scrape, "outboxd_slot_wal_status{status=\"lost\"}"), 0);
  EXPECT_GE(Sample(scrape, "outboxd_slot_retained_wal_bytes"), 0);

  std::ifstream file(OUTBOXD_SOURCE_DIR
                     "/deploy/grafana/outboxd-dashboard.json");
  ASSERT_TRUE(file.good());
  const nlohmann::json dashboard = nlohmann::json::parse(file);
  const auto selectors = DashboardSelectors(dashboard);
  EXPECT_GE(selectors.size(), 15u);
  // Every name the dashboard uses is declared (# TYPE) and, with
  // `all_samples`, has a sample; every label value it selects has a sample.
  auto check = [&](const std::string& text, bool all_samples) {
    std::map<std::string, std::vector<std::string>> samples;
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      if (line.empty() || line[0] == '#') continue;
      samples[std::string(line.substr(0, line.find_first_of("{ ")))]
          .emplace_back(line);
    }
    for (const auto& [name, matchers] : selectors) {
      std::string family = name;
      for (const char* suffix : {"_bucket", "_sum", "_count"}) {
        if (absl::EndsWith(family, suffix) &&
            text.find("# TYPE " + family + " ") == std::string::npos) {
          family.resize(family.size() - std::strlen(suffix));
        }
      }
      EXPECT_NE(text.find("# TYPE " + family + " "), std::string::npos)
          << "the dashboard uses " << name << ", which outboxd does not know";
      auto it = samples.find(name);
      if (all_samples || !matchers.empty()) {
        ASSERT_NE(it, samples.end())
            << "the dashboard uses " << name << ", which /metrics does not "
            << "serve";
      }
      for (const std::string& matcher : matchers) {
        bool found = false;
        for (const std::string& line : it->second) {
          found = found || line.find(matcher) != std::string::npos;
        }
        EXPECT_TRUE(found) << "the dashboard selects " << name << "{" << matcher
                           << "}, which /metrics does not serve";
      }
    }
  };
  // From the start: the labelled series the dashboard selects exist before
  // any event (outboxd_events_published_total{topic} only once a topic is
  // known).
  check(scrape, /*all_samples=*/false);

  // One event through every stage: positions move, lags return to 0.
  ASSERT_TRUE(Exec("SELECT outbox.emit('order', 'o1', 'Created', '{}')").ok());
  ASSERT_EQ(Read(prefix_ + "order", 1).size(), 1u);
  EXPECT_TRUE(Eventually([&] {
    scrape = Get(port, "/metrics", &code);
    return Sample(scrape, "outboxd_stage_lsn{stage=\"acknowledged\"}") > 0 &&
           Sample(scrape, "outboxd_stage_lsn{stage=\"confirmed\"}") >
               Sample(scrape, "outboxd_stage_lsn{stage=\"acknowledged\"}") &&
           Sample(scrape, "outboxd_stage_lag_seconds{stage=\"confirmed\"}") ==
               0;
  })) << scrape;
  EXPECT_GE(Sample(scrape, "outboxd_stage_lsn{stage=\"wal\"}"),
            Sample(scrape, "outboxd_stage_lsn{stage=\"received\"}"));
  EXPECT_EQ(Sample(scrape, "outboxd_stage_lsn{stage=\"received\"}"),
            Sample(scrape, "outboxd_stage_lsn{stage=\"acknowledged\"}"));
  EXPECT_EQ(Sample(scrape, "outboxd_stalled{reason=\"unacknowledged\"}"), 0);
  // After an event every name has a sample.
  check(scrape, /*all_samples=*/true);
  outboxd_[0]->Signal(SIGTERM);
  EXPECT_EQ(outboxd_[0]->Wait(absl::Seconds(15)), 0);
}

// A broker that answers produce requests only after 4 s: past
// --stall-timeout nothing is acknowledged, /readyz says why (503), the
// gauge is 1 and one warning is logged; once the acknowledgement comes, it
// clears.
TEST_F(OpsTest, StallAlarmFailsReadinessWithTheReasonAndClears) {
  StartOutboxd({"--metrics-address=127.0.0.1:0", "--stall-timeout=1s"});
  int port = MetricsPort(ReadFile(LogPath(0)));
  ASSERT_GT(port, 0) << ReadFile(LogPath(0));
  int code = 0;
  ASSERT_TRUE(Eventually([&] {
    Get(port, "/readyz", &code);
    return code == 200;
  })) << Get(port, "/metrics", &code);
  // The topic known first (an unknown one waits for its metadata, which
  // the slow broker delays too: reason topic_metadata).
  ASSERT_TRUE(Exec("SELECT outbox.emit('order', 's0', 'Created', '{}')").ok());
  ASSERT_EQ(Read(prefix_ + "order", 1).size(), 1u);
  // Restored whatever happens: the broker is shared by the suite.
  struct RttGuard {
    ~RttGuard() { broker_->SetRtt(1, 0).IgnoreError(); }
  } guard;
  ASSERT_TRUE(broker_->SetRtt(1, 4000).ok());
  ASSERT_TRUE(Exec("SELECT outbox.emit('order', 's1', 'Created', '{}')").ok());
  std::string body;
  EXPECT_TRUE(Eventually([&] {
    body = Get(port, "/readyz", &code);
    return code == 503;
  })) << body;
  EXPECT_TRUE(absl::StartsWith(body, "not ready: stalled (unacknowledged)"))
      << body;
  EXPECT_EQ(Sample(Get(port, "/metrics", &code),
                   "outboxd_stalled{reason=\"unacknowledged\"}"),
            1);
  ASSERT_TRUE(broker_->SetRtt(1, 0).ok());
  EXPECT_TRUE(Eventually([&] {
    body = Get(port, "/readyz", &code);
    return code == 200;
  })) << body;
  EXPECT_EQ(Sample(Get(port, "/metrics", &code),
                   "outboxd_stalled{reason=\"unacknowledged\"}"),
            0);
  outboxd_[0]->Signal(SIGTERM);
  EXPECT_EQ(outboxd_[0]->Wait(absl::Seconds(15)), 0);
  const std::string log = ReadFile(LogPath(0));
  size_t warnings = 0;
  for (size_t at = log.find("warning stalled: "); at != std::string::npos;
       at = log.find("warning stalled: ", at + 1)) {
    ++warnings;
  }
  EXPECT_EQ(warnings, 1u) << log;
  EXPECT_NE(log.find("no longer stalled"), std::string::npos) << log;
}

TEST_F(OpsTest, PollModeIsReadyAndCountsItsQueries) {
  StartOutboxd({"--metrics-address=127.0.0.1:0", "--source=poll",
                "--poll-interval=100ms"});
  int port = MetricsPort(ReadFile(LogPath(0)));
  ASSERT_GT(port, 0) << ReadFile(LogPath(0));
  int code = 0;
  EXPECT_TRUE(Eventually([&] {
    Get(port, "/readyz", &code);
    return code == 200;
  })) << Get(port, "/metrics", &code);
  const std::string series = "outboxd_source_queries_total{source=\"poll\"}";
  std::string scrape = Get(port, "/metrics", &code);
  double first = Sample(scrape, series);
  EXPECT_GE(first, 1);
  // Polled positions are not LSNs: no stage LSN, but the lags are there.
  EXPECT_EQ(scrape.find("outboxd_stage_lsn{"), std::string::npos) << scrape;
  EXPECT_EQ(Sample(scrape, "outboxd_stage_lag_seconds{stage=\"received\"}"), 0);
  EXPECT_TRUE(Eventually([&] {
    return Sample(Get(port, "/metrics", &code), series) > first;
  })) << "polls every 100ms, so the count moves";
  outboxd_[0]->Signal(SIGTERM);
  EXPECT_EQ(outboxd_[0]->Wait(absl::Seconds(15)), 0);
  // Stopped: no longer ready (the server is gone with the process).
  Get(port, "/readyz", &code);
  EXPECT_NE(code, 200);
}

TEST_F(OpsTest, MetricsAddressInUseIsARuntimeFailure) {
  StartOutboxd({"--metrics-address=127.0.0.1:0"});
  int port = MetricsPort(ReadFile(LogPath(0)));
  ASSERT_GT(port, 0);
  ChildOptions o;
  o.argv = {OUTBOXD_BINARY, "--pg=" + ConnInfo(),
            "--brokers=" + broker_->bootstrap(), "--slot=other",
            absl::StrCat("--metrics-address=127.0.0.1:", port)};
  o.capture_stdout = false;
  o.stderr_file = LogPath(9);
  auto second = ChildProcess::Start(o);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ((*second)->Wait(absl::Seconds(20)), 1);
  EXPECT_NE(ReadFile(LogPath(9)).find("cannot listen"), std::string::npos);
}

// ------------------------------------------------------------------ logs

TEST_F(OpsTest, JsonLogsParseAndNeverShowThePassword) {
  // trust authentication ignores the password; it must still never appear.
  ChildProcess* p = StartOutboxd(
      {"--pg=" + ConnInfo() + " password=s3cr3t-Pa55", "--log-format=json",
       "--log-level=debug", "--metrics-address="},
      /*default_pg=*/false);
  ASSERT_NE(p, nullptr);
  ASSERT_TRUE(Exec("SELECT outbox.emit('order', '1', 'Created', "
                   "'{\"note\": \"quote \\\" and newline\"}')")
                  .ok());
  ASSERT_EQ(Read(prefix_ + "order", 1).size(), 1u);
  p->Signal(SIGTERM);
  EXPECT_EQ(p->Wait(absl::Seconds(15)), 0);
  std::string log = ReadFile(LogPath(0));
  EXPECT_EQ(log.find("s3cr3t"), std::string::npos) << log;
  int lines = 0;
  bool saw_debug = false;
  for (absl::string_view line : absl::StrSplit(log, '\n', absl::SkipEmpty())) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << line;
    ASSERT_TRUE(j.contains("message") && j.contains("level") &&
                j.contains("time"))
        << line;
    saw_debug |= j["level"] == "debug";
    ++lines;
  }
  EXPECT_GT(lines, 3);
  EXPECT_TRUE(saw_debug);
}

// sslpassword (and password) in --pg, key=value and URI forms, in text and
// JSON logs: never in any line, also not in the reconnect messages after the
// walsender is terminated nor in the retry/give-up messages of a server
// that cannot be reached.
TEST_F(OpsTest, SslPasswordNeverLoggedInTextOrJson) {
  // Text logs, key=value, streaming, then a lost connection.
  ChildProcess* p = StartOutboxd(
      {"--pg=" + ConnInfo() + " sslpassword=Ss1-Secret password=Pw1-Secret",
       "--log-level=debug", "--metrics-address=",
       "--reconnect-backoff-initial=50ms", "--reconnect-backoff-max=200ms"},
      /*default_pg=*/false);
  ASSERT_NE(p, nullptr);
  ASSERT_TRUE(Exec("SELECT outbox.emit('order', '1', 'Created', '{}')").ok());
  ASSERT_EQ(Read(prefix_ + "order", 1).size(), 1u);
  ASSERT_EQ(Query("SELECT count(pg_terminate_backend(active_pid)) FROM "
                  "pg_replication_slots WHERE slot_name = '" +
                  slot_ + "'"),
            "1");
  ASSERT_TRUE(WaitForLog(0, "reconnecting")) << Log(0);
  ASSERT_TRUE(WaitForLog(0, "streaming from slot")) << Log(0);
  p->Signal(SIGTERM);
  EXPECT_EQ(p->Wait(absl::Seconds(15)), 0);
  std::string text = Log(0);
  EXPECT_NE(text.find("sslpassword=********"), std::string::npos) << text;
  EXPECT_EQ(text.find("Ss1-Secret"), std::string::npos) << text;
  EXPECT_EQ(text.find("Pw1-Secret"), std::string::npos) << text;

  // JSON logs, URI form, nothing listening: retried, then gives up.
  for (const std::string& pg :
       {std::string("postgresql://u:Pw2-Secret@127.0.0.1:1/db?sslpassword="
                    "Ss2-Secret&connect_timeout=1"),
        std::string("host=127.0.0.1 port=1 user=u sslpassword='Ss2-Secret' "
                    "password=Pw2-Secret connect_timeout=1")}) {
    auto r = RunCommand(
        {OUTBOXD_BINARY, "--pg=" + pg, "--brokers=127.0.0.1:9",
         "--log-format=json", "--log-level=debug",
         "--metrics-address=", "--reconnect-give-up=1s",
         "--reconnect-backoff-initial=100ms", "--reconnect-backoff-max=200ms"},
        absl::Seconds(30));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->exit_code, 1) << r->output;
    EXPECT_EQ(r->output.find("Ss2-Secret"), std::string::npos) << r->output;
    EXPECT_EQ(r->output.find("Pw2-Secret"), std::string::npos) << r->output;
    EXPECT_NE(r->output.find("gave up"), std::string::npos) << r->output;
    for (absl::string_view line :
         absl::StrSplit(r->output, '\n', absl::SkipEmpty())) {
      EXPECT_FALSE(nlohmann::json::parse(line, nullptr, false).is_discarded())
          << line;
    }
  }
}

TEST_F(OpsTest, BadLogFlagsExitTwo) {
  for (const char* flag :
       {"--log-format=xml", "--log-level=loud", "--value-format=avro"}) {
    auto r = RunCommand(
        {OUTBOXD_BINARY, "--pg=" + ConnInfo(), "--brokers=127.0.0.1:9", flag},
        absl::Seconds(10));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->exit_code, 2) << flag << ": " << r->output;
  }
}

// --------------------------------------------------------- value formats

// What the database holds for the events, as OutboxEvents by id.
std::map<std::string, OutboxEvent> EventsInTable(PgCluster* cluster,
                                                 const std::string& db,
                                                 const std::string& table,
                                                 bool bytea) {
  std::map<std::string, OutboxEvent> out;
  // One JSON object per row, so that binary payloads travel as hex.
  auto text = cluster->Query(
      db, absl::StrCat("SELECT coalesce(json_agg(json_build_object("
                       "'id', id::text, 'at', aggregatetype, 'ai', aggregateid,"
                       " 't', type, 'p', ",
                       bytea ? "encode(payload, 'hex')" : "payload::text",
                       ", 'h', headers))::text, '[]') FROM ", table));
  EXPECT_TRUE(text.ok()) << text.status();
  for (const auto& row :
       nlohmann::ordered_json::parse(text.ok() ? *text : "[]")) {
    OutboxEvent e;
    e.id = row["id"];
    e.aggregate_type = row["at"];
    e.aggregate_id = row["ai"];
    e.type = row["t"];
    if (!row["p"].is_null()) {
      std::string p = row["p"];
      if (bytea) {
        std::string bytes;
        for (size_t i = 0; i + 1 < p.size(); i += 2) {
          bytes.push_back(static_cast<char>(std::stoi(p.substr(i, 2), 0, 16)));
        }
        p = bytes;
      }
      e.payload = p;
    }
    if (row["h"].is_object()) {
      for (auto& [k, v] : row["h"].items()) e.headers.emplace_back(k, v);
    }
    out[e.id] = e;
  }
  return out;
}

class ValueFormatTest : public OpsTest {
 protected:
  // Writes JSON events with non-ASCII text and binary events (a bytea
  // outbox), publishes them in `format`, and checks that DecodeRecord gives
  // back exactly what the tables hold.
  void RoundTrip(ValueFormat format) {
    ASSERT_TRUE(Exec(R"sql(
      CREATE TABLE bin_outbox (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        aggregatetype text NOT NULL, aggregateid text NOT NULL,
        type text NOT NULL, payload bytea, headers jsonb);
      CREATE PUBLICATION bin_pub FOR TABLE bin_outbox
        WITH (publish = 'insert');
    )sql")
                    .ok());
    std::string name(ValueFormatName(format));
    StartOutboxd({"--value-format=" + name, "--metrics-address="});
    ChildOptions unused;
    // A second outboxd for the bytea table, same format.
    std::string bin_slot = slot_ + "_bin";
    {
      std::string saved = slot_;
      slot_ = bin_slot;
      StartOutboxd({"--value-format=" + name, "--metrics-address=",
                    "--table=public.bin_outbox", "--publication=bin_pub",
                    "--topic-prefix=" + prefix_ + "bin."});
      slot_ = saved;
    }
    ASSERT_TRUE(Exec(R"sql(
      SELECT outbox.emit('commande', 'Zoë-東京', 'Créée',
        '{"name": "Ünïcödé 🚀", "q": "\" \\ \n"}',
        '{"note": "naïve ✓", "empty": ""}');
      SELECT outbox.emit('commande', 'k2', 'Vide', NULL);
      SELECT outbox.emit('commande', 'k3', 'Arr', '[1, 2.50, "x"]');
      INSERT INTO bin_outbox (aggregatetype, aggregateid, type, payload)
        VALUES ('blob', 'b1', 'Bytes', '\x00ff80fe0a22'::bytea),
               ('blob', 'b2', 'Bytes', convert_to('Grüße', 'UTF8')),
               ('blob', 'b3', 'Bytes', ''::bytea),
               ('blob', 'b4', 'Bytes', NULL);
    )sql")
                    .ok());
    for (auto [topic, table, bytea, topic_prefix] :
         {std::tuple{prefix_ + "commande", std::string("public.outbox"), false,
                     prefix_},
          std::tuple{prefix_ + "bin.blob", std::string("bin_outbox"), true,
                     prefix_ + "bin."}}) {
      auto expected = EventsInTable(cluster_, db_, table, bytea);
      auto records = Read(topic, expected.size());
      ASSERT_EQ(records.size(), expected.size()) << topic;
      for (const auto& r : records) {
        ConsumedRecordView view;
        view.topic = r.topic;
        view.key = r.key;
        if (r.value.has_value()) view.value = *r.value;
        view.headers = &r.headers;
        view.timestamp_ms = r.timestamp_ms;
        view.topic_prefix = topic_prefix;
        auto e = DecodeRecord(format, view);
        ASSERT_TRUE(e.ok()) << e.status();
        auto it = expected.find(e->id);
        ASSERT_NE(it, expected.end()) << e->id;
        EXPECT_EQ(e->aggregate_type, it->second.aggregate_type);
        EXPECT_EQ(e->aggregate_id, it->second.aggregate_id);
        EXPECT_EQ(r.key, it->second.aggregate_id);
        EXPECT_EQ(e->type, it->second.type);
        EXPECT_EQ(e->payload, it->second.payload) << e->id;
        EXPECT_EQ(e->headers, it->second.headers);
        // The position and commit time agree with the headers.
        EXPECT_EQ(absl::StrCat(e->position.commit_lsn.value()),
                  r.Header("outbox.lsn").value_or("?"));
        EXPECT_EQ(absl::StrCat(e->position.index),
                  r.Header("outbox.index").value_or("?"));
        EXPECT_EQ(e->commit_time_unix_ms, r.timestamp_ms);
        // Tombstones only in the payload format.
        EXPECT_EQ(r.value.has_value(),
                  format != ValueFormat::kPayload || e->payload.has_value());
      }
    }
  }
};

TEST_F(ValueFormatTest, PayloadRoundTrip) { RoundTrip(ValueFormat::kPayload); }
TEST_F(ValueFormatTest, EnvelopeJsonRoundTrip) {
  RoundTrip(ValueFormat::kEnvelopeJson);
}
TEST_F(ValueFormatTest, ProtobufRoundTrip) {
  RoundTrip(ValueFormat::kProtobuf);
}

// --------------------------------------------------------------- SQL kit

TEST_F(OpsTest, PublisherRoleRunsOutboxdAndWriterRoleWritesEvents) {
  // The install script made the publication; the publisher role can neither
  // create one nor write the table, and needs neither.
  ASSERT_TRUE(Exec("DROP ROLE IF EXISTS ops_app; "
                   "CREATE ROLE ops_app LOGIN IN ROLE outboxd_writer")
                  .ok());
  StartOutboxd({"--pg=" + ConnInfo("outboxd_publisher"), "--metrics-address="},
               /*default_pg=*/false);
  // The writer: emit (a row) and emit_message (no row), nothing else.
  auto as_app = [&](const std::string& sql) {
    return RunCommand({"psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
                       ConnInfo("ops_app"), "-c", sql},
                      absl::Seconds(20));
  };
  auto r = as_app("SELECT outbox.emit('acct', 'a1', 'Opened', '{\"n\": 1}')");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->exit_code, 0) << r->output;
  r = as_app(
      "SELECT outbox.emit_message('acct', 'a1', 'Closed', "
      "'{\"n\": 2}', '{\"h\": \"v\"}')");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->exit_code, 0) << r->output;
  r = as_app("SELECT count(*) FROM public.outbox");
  ASSERT_TRUE(r.ok());
  EXPECT_NE(r->exit_code, 0) << "the writer must not read the outbox";
  r = as_app("DELETE FROM public.outbox");
  ASSERT_TRUE(r.ok());
  EXPECT_NE(r->exit_code, 0) << "the writer must not delete";

  auto records = Read(prefix_ + "acct", 2);
  ASSERT_EQ(records.size(), 2u);
  std::set<std::string> types;
  for (const auto& rec : records) {
    EXPECT_EQ(rec.key, "a1");
    types.insert(rec.Header("eventType").value_or(""));
  }
  EXPECT_EQ(types, (std::set<std::string>{"Opened", "Closed"}));
  EXPECT_EQ(Query("SELECT count(*) FROM outbox"), "1");  // the message: no row
  // The publisher role has REPLICATION and SELECT on the outbox only.
  EXPECT_EQ(Query("SELECT rolreplication::text || rolsuper::text FROM pg_roles "
                  "WHERE rolname = 'outboxd_publisher'"),
            "truefalse");
  EXPECT_EQ(Query("SELECT has_table_privilege('outboxd_publisher', "
                  "'public.outbox', 'INSERT')::text"),
            "false");
}

TEST_F(OpsTest, PartitionedOutboxStreamsLikeAPlainTable) {
  ASSERT_TRUE(
      Exec(ReadFile(OUTBOXD_SOURCE_DIR "/sql/outbox_partitioned.sql")).ok());
  // Partitions of 10, 9, 8 days ago and yesterday (as if made by earlier
  // maintenance).
  ASSERT_TRUE(Exec("SELECT outbox.create_partition('public.outbox_partitioned',"
                   " (now() AT TIME ZONE 'UTC')::date - d) "
                   "FROM unnest(ARRAY[1, 8, 9, 10]) d")
                  .ok());
  StartOutboxd({"--table=public.outbox_partitioned",
                "--publication=outbox_partitioned_pub", "--metrics-address="});
  // The same events into the plain table, published by a second outboxd
  // under another prefix, for comparison.
  std::string part_slot = slot_;
  slot_ = part_slot + "_plain";
  std::string part_prefix = prefix_;
  prefix_ = part_prefix + "plain.";
  StartOutboxd({"--metrics-address="});
  slot_ = part_slot;
  prefix_ = part_prefix;
  const char* kRows =
      " SELECT 'part', 'k' || d, 'E', jsonb_build_object('d', d),"
      " now() - make_interval(days => d) FROM unnest(ARRAY[0, 1, 8, 9, 10]) d";
  ASSERT_TRUE(Exec(absl::StrCat("INSERT INTO outbox_partitioned (aggregatetype,"
                                " aggregateid, type, payload, created_at)",
                                kRows))
                  .ok());
  ASSERT_TRUE(Exec(absl::StrCat("INSERT INTO outbox (aggregatetype, "
                                "aggregateid, type, payload, created_at)",
                                kRows))
                  .ok());
  EXPECT_EQ(Query("SELECT count(DISTINCT tableoid) FROM outbox_partitioned"),
            "5");
  auto records = Read(prefix_ + "part", 5);
  auto plain = Read(prefix_ + "plain.part", 5);
  ASSERT_EQ(records.size(), 5u);
  ASSERT_EQ(plain.size(), 5u);
  // Same keys, values and partitions as from the plain table.
  std::set<std::tuple<std::string, int32_t, std::string>> from_partitions,
      from_plain;
  for (const auto& r : records) {
    from_partitions.insert({r.key, r.partition, r.value.value_or("")});
  }
  for (const auto& r : plain) {
    from_plain.insert({r.key, r.partition, r.value.value_or("")});
  }
  EXPECT_EQ(from_partitions, from_plain);
  std::set<std::string> keys;
  for (const auto& r : records) keys.insert(r.key);
  EXPECT_EQ(keys, (std::set<std::string>{"k0", "k1", "k8", "k9", "k10"}));

  // Retention: drop the partitions older than 3 days under the running
  // outboxd; the stream goes on.
  std::string dropped = Query(
      "SELECT count(*) FROM outbox.maintain_partitions("
      "'public.outbox_partitioned', 2, interval '3 days') "
      "WHERE action = 'dropped'");
  EXPECT_EQ(dropped, "3");
  EXPECT_EQ(Query("SELECT count(*) FROM outbox_partitioned"), "2");
  ASSERT_TRUE(Exec("INSERT INTO outbox_partitioned (aggregatetype, aggregateid,"
                   " type, payload) VALUES ('part', 'after-drop', 'E', '{}')")
                  .ok());
  records = Read(prefix_ + "part", 6);
  ASSERT_EQ(records.size(), 6u);
  EXPECT_EQ(records.size(), 6u);
  bool found = false;
  for (const auto& r : records) found |= r.key == "after-drop";
  EXPECT_TRUE(found);
  EXPECT_TRUE(outboxd_[0]->Running()) << ReadFile(LogPath(0));
}

TEST_F(OpsTest, CleanupInsertAndDeleteInOneTransactionLeavesNothing) {
  StartOutboxd({"--metrics-address="});
  ASSERT_TRUE(Exec("BEGIN; "
                   "SELECT outbox.emit_transient('tr', 'k' || n, 'E', "
                   "jsonb_build_object('n', n)) FROM generate_series(1, 20) n; "
                   "COMMIT;")
                  .ok());
  EXPECT_EQ(Query("SELECT count(*) FROM outbox"), "0");
  auto records = Read(prefix_ + "tr", 20);
  ASSERT_EQ(records.size(), 20u);
  for (const auto& r : records) ASSERT_TRUE(r.value.has_value());
}

TEST_F(OpsTest, CleanupAfterDeletesOnlyConfirmedRows) {
  ASSERT_TRUE(Exec("GRANT DELETE ON public.outbox TO outboxd_publisher").ok());
  // --republish-margin=0s: rows may go as soon as outboxd's record proves
  // them acknowledged (slot_loss_test checks the default margin keeps them).
  // --reconcile-interval=0: the cleaner alone (with the reconciler on, a
  // row also waits until the reconciler has judged it).
  StartOutboxd(
      {"--pg=" + ConnInfo("outboxd_publisher"), "--cleanup-after=1s",
       "--republish-margin=0s", "--reconcile-interval=0", "--metrics-address="},
      /*default_pg=*/false);
  ASSERT_TRUE(Exec("SELECT outbox.emit('cl', 'k' || n, 'E', '{}') "
                   "FROM generate_series(1, 10) n")
                  .ok());
  ASSERT_EQ(Read(prefix_ + "cl", 10).size(), 10u);
  EXPECT_TRUE(Eventually([&] {
    return Query("SELECT count(*) FROM outbox") == "0";
  })) << ReadFile(LogPath(0));

  // Kafka down: nothing is acknowledged, so nothing is confirmed, so the
  // rows stay although they are older than --cleanup-after.
  ASSERT_TRUE(broker_->SetAllBrokersDown().ok());
  ASSERT_TRUE(Exec("SELECT outbox.emit('cl', 'late' || n, 'E', '{}') "
                   "FROM generate_series(1, 5) n")
                  .ok());
  absl::SleepFor(absl::Seconds(5));
  EXPECT_EQ(Query("SELECT count(*) FROM outbox"), "5");
  ASSERT_TRUE(broker_->SetAllBrokersUp().ok());
  ASSERT_EQ(Read(prefix_ + "cl", 15).size(), 15u);
  EXPECT_TRUE(Eventually([&] {
    return Query("SELECT count(*) FROM outbox") == "0";
  })) << ReadFile(LogPath(0));
  EXPECT_NE(ReadFile(LogPath(0)).find("cleanup: deleted"), std::string::npos);
}

}  // namespace
}  // namespace outboxd::testing
