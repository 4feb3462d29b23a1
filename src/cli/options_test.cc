#include "cli/options.h"

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace outboxd {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// outboxd's flag defaults (cli/main.cc), with a --pg and --brokers.
OutboxdFlags Defaults() {
  OutboxdFlags f;
  f.pg = {"host=db dbname=shop"};
  f.brokers = "kafka:9092";
  f.source = "cdc";
  f.metrics_address = "127.0.0.1:9187";
  f.topic_prefix = "outbox.event.";
  f.ordering = "aggregate";
  f.dlq_topic = "outbox.dlq";
  f.on_invalid = "dead-letter";
  f.value_format = "payload";
  f.cloudevents = "off";
  f.delivery = "at-least-once";
  f.transaction_interval = absl::Milliseconds(100);
  f.stall_timeout = absl::Seconds(60);
  f.max_batch_delay = absl::Milliseconds(10);
  f.shutdown_timeout = absl::Seconds(8);
  f.reconnect_backoff_initial = absl::Milliseconds(100);
  f.reconnect_backoff_max = absl::Seconds(5);
  f.table = "public.outbox";
  f.slot = "outbox_slot";
  f.publication = "outbox_pub";
  f.message_prefix = "outbox";
  f.on_slot_loss = "fail";
  f.failover_slot = "auto";
  f.republish_margin = absl::Hours(1);
  f.reconcile_interval = absl::Seconds(30);
  f.reconcile_margin = absl::Minutes(1);
  f.status_interval = absl::Seconds(1);
  f.standby_poll_interval = absl::Milliseconds(20);
  f.slot_metrics_interval = absl::Seconds(10);
  f.poll_interval = absl::Seconds(1);
  f.batch_size = 500;
  f.poll_cleanup = "mark";
  f.notify_channel = "outbox";
  return f;
}

OutboxdFlags With(const std::function<void(OutboxdFlags&)>& change) {
  OutboxdFlags f = Defaults();
  change(f);
  return f;
}

// The one line OptionsFromFlags refuses `f` with.
std::string Refusal(const OutboxdFlags& f) {
  absl::StatusOr<OutboxdOptions> o = OptionsFromFlags(f);
  EXPECT_FALSE(o.ok());
  if (o.ok()) return "";
  EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(o.status().message()),
              ::testing::Not(HasSubstr("\n")));
  return std::string(o.status().message());
}

std::vector<CdcStream> Streams(const OutboxdFlags& f) {
  absl::StatusOr<OutboxdOptions> o = OptionsFromFlags(f);
  EXPECT_TRUE(o.ok()) << o.status();
  if (!o.ok()) return {};
  return std::get<CdcOptions>(o->source).streams;
}

TEST(OptionsTest, DefaultsMakeOneUnnamedCdcStream) {
  absl::StatusOr<OutboxdOptions> o = OptionsFromFlags(Defaults());
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->publisher.producer.brokers, "kafka:9092");
  EXPECT_EQ(o->publisher.records.router.fixed_partition, -1);
  EXPECT_EQ(o->metrics_address, "127.0.0.1:9187");
  const CdcOptions& cdc = std::get<CdcOptions>(o->source);
  ASSERT_EQ(cdc.streams.size(), 1u);
  const CdcSourceOptions& source = cdc.streams[0].source;
  EXPECT_EQ(cdc.streams[0].name, "");
  EXPECT_EQ(source.conninfo, "host=db dbname=shop");
  EXPECT_EQ(source.setup.slot, "outbox_slot");
  EXPECT_EQ(source.setup.publication, "outbox_pub");
  ASSERT_EQ(source.mapper.tables.size(), 1u);
  EXPECT_EQ(source.mapper.tables[0].name, "outbox");
  EXPECT_EQ(cdc.slot_metrics_interval, absl::Seconds(10));
}

