// OutboxdTestBase: the fixture shared by the integration tests that run
// outboxd as a child process. One throwaway PostgreSQL cluster and one dev
// broker per test binary; per test a fresh database (with the outbox
// installed), a topic prefix and a slot name; outboxd children with one log
// file each, stopped (SIGTERM) after the test, whose inactive slots are then
// dropped. Derived fixtures name their resources and defaults through
// OutboxdTestOptions.
#ifndef OUTBOXD_TESTS_HARNESS_OUTBOXD_TEST_BASE_H_
#define OUTBOXD_TESTS_HARNESS_OUTBOXD_TEST_BASE_H_

#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/lsn.h"
#include "gtest/gtest.h"
#include "tests/harness/child_process.h"
#include "tests/harness/dev_broker.h"
#include "tests/harness/kafka_reader.h"
#include "tests/harness/pg_cluster.h"

namespace outboxd::testing {

struct OutboxdTestOptions {
  // Per test N: database `db_stem`N, topic prefix `prefix_stem`N".", slot
  // `slot_stem`N (no --slot argument when `slot_stem` is empty).
  std::string db_stem;
  std::string prefix_stem;
  std::string slot_stem;
  // Files under the source tree run in the test's database by SetUp.
  std::vector<std::string> sql_files = {"/sql/outbox.sql"};
  // outboxd arguments after --pg, --brokers, --topic-prefix and --slot.
  std::vector<std::string> default_args = {"--status-interval=200ms",
                                           "--metrics-address="};
  // outboxd is ready once its log has any of these.
  std::vector<std::string> ready = {"streaming from slot"};
};

class OutboxdTestBase : public ::testing::Test {
 protected:
  explicit OutboxdTestBase(OutboxdTestOptions options)
      : options_(std::move(options)) {}

  // Fixtures that want another broker count define their own
  // SetUpTestSuite calling StartServers.
  static void SetUpTestSuite() { StartServers(/*brokers=*/3); }
  static void TearDownTestSuite() {
    delete broker_;
    broker_ = nullptr;
    delete cluster_;
    cluster_ = nullptr;
  }
  static void StartServers(int brokers, int partitions = 4,
                           const PgClusterOptions& pg = {}) {
    auto cluster = PgCluster::Start(pg);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = cluster->release();
    auto broker = DevBroker::Start(brokers, partitions);
    ASSERT_TRUE(broker.ok()) << broker.status();
    broker_ = broker->release();
  }

  void SetUp() override {
    ASSERT_NE(cluster_, nullptr);
    ASSERT_NE(broker_, nullptr);
    test_number_ = ++counter_;
    db_ = absl::StrCat(options_.db_stem, test_number_);
    prefix_ = absl::StrCat(options_.prefix_stem, test_number_, ".");
    // Slots are cluster-wide: one per test.
    if (!options_.slot_stem.empty()) {
      slot_ = absl::StrCat(options_.slot_stem, test_number_);
    }
    ASSERT_TRUE(cluster_->CreateDatabase(db_).ok());
    for (const std::string& file : options_.sql_files) {
      std::string install = ReadFile(absl::StrCat(OUTBOXD_SOURCE_DIR, file));
      ASSERT_FALSE(install.empty()) << file;
      ASSERT_TRUE(Exec(install).ok()) << file;
    }
  }

  void TearDown() override {
    StopAll(&outboxd_);
    // Drop this test's slots so they hold no WAL for the next tests.
    Exec(absl::StrCat("SELECT pg_drop_replication_slot(slot_name) FROM "
                      "pg_replication_slots WHERE database = '",
                      db_, "' AND NOT active"))
        .IgnoreError();
  }

  // SIGTERM (SIGKILL after 15 s) to every running child of `list`.
  static void StopAll(std::vector<std::unique_ptr<ChildProcess>>* list) {
    for (auto& p : *list) {
      if (p != nullptr && p->Running()) {
        p->Signal(SIGTERM);
        if (!p->Wait(absl::Seconds(15)).has_value()) p->Signal(SIGKILL);
        p->Wait(absl::Seconds(5));
      }
    }
    list->clear();
  }

