// Integration tests of the CDC source (sources/cdc_source.h) against a
// throwaway PostgreSQL 15 cluster, without the Publisher: what Read hands
// over and when it says "nothing".
#include "sources/cdc_source.h"

#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "metrics/outboxd_metrics.h"
#include "tests/harness/pg_cluster.h"

namespace outboxd {
namespace {

using ::outboxd::testing::PgCluster;

class CdcSourceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto cluster = PgCluster::Start();
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = cluster->release();
    ASSERT_TRUE(cluster_
                    ->Exec("postgres",
                           "CREATE TABLE public.outbox (id uuid PRIMARY KEY "
                           "DEFAULT gen_random_uuid(), aggregatetype text NOT "
                           "NULL, aggregateid text NOT NULL, type text NOT "
                           "NULL, payload jsonb)")
                    .ok());
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }

  std::unique_ptr<EventSource> Connected(const std::string& slot) {
    CdcSourceOptions options;
    options.conninfo = cluster_->ConnInfo();
    options.setup.tables = {QualifiedName{"public", "outbox"}};
    options.mapper.tables = options.setup.tables;
    options.setup.publication = "outbox_pub";
    options.setup.slot = slot;
    std::unique_ptr<EventSource> source =
        NewCdcSource(std::move(options), metrics_);
    ConnectContext ctx;
    absl::StatusOr<ConnectResult> r = source->Connect(ctx);
    EXPECT_TRUE(r.ok()) << r.status();
    return source;
  }

  static PgCluster* cluster_;
  metrics::OutboxdMetrics metrics_;
};

PgCluster* CdcSourceTest::cluster_ = nullptr;

// The walsender sends a Relation message before a table's first row in a
// session; it maps to no item. When the whole transaction is already in
// the socket, libpq takes all of it in with one recv: a Read that said
// "nothing" at the Relation message would leave Begin's transaction half
// read, and a caller sleeping on the socket would wait for the next
// keepalive (seconds) to see the rest.
TEST_F(CdcSourceTest, NothingMeansNothingIsThereEvenAfterARelationMessage) {
  std::unique_ptr<EventSource> source = Connected("slot_relation");
  ASSERT_TRUE(cluster_
                  ->Exec("postgres",
                         "INSERT INTO public.outbox (aggregatetype, "
                         "aggregateid, type, payload) VALUES ('order', 'o1', "
                         "'Created', '{}')")
                  .ok());
  // The whole transaction reaches the socket before the first Read.
  absl::SleepFor(absl::Milliseconds(500));
  int begins = 0, events = 0, commits = 0;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (commits == 0 && absl::Now() < deadline) {
    absl::StatusOr<SourceRead> read = source->Read(absl::ZeroDuration());
    ASSERT_TRUE(read.ok()) << read.status();
    if (read->nothing()) {
      // Only before the transaction started: once Begin was read, the rest
      // was taken in with it.
      ASSERT_EQ(begins, 0) << "said nothing with the transaction half read";
      absl::SleepFor(absl::Milliseconds(20));
      continue;
    }
    if (std::holds_alternative<SourceBegin>(read->item)) ++begins;
    if (std::holds_alternative<OutboxEvent>(read->item)) ++events;
    if (std::holds_alternative<SourceCommit>(read->item)) ++commits;
  }
  EXPECT_EQ(begins, 1);
  EXPECT_EQ(events, 1);
  EXPECT_EQ(commits, 1);
  EXPECT_TRUE(source->Finish(SourcePosition(0), /*clean=*/true).ok());
}

}  // namespace
}  // namespace outboxd