// poll and notify read their own flags: nothing of theirs comes from cdc's.
TEST(OptionsTest, PollOptionsStandOnTheirOwn) {
  absl::StatusOr<OutboxdOptions> o = OptionsFromFlags(With([](auto& f) {
    f.source = "notify";
    f.table = "app.events";
    f.columns.payload = "body";
    f.batch_size = 7;
    f.poll_cleanup = "delete";
    f.poll_grace = absl::Seconds(2);
    f.notify_channel = "wake";
    f.poll_interval = absl::Seconds(3);
  }));
  ASSERT_TRUE(o.ok()) << o.status();
  const PollSourceOptions& poll = std::get<PollSourceOptions>(o->source);
  EXPECT_EQ(poll.poller.conninfo, "host=db dbname=shop");
  EXPECT_EQ(poll.poller.table.schema, "app");
  EXPECT_EQ(poll.poller.table.name, "events");
  EXPECT_EQ(poll.poller.columns.payload, "body");
  EXPECT_EQ(poll.poller.batch_size, 7);
  EXPECT_EQ(poll.poller.cleanup, PollCleanup::kDelete);
  EXPECT_EQ(poll.poller.grace, absl::Seconds(2));
  EXPECT_EQ(poll.poller.notify_channel, "wake");
  EXPECT_EQ(poll.poll_interval, absl::Seconds(3));
  // poll listens to no channel.
  o = OptionsFromFlags(With([](auto& f) { f.source = "poll"; }));
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(std::get<PollSourceOptions>(o->source).poller.notify_channel, "");
}

// A flag value, the line that refuses it, and the --source it is given with.
struct Case {
  std::function<void(OutboxdFlags&)> change;
  std::string says;
  std::string source = "cdc";
};

TEST(OptionsTest, EachBadValueIsOneLineNamingItsFlag) {
  const std::vector<Case> cases = {
      {[](auto& f) { f.pg = {}; }, "--pg is required"},
      {[](auto& f) { f.pg.push_back(""); }, "--pg is required"},
      {[](auto& f) { f.source = "kafka"; },
       "--source must be cdc, poll or notify, not 'kafka'"},
      {[](auto& f) { f.metrics_address = "nowhere"; },
       "--metrics-address: 'nowhere' is not HOST:PORT"},
      {[](auto& f) { f.brokers = ""; }, "--brokers is required"},
      {[](auto& f) { f.brokers = "a:1,:2"; }, "--brokers: ':2'"},
      {[](auto& f) { f.brokers = "a:0"; }, "--brokers: 'a:0'"},
      {[](auto& f) { f.kafka_property = {"linger.ms"}; }, "--kafka-property: "},
      {[](auto& f) { f.ordering = "none"; },
       "--ordering must be aggregate or global, not 'none'"},
      {[](auto& f) { f.ordering = "global"; },
       "--ordering=global needs --topic"},
      {[](auto& f) { f.dlq_topic = ""; }, "--dlq-topic must not be empty"},
      {[](auto& f) { f.topic_prefix = "a b"; }, "--topic-prefix makes no"},
      {[](auto& f) { f.topic = ".."; }, "--topic: "},
      {[](auto& f) { f.dlq_topic = "."; }, "--dlq-topic: "},
      {[](auto& f) { f.on_invalid = "skip"; }, "--on-invalid must be"},
      {[](auto& f) { f.value_format = "avro"; }, "--value-format: "},
      {[](auto& f) { f.cloudevents = "json"; },
       "--cloudevents: must be off, binary or structured, not 'json'"},
      {[](auto& f) { f.delivery = "twice"; }, "--delivery must be"},
      {[](auto& f) { f.stall_timeout = absl::Seconds(-1); },
       "--stall-timeout must not be negative"},
      {[](auto& f) { f.max_batch_delay = absl::Seconds(1); },
       "--max-batch-delay must be between 0 and 100ms"},
      {[](auto& f) { f.max_batch_delay = absl::Milliseconds(-1); },
       "--max-batch-delay must be between 0 and 100ms"},
      {[](auto& f) { f.read_coalesce = absl::Seconds(1); },
       "--read-coalesce must be between 0 and 100ms"},
      {[](auto& f) { f.reconnect_backoff_max = absl::Milliseconds(1); },
       "--reconnect-backoff-initial must be positive and at most"},
      {[](auto& f) { f.columns.aggregate_id = ""; },
       "--column-* flags must not be empty"},
      // cdc's
      {[](auto& f) { f.status_interval = absl::ZeroDuration(); },
       "--status-interval must be positive and at most 10m"},
      {[](auto& f) { f.slot_metrics_interval = absl::Seconds(-10); },
       "--slot-metrics-interval must not be negative"},
      {[](auto& f) { f.publication = ""; },
       "--slot and --publication must not be empty"},
      {[](auto& f) { f.on_slot_loss = "ignore"; }, "--on-slot-loss must be"},
      {[](auto& f) { f.failover_slot = "yes"; }, "--failover-slot must be"},
      {[](auto& f) { f.reconcile_batch = 0; },
       "--reconcile-batch must be between 1 and 10000000, not 0"},
      // The streams. One rule for slot names, whether --slot or
      // --slot_<database> makes it: lower case letters, digits and
      // underscores, at most 63 (outbox_slot_ + 52 characters is 64).
      {[](auto& f) { f.slot = "Outbox"; },
       "--slot: 'Outbox' cannot name a slot"},
      {[](auto& f) { f.slot = std::string(64, 's'); }, "--slot: 'sss"},
      {[](auto& f) {
         f.databases = {"a", "Bad-Name"};
       },
       "--databases: 'Bad-Name' cannot name a slot"},
      {[](auto& f) { f.databases = {std::string(52, 'd')}; },
       "--databases: 'ddd"},
      {[](auto& f) {
         f.databases = {"a", ""};
       },
       "--databases: '' cannot name a slot"},
      {[](auto& f) {
         f.databases = {"a", "a"};
       },
       "--databases: 'a' given twice"},
      {[](auto& f) {
         f.pg = {"host=a dbname=x", "host=b dbname=Shop"};
       },
       "--pg: 'Shop' cannot name a slot"},
      {[](auto& f) {
         f.pg = {"host=a dbname=x", "host=a dbname=x"};
       },
       "--pg: 'a/x' twice (the same server and database)"},
      {[](auto& f) {
         f.pg = {"host=a dbname=x", "host=b"};
       },
       "--pg: 'host=b' names no dbname"},
      // poll's and notify's, and what only the stream's positions can
      // honour.
      {[](auto& f) { f.delivery = "exactly-once"; },
       "--delivery=exactly-once is supported with --source=cdc only", "poll"},
      {[](auto& f) { f.pg.push_back("host=b dbname=x"); },
       "--pg: --source=notify reads one database", "notify"},
      {[](auto& f) { f.table = ""; }, "--source=poll needs --table", "poll"},
      {[](auto& f) { f.table = "a,b"; },
       "--table: --source=notify publishes from one table", "notify"},
      {[](auto& f) { f.batch_size = 0; },
       "--batch-size must be between 1 and 1000000", "poll"},
      {[](auto& f) { f.poll_cleanup = "archive"; },
       "--poll-cleanup must be mark or delete, not 'archive'", "notify"},
      {[](auto& f) { f.poll_grace = absl::Seconds(-1); },
       "--poll-grace must not be negative", "notify"},
      {[](auto& f) { f.poll_interval = absl::ZeroDuration(); },
       "--poll-interval must be positive", "poll"},
      {[](auto& f) { f.notify_channel = ""; },
       "--notify-channel must not be empty", "notify"},
  };
  for (const Case& c : cases) {
    OutboxdFlags f = Defaults();
    f.source = c.source;
    c.change(f);
    EXPECT_THAT(Refusal(f), StartsWith(c.says)) << c.source;
  }
}