  // The Kafka bootstrap list outboxd and Read() use: the dev broker's;
  // fixtures running against another broker (a real Kafka, see
  // kafka_cluster.h) override it.
  virtual std::string Bootstrap() const { return broker_->bootstrap(); }

  absl::Status Exec(const std::string& sql) { return cluster_->Exec(db_, sql); }
  std::string Query(const std::string& sql) {
    auto v = cluster_->Query(db_, sql);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : "";
  }
  std::string ConnInfo() const { return cluster_->ConnInfo(db_); }

  // Log file of the `n`th `what` child of this test (the pid keeps test
  // binaries running side by side apart).
  std::string LogPath(size_t n, const std::string& what = "outboxd") const {
    return absl::StrCat(::testing::TempDir(), "/", db_, "-", getpid(), "-",
                        what, "-", n, ".log");
  }
  std::string Log(size_t n) const { return ReadFile(LogPath(n)); }

  // outboxd, --pg (if `with_pg`), --brokers, --topic-prefix, --slot and the
  // fixture's default arguments. With `polling` (--source=poll or notify),
  // without the cdc-only ones (--slot, --status-interval), which those
  // modes refuse with exit 2.
  std::vector<std::string> DefaultArgs(bool with_pg = true,
                                       bool polling = false) const {
    std::vector<std::string> argv = {OUTBOXD_BINARY};
    if (with_pg) argv.push_back("--pg=" + ConnInfo());
    argv.push_back("--brokers=" + Bootstrap());
    argv.push_back("--topic-prefix=" + prefix_);
    if (!slot_.empty() && !polling) argv.push_back("--slot=" + slot_);
    for (const std::string& arg : options_.default_args) {
      if (polling && absl::StartsWith(arg, "--status-interval=")) continue;
      argv.push_back(arg);
    }
    return argv;
  }

  // Whether `args` (after the fixture's default arguments) make outboxd
  // poll: the last --source wins.
  bool Polling(const std::vector<std::string>& args) const {
    bool polling = false;
    for (const auto* list : {&options_.default_args, &args}) {
      for (const std::string& arg : *list) {
        if (absl::StartsWith(arg, "--source=")) {
          polling = arg != "--source=cdc";
        }
      }
    }
    return polling;
  }

  // Starts `argv` with stderr to LogPath(n, `what`), n being its index in
  // `list` (nullptr there if it did not start), and waits until its log has
  // one of `ready` (no wait when empty).
  size_t StartChild(std::vector<std::unique_ptr<ChildProcess>>* list,
                    const std::string& what, std::vector<std::string> argv,
                    const std::vector<std::string>& ready,
                    std::map<std::string, std::string> env = {}) {
    size_t n = list->size();
    ChildOptions o;
    o.argv = std::move(argv);
    o.env = std::move(env);
    o.capture_stdout = false;
    o.stderr_file = LogPath(n, what);
    std::remove(o.stderr_file.c_str());  // a log of an earlier run misleads
    auto child = ChildProcess::Start(o);
    EXPECT_TRUE(child.ok()) << child.status();
    list->push_back(child.ok() ? *std::move(child) : nullptr);
    if (list->back() == nullptr || ready.empty()) return n;
    if (!WaitForAnyLine(list->back().get(), o.stderr_file, ready,
                        absl::Seconds(30))) {
      ADD_FAILURE() << what << " did not get ready (no \""
                    << absl::StrJoin(ready, "\" or \"") << "\"):\n"
                    << ReadFile(o.stderr_file);
    }
    return n;
  }