// The rules that take two flags.
TEST(OptionsTest, FlagsThatContradictEachOtherAreOneLine) {
  EXPECT_THAT(Refusal(With([](auto& f) {
                f.cloudevents = "structured";
                f.value_format = "envelope-json";
              })),
              StartsWith("--cloudevents=structured needs "
                         "--value-format=payload"));
  EXPECT_THAT(Refusal(With([](auto& f) {
                f.cloudevents = "binary";
                f.cloudevents_source = "";
              })),
              StartsWith("--cloudevents-source: must not be empty"));
  EXPECT_THAT(Refusal(With([](auto& f) {
                f.delivery = "exactly-once";
                f.stall_timeout = f.transaction_interval;
              })),
              StartsWith("--stall-timeout must be longer than "
                         "--transaction-interval"));
  OutboxdFlags no_table = With([](auto& f) { f.table = ""; });
  no_table.on_slot_loss = "republish";
  EXPECT_THAT(Refusal(no_table),
              StartsWith("--on-slot-loss=republish needs --table"));
  no_table.on_slot_loss = "fail";
  no_table.cleanup_after = absl::Hours(1);
  EXPECT_THAT(Refusal(no_table), StartsWith("--cleanup-after needs --table"));
  for (const std::string source : {"poll", "notify"}) {
    OutboxdFlags global = With([](auto& f) { f.topic = "t"; });
    global.source = source;
    global.ordering = "global";
    EXPECT_THAT(Refusal(global),
                StartsWith("--ordering=global needs --source=cdc"));
  }
}