  // Starts outboxd: DefaultArgs() (`argv` instead when not empty) + `extra`;
  // if `wait_ready`, waits until it is ready. Returns its index in outboxd_.
  size_t LaunchOutboxd(std::vector<std::string> extra = {},
                       bool wait_ready = true,
                       std::map<std::string, std::string> env = {},
                       std::vector<std::string> argv = {}) {
    if (argv.empty()) argv = DefaultArgs(/*with_pg=*/true, Polling(extra));
    argv.insert(argv.end(), extra.begin(), extra.end());
    return StartChild(&outboxd_, "outboxd", std::move(argv),
                      wait_ready ? options_.ready : std::vector<std::string>{},
                      std::move(env));
  }
  // As LaunchOutboxd; nullptr if it did not start.
  ChildProcess* StartOutboxd(std::vector<std::string> extra = {},
                             bool wait_ready = true) {
    return outboxd_[LaunchOutboxd(std::move(extra), wait_ready)].get();
  }
  ChildProcess& Outboxd(size_t n) { return *outboxd_.at(n); }

  // Waits until log `n` contains `text`; false after `timeout` or when the
  // process exited without writing it.
  bool WaitForLog(size_t n, const std::string& text,
                  absl::Duration timeout = absl::Seconds(30)) {
    ChildProcess* p = n < outboxd_.size() ? outboxd_[n].get() : nullptr;
    return WaitForAnyLine(p, LogPath(n), {text}, timeout);
  }

  std::vector<ConsumedRecord> Read(const std::string& topic, size_t n,
                                   absl::Duration timeout = absl::Seconds(60),
                                   absl::Duration quiet = absl::Seconds(1)) {
    auto records = ReadTopic(Bootstrap(), topic, n, timeout, quiet);
    EXPECT_TRUE(records.ok()) << records.status();
    return records.ok() ? *std::move(records) : std::vector<ConsumedRecord>{};
  }

  // The confirmed_flush_lsn of `slot` (this test's slot when empty); Lsn()
  // while the slot does not exist.
  Lsn ConfirmedFlush(const std::string& slot = "") {
    std::string text = Query(absl::StrCat(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE "
        "slot_name = '",
        slot.empty() ? slot_ : slot, "'"));
    auto lsn = Lsn::Parse(text);
    EXPECT_TRUE(lsn.ok() || text.empty()) << text;
    return lsn.ok() ? *lsn : Lsn();
  }
  // The cluster's WAL insert position.
  Lsn CurrentWalLsn() {
    auto lsn = Lsn::Parse(Query("SELECT pg_current_wal_lsn()"));
    EXPECT_TRUE(lsn.ok());
    return lsn.ok() ? *lsn : Lsn();
  }
  // Waits until `slot` (this test's slot when empty) has confirmed at least
  // `target`; false after `timeout`.
  bool WaitConfirmed(Lsn target, absl::Duration timeout,
                     const std::string& slot = "") {
    absl::Time deadline = absl::Now() + timeout;
    while (ConfirmedFlush(slot) < target) {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return true;
  }

  static inline PgCluster* cluster_ = nullptr;
  static inline DevBroker* broker_ = nullptr;
  static inline int counter_ = 0;
  int test_number_ = 0;
  std::string db_;
  std::string prefix_;
  std::string slot_;
  std::vector<std::unique_ptr<ChildProcess>> outboxd_;

 private:
  // Waits until the file at `log` has one of `texts`; false after `timeout`
  // or when `p` (if any) exited without writing one.
  static bool WaitForAnyLine(ChildProcess* p, const std::string& log,
                             const std::vector<std::string>& texts,
                             absl::Duration timeout) {
    auto found = [&] {
      std::string contents = ReadFile(log);
      for (const auto& text : texts) {
        if (contents.find(text) != std::string::npos) return true;
      }
      return false;
    };
    absl::Time deadline = absl::Now() + timeout;
    while (!found()) {
      if (p == nullptr || !p->Running()) return found();
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return true;
  }

  OutboxdTestOptions options_;
};

}  // namespace outboxd::testing

#endif  // OUTBOXD_TESTS_HARNESS_OUTBOXD_TEST_BASE_H_