// --max-batch-delay is the read coalescer's maximum; 0 never waits;
// --read-coalesce, its deprecated name, means the same.
TEST(OptionsTest, MaxBatchDelayAndItsDeprecatedName) {
  auto coalesce = [](const OutboxdFlags& f) {
    absl::StatusOr<OutboxdOptions> o = OptionsFromFlags(f);
    EXPECT_TRUE(o.ok()) << o.status();
    return o.ok() ? o->publisher.session.coalesce : absl::InfiniteDuration();
  };
  EXPECT_EQ(coalesce(Defaults()), absl::Milliseconds(10));
  EXPECT_EQ(coalesce(With([](auto& f) {
              f.max_batch_delay = absl::Milliseconds(5);
              f.max_batch_delay_given = true;
            })),
            absl::Milliseconds(5));
  EXPECT_EQ(coalesce(With([](auto& f) {
              f.max_batch_delay = absl::ZeroDuration();
              f.max_batch_delay_given = true;
            })),
            absl::ZeroDuration());
  EXPECT_EQ(
      coalesce(With([](auto& f) { f.read_coalesce = absl::Milliseconds(20); })),
      absl::Milliseconds(20));
  EXPECT_THAT(Refusal(With([](auto& f) {
                f.read_coalesce = absl::Milliseconds(20);
                f.max_batch_delay_given = true;
              })),
              StartsWith("--read-coalesce is the deprecated name of "
                         "--max-batch-delay: give only --max-batch-delay"));
}

// Each stream as "<name> <slot> <server> <conninfo>".
std::vector<std::string> Described(const OutboxdFlags& f) {
  std::vector<std::string> described;
  for (const CdcStream& s : Streams(f)) {
    described.push_back(absl::StrCat(s.name, " ", s.source.setup.slot, " ",
                                     s.server, " ", s.source.conninfo));
  }
  return described;
}

TEST(OptionsTest, StreamsAreNamedByDatabaseAndServer) {
  EXPECT_THAT(Described(With([](auto& f) {
                f.databases = {"shop", "billing"};
              })),
              ElementsAre(StartsWith("shop outbox_slot_shop 0 "),
                          StartsWith("billing outbox_slot_billing 0 ")));
  // One database given: one stream, named all the same.
  EXPECT_THAT(Described(With([](auto& f) { f.databases = {"billing"}; })),
              ElementsAre(AllOf(StartsWith("billing outbox_slot_billing 0 "),
                                HasSubstr("billing"))));
  EXPECT_THAT(Described(With([](auto& f) {
                f.pg = {"host=a port=5433 dbname=shop", "host=b dbname=shop"};
              })),
              ElementsAre(StartsWith("a:5433/shop outbox_slot_shop 0 "),
                          StartsWith("b/shop outbox_slot_shop 1 ")));
  OutboxdFlags templates = With([](auto& f) { f.databases = {"shop"}; });
  templates.pg = {"host=a dbname=x", "host=b dbname=y"};
  EXPECT_THAT(Described(templates),
              ElementsAre(StartsWith("a/shop outbox_slot_shop 0 "),
                          StartsWith("b/shop outbox_slot_shop 1 ")));
  // The longest names that are still slot names.
  EXPECT_THAT(Described(With([](auto& f) { f.slot = std::string(63, 's'); })),
              ElementsAre(StartsWith(" " + std::string(63, 's') + " 0 ")));
  EXPECT_THAT(
      Described(With([](auto& f) { f.databases = {std::string(51, 'd')}; })),
      ElementsAre(HasSubstr("outbox_slot_" + std::string(51, 'd'))));
}

// One check, named after the flag that asks for more than one database.
TEST(OptionsTest, ExactlyOncePublishesOneDatabase) {
  OutboxdFlags f = With([](auto& f) { f.delivery = "exactly-once"; });
  EXPECT_TRUE(OptionsFromFlags(f).ok());
  f.databases = {"a"};
  EXPECT_THAT(Refusal(f),
              StartsWith("--databases: --delivery=exactly-once publishes one "
                         "database per process"));
  f.databases = {};
  f.pg.push_back("host=b dbname=y");
  EXPECT_THAT(Refusal(f), StartsWith("--pg: --delivery=exactly-once publishes "
                                     "one database per process"));
}

}  // namespace
}  // namespace outboxd
