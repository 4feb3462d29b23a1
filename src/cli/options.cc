#include "cli/options.h"

#include <algorithm>
#include <utility>

#include "absl/algorithm/container.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "flags/flags.h"
#include "outbox/cloudevents.h"
#include "outbox/router.h"
#include "outbox/value_format.h"
#include "pg/connection.h"
#include "pg/identifier.h"

namespace outboxd {
namespace {

// The longest --max-batch-delay: beyond it a batch's wait is no longer a
// latency budget but an outage.
constexpr absl::Duration kMaxBatchDelayLimit = absl::Milliseconds(100);

absl::Status Invalid(absl::string_view message) {
  return absl::InvalidArgumentError(message);
}

// `parse` (returning absl::StatusOr<T>) applied to `value`; its error
// becomes "<flag>: <its message>".
template <typename Parse>
auto Parsed(absl::string_view flag, const std::string& value, Parse parse)
    -> decltype(parse(value)) {
  auto parsed = parse(value);
  if (!parsed.ok()) {
    return Invalid(absl::StrCat(flag, ": ", parsed.status().message()));
  }
  return parsed;
}

// HOST:PORT split at its last colon, the port from 0 to 65535; nullopt when
// `s` is not one. The host may be empty.
std::optional<std::pair<absl::string_view, int>> SplitHostPort(
    absl::string_view s) {
  size_t colon = s.rfind(':');
  int port = 0;
  if (colon == absl::string_view::npos ||
      !absl::SimpleAtoi(s.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return std::nullopt;
  }
  return std::make_pair(s.substr(0, colon), port);
}

// PostgreSQL's rule for a replication slot's name: 1 to 63 lower case
// letters, digits and underscores.
bool IsSlotName(absl::string_view name) {
  return !name.empty() && name.size() <= 63 && absl::c_all_of(name, [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

// --slot_<database> is a slot name, and slot names are cluster-wide: the
// database (named by `flag`) must make a legal one.
absl::Status CheckSlotOfDatabase(absl::string_view flag,
                                 const std::string& slot,
                                 const std::string& db) {
  if (!db.empty() && IsSlotName(absl::StrCat(slot, "_", db))) {
    return absl::OkStatus();
  }
  return Invalid(
      absl::StrCat(flag, ": '", db,
                   "' cannot name a slot (--slot + '_' + database: lower "
                   "case letters, digits and underscores, at most 63)"));
}

// --databases names databases that make slot names, once each; and
// --delivery=exactly-once publishes one database per process.
absl::Status CheckDatabases(const OutboxdFlags& f, DeliveryGuarantee delivery) {
  const std::vector<std::string>& dbs = f.databases;
  for (size_t i = 0; i < dbs.size(); ++i) {
    RETURN_IF_ERROR(CheckSlotOfDatabase("--databases", f.slot, dbs[i]));
    if (std::find(dbs.begin(), dbs.begin() + i, dbs[i]) != dbs.begin() + i) {
      return Invalid(absl::StrCat("--databases: '", dbs[i], "' given twice"));
    }
  }
  if (delivery == DeliveryGuarantee::kExactlyOnce &&
      (f.pg.size() > 1 || !dbs.empty())) {
    return Invalid(absl::StrCat(
        dbs.empty() ? "--pg" : "--databases",
        ": --delivery=exactly-once publishes one database per process (one "
        "transactional producer and checkpoint each)",
        dbs.empty() ? "; give one --pg" : ""));
  }
  return absl::OkStatus();
}

// --table: the outbox tables; none for "" (logical decoding messages only).
absl::StatusOr<std::vector<QualifiedName>> TablesFromFlags(
    const OutboxdFlags& f) {
  if (f.table.empty()) return std::vector<QualifiedName>{};
  return Parsed("--table", f.table, ParseQualifiedNameList);
}

// --column-*: the optional columns may be "" (ignored), the others not.
absl::StatusOr<OutboxColumns> ColumnsFromFlags(const OutboxdFlags& f) {
  const OutboxColumns& c = f.columns;
  for (const std::string* name :
       {&c.id, &c.aggregate_type, &c.aggregate_id, &c.type, &c.payload}) {
    if (name->empty()) {
      return Invalid(
          "--column-* flags must not be empty (except --column-headers, "
          "--column-depends-on and --column-content-type)");
    }
  }
  return c;
}

// --brokers, --kafka-config, then every --kafka-property.
absl::StatusOr<ProducerOptions> ProducerFromFlags(const OutboxdFlags& f) {
  ProducerOptions p;
  if (f.brokers.empty())
    return Invalid("--brokers is required (HOST:PORT[,...])");
  for (absl::string_view b : absl::StrSplit(f.brokers, ',')) {
    auto host_port = SplitHostPort(b);
    if (!host_port || host_port->first.empty() || host_port->second == 0) {
      return Invalid(absl::StrCat("--brokers: '", b, "' is not HOST:PORT"));
    }
  }
  p.brokers = f.brokers;
  if (!f.kafka_config.empty()) {
    ASSIGN_OR_RETURN(p.properties, Parsed("--kafka-config", f.kafka_config,
                                          flags::ParseKeyValueFile));
  }
  for (const std::string& property : f.kafka_property) {
    ASSIGN_OR_RETURN(
        auto kv, Parsed("--kafka-property", property, flags::SplitKeyValue));
    p.properties.push_back(std::move(kv));
  }
  return p;
}

// Where a record goes: its topic (and partition, --ordering), or the
// dead-letter topic.
absl::Status RoutingFromFlags(const OutboxdFlags& f, PublisherOptions& p) {
  p.records.router.topic_prefix = f.topic_prefix;
  p.records.router.fixed_topic = f.topic;
  ASSIGN_OR_RETURN(bool global, flags::ParseChoice<bool>(
                                    "--ordering", f.ordering,
                                    {{"aggregate", false}, {"global", true}}));
  if (global) {
    if (p.records.router.fixed_topic.empty()) {
      return Invalid(
          "--ordering=global needs --topic (one topic, one partition)");
    }
    p.records.router.fixed_partition = 0;
  }
  if (f.dlq_topic.empty()) return Invalid("--dlq-topic must not be empty");
  p.records.dlq_topic = f.dlq_topic;
  // Flags that can only make topic names Kafka refuses. A prefix is illegal
  // when no aggregatetype can complete it into a legal name.
  if (absl::Status s =
          CheckTopicName(absl::StrCat(p.records.router.topic_prefix, "x"));
      !s.ok()) {
    return Invalid(absl::StrCat("--topic-prefix makes no legal topic name: ",
                                s.message()));
  }
  if (!p.records.router.fixed_topic.empty()) {
    if (absl::Status s = CheckTopicName(p.records.router.fixed_topic);
        !s.ok()) {
      return Invalid(absl::StrCat("--topic: ", s.message()));
    }
  }
  if (absl::Status s = CheckTopicName(p.records.dlq_topic); !s.ok()) {
    return Invalid(absl::StrCat("--dlq-topic: ", s.message()));
  }
  return absl::OkStatus();
}

// What a record's value is and what happens to one that cannot be made:
// --on-invalid, --value-format and CloudEvents.
absl::Status EncodingFromFlags(const OutboxdFlags& f, PublisherOptions& p) {
  ASSIGN_OR_RETURN(p.on_invalid,
                   flags::ParseChoice<InvalidEventPolicy>(
                       "--on-invalid", f.on_invalid,
                       {{"dead-letter", InvalidEventPolicy::kDeadLetter},
                        {"fail", InvalidEventPolicy::kFail}}));
  ASSIGN_OR_RETURN(p.records.value_format,
                   Parsed("--value-format", f.value_format, ParseValueFormat));
  ASSIGN_OR_RETURN(
      p.records.cloudevents.mode,
      Parsed("--cloudevents", f.cloudevents, ParseCloudEventsMode));
  if (p.records.cloudevents.mode == CloudEventsMode::kStructured &&
      p.records.value_format != ValueFormat::kPayload) {
    // The document is the value: an envelope has no place in it.
    return Invalid(absl::StrCat(
        "--cloudevents=structured needs --value-format=payload (the "
        "CloudEvents document is the value), not '",
        ValueFormatName(p.records.value_format), "'"));
  }
  if (f.cloudevents_source.has_value()) {
    if (absl::Status s = CheckCloudEventsSource(*f.cloudevents_source);
        !s.ok()) {
      return Invalid(absl::StrCat("--cloudevents-source: ", s.message()));
    }
    p.records.cloudevents.source = *f.cloudevents_source;
  }
  return absl::OkStatus();
}

// --max-batch-delay, or its deprecated name --read-coalesce.
absl::StatusOr<absl::Duration> MaxBatchDelay(const OutboxdFlags& f) {
  if (f.read_coalesce.has_value() && f.max_batch_delay_given) {
    return Invalid(
        "--read-coalesce is the deprecated name of --max-batch-delay: give "
        "only --max-batch-delay");
  }
  const bool old_name = f.read_coalesce.has_value();
  const absl::Duration d = old_name ? *f.read_coalesce : f.max_batch_delay;
  RETURN_IF_ERROR(
      flags::CheckBetween(old_name ? "--read-coalesce" : "--max-batch-delay", d,
                          absl::ZeroDuration(), kMaxBatchDelayLimit));
  return d;
}

// The delivery guarantee and the run's timing: transactions, the stall
// alarm, read coalescing, the shutdown wait and the reconnect backoff.
absl::Status DeliveryFromFlags(const OutboxdFlags& f, PublisherOptions& p) {
  ASSIGN_OR_RETURN(p.delivery,
                   flags::ParseChoice<DeliveryGuarantee>(
                       "--delivery", f.delivery,
                       {{"at-least-once", DeliveryGuarantee::kAtLeastOnce},
                        {"exactly-once", DeliveryGuarantee::kExactlyOnce}}));
  p.transactions.transactional_id = f.transactional_id;
  RETURN_IF_ERROR(flags::CheckBetween("--transaction-interval",
                                      f.transaction_interval,
                                      absl::ZeroDuration(), absl::Seconds(30)));
  p.transactions.batch.interval = f.transaction_interval;
  RETURN_IF_ERROR(flags::CheckNotNegative("--stall-timeout", f.stall_timeout));
  p.session.stall_timeout = f.stall_timeout;
  if (p.delivery == DeliveryGuarantee::kExactlyOnce &&
      p.session.stall_timeout > absl::ZeroDuration() &&
      p.session.stall_timeout <= p.transactions.batch.interval) {
    // Events stay pending until their Kafka transaction commits.
    return Invalid(
        "--stall-timeout must be longer than --transaction-interval with "
        "--delivery=exactly-once (or 0)");
  }
  ASSIGN_OR_RETURN(p.session.coalesce, MaxBatchDelay(f));
  RETURN_IF_ERROR(
      flags::CheckNotNegative("--shutdown-timeout", f.shutdown_timeout));
  p.shutdown_timeout = f.shutdown_timeout;
  p.session.reconnect.initial_backoff = f.reconnect_backoff_initial;
  p.session.reconnect.max_backoff = f.reconnect_backoff_max;
  if (p.session.reconnect.initial_backoff <= absl::ZeroDuration() ||
      p.session.reconnect.max_backoff < p.session.reconnect.initial_backoff) {
    return Invalid(
        "--reconnect-backoff-initial must be positive and at most "
        "--reconnect-backoff-max");
  }
  RETURN_IF_ERROR(
      flags::CheckNotNegative("--reconnect-give-up", f.reconnect_give_up));
  p.session.reconnect.give_up_after = f.reconnect_give_up;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PublisherOptions> PublisherOptionsFromFlags(
    const OutboxdFlags& f) {
  PublisherOptions p;
  ASSIGN_OR_RETURN(p.producer, ProducerFromFlags(f));
  RETURN_IF_ERROR(RoutingFromFlags(f, p));
  RETURN_IF_ERROR(EncodingFromFlags(f, p));
  RETURN_IF_ERROR(DeliveryFromFlags(f, p));
  return p;
}

absl::StatusOr<CdcOptions> CdcOptionsFromFlags(
    const OutboxdFlags& f, const PublisherOptions& publisher) {
  CdcSourceOptions s;
  ASSIGN_OR_RETURN(s.setup.tables, TablesFromFlags(f));
  s.mapper.tables = s.setup.tables;
  ASSIGN_OR_RETURN(s.mapper.columns, ColumnsFromFlags(f));
  s.mapper.message_prefix = f.message_prefix;
  ASSIGN_OR_RETURN(s.on_slot_loss,
                   flags::ParseChoice<SlotLossPolicy>(
                       "--on-slot-loss", f.on_slot_loss,
                       {{"fail", SlotLossPolicy::kFail},
                        {"republish", SlotLossPolicy::kRepublish}}));
  if (s.on_slot_loss == SlotLossPolicy::kRepublish && s.setup.tables.empty()) {
    return Invalid(
        "--on-slot-loss=republish needs --table (logical decoding messages "
        "cannot be republished)");
  }
  ASSIGN_OR_RETURN(s.setup.failover, flags::ParseChoice<FailoverSlot>(
                                         "--failover-slot", f.failover_slot,
                                         {{"auto", FailoverSlot::kAuto},
                                          {"on", FailoverSlot::kOn},
                                          {"off", FailoverSlot::kOff}}));
  RETURN_IF_ERROR(
      flags::CheckNotNegative("--republish-margin", f.republish_margin));
  s.republish_margin = f.republish_margin;
  RETURN_IF_ERROR(flags::CheckPositive("--status-interval", f.status_interval,
                                       absl::Minutes(10)));
  s.status_interval = f.status_interval;
  RETURN_IF_ERROR(flags::CheckBetween("--standby-poll-interval",
                                      f.standby_poll_interval,
                                      absl::Milliseconds(1), absl::Minutes(1)));
  s.standby_poll_interval = f.standby_poll_interval;
  if (f.slot.empty() || f.publication.empty()) {
    return Invalid("--slot and --publication must not be empty");
  }
  if (!IsSlotName(f.slot)) {
    return Invalid(absl::StrCat("--slot: '", f.slot,
                                "' cannot name a slot (lower case letters, "
                                "digits and underscores, at most 63)"));
  }
  s.setup.slot = f.slot;
  s.setup.publication = f.publication;

  CdcOptions o;
  if (f.cleanup_after > absl::ZeroDuration() && s.setup.tables.empty()) {
    return Invalid(
        "--cleanup-after needs --table (it deletes the table's rows)");
  }
  o.cleanup_after = f.cleanup_after;
  RETURN_IF_ERROR(
      flags::CheckNotNegative("--reconcile-interval", f.reconcile_interval));
  RETURN_IF_ERROR(
      flags::CheckNotNegative("--reconcile-margin", f.reconcile_margin));
  o.reconcile_interval = f.reconcile_interval;
  o.reconcile_margin = f.reconcile_margin;
  if (f.reconcile_batch < 1 || f.reconcile_batch > 10000000) {
    return Invalid(absl::StrCat("--reconcile-batch must be between 1 and ",
                                "10000000, not ", f.reconcile_batch));
  }
  o.reconcile_batch = f.reconcile_batch;
  RETURN_IF_ERROR(flags::CheckNotNegative("--slot-metrics-interval",
                                          f.slot_metrics_interval));
  o.slot_metrics_interval = f.slot_metrics_interval;
  ASSIGN_OR_RETURN(o.streams, StreamsFromFlags(f, s, publisher.delivery));
  return o;
}

absl::StatusOr<PollSourceOptions> PollOptionsFromFlags(
    const OutboxdFlags& f, const PublisherOptions& publisher) {
  // What needs the stream's positions, which polled rows do not have.
  if (publisher.delivery == DeliveryGuarantee::kExactlyOnce) {
    return Invalid(absl::StrCat(
        "--delivery=exactly-once is supported with --source=cdc only, not '",
        f.source, "'"));
  }
  if (publisher.records.router.fixed_partition >= 0) {
    // Polled records carry outbox.seq, which is insertion order, not
    // commit order: no (outbox.lsn, outbox.index) total order to promise.
    return Invalid(absl::StrCat(
        "--ordering=global needs --source=cdc: polled records carry "
        "outbox.seq, which is not commit order (README \"The ordering "
        "hazard of polling\"), not '",
        f.source, "'"));
  }
  if (f.pg.size() > 1) {
    return Invalid(absl::StrCat("--pg: --source=", f.source,
                                " reads one database; several --pg need "
                                "--source=cdc"));
  }
  ASSIGN_OR_RETURN(std::vector<QualifiedName> tables, TablesFromFlags(f));
  if (tables.empty()) {
    return Invalid(absl::StrCat("--source=", f.source, " needs --table"));
  }
  if (tables.size() > 1) {
    // One poller reads one table, and outbox.source names that table.
    return Invalid(absl::StrCat(
        "--table: --source=", f.source,
        " publishes from one table; several tables need --source=cdc"));
  }
  PollSourceOptions o;
  o.poller.conninfo = f.pg.front();
  o.poller.table = tables.front();
  ASSIGN_OR_RETURN(o.poller.columns, ColumnsFromFlags(f));
  if (f.batch_size < 1 || f.batch_size > 1000000) {
    return Invalid("--batch-size must be between 1 and 1000000");
  }
  o.poller.batch_size = f.batch_size;
  ASSIGN_OR_RETURN(o.poller.cleanup, flags::ParseChoice<PollCleanup>(
                                         "--poll-cleanup", f.poll_cleanup,
                                         {{"mark", PollCleanup::kMark},
                                          {"delete", PollCleanup::kDelete}}));
  RETURN_IF_ERROR(flags::CheckNotNegative("--poll-grace", f.poll_grace));
  o.poller.grace = f.poll_grace;
  if (f.source == "notify") {
    if (f.notify_channel.empty()) {
      return Invalid("--notify-channel must not be empty");
    }
    o.poller.notify_channel = f.notify_channel;
  }
  RETURN_IF_ERROR(flags::CheckPositive("--poll-interval", f.poll_interval));
  o.poll_interval = f.poll_interval;
  return o;
}

absl::StatusOr<std::vector<CdcStream>> StreamsFromFlags(
    const OutboxdFlags& f, const CdcSourceOptions& source,
    DeliveryGuarantee delivery) {
  RETURN_IF_ERROR(CheckDatabases(f, delivery));
  const std::vector<std::string>& pgs = f.pg;
  const std::vector<std::string>& dbs = f.databases;
  auto stream = [&source](std::string conninfo, std::string slot,
                          std::string name, size_t server) {
    CdcStream s{source, std::move(name), server};
    s.source.conninfo = std::move(conninfo);
    s.source.setup.slot = std::move(slot);
    return s;
  };
  if (pgs.size() == 1 && dbs.empty()) {
    return std::vector<CdcStream>{stream(pgs.front(), f.slot, "", 0)};
  }
  std::vector<CdcStream> streams;
  for (size_t server = 0; server < pgs.size(); ++server) {
    absl::StatusOr<ConninfoTarget> target =
        Parsed("--pg", pgs[server], ConninfoServerAndDatabase);
    if (!target.ok()) return target.status();
    std::vector<std::string> databases = dbs;
    if (databases.empty()) {
      if (target->database.empty()) {
        return Invalid(absl::StrCat(
            "--pg: '", RedactConninfo(pgs[server]),
            "' names no dbname; with several --pg each names its database "
            "(or --databases names them)"));
      }
      RETURN_IF_ERROR(CheckSlotOfDatabase("--pg", f.slot, target->database));
      databases.push_back(target->database);
    }
    for (const std::string& db : databases) {
      ASSIGN_OR_RETURN(std::string conninfo,
                       ConninfoWithDatabase(pgs[server], db));
      std::string name =
          pgs.size() == 1 ? db : absl::StrCat(target->server, "/", db);
      if (absl::c_any_of(streams, [&](const CdcStream& other) {
            return other.name == name;
          })) {
        return Invalid(absl::StrCat("--pg: '", name,
                                    "' twice (the same server and database)"));
      }
      streams.push_back(stream(std::move(conninfo),
                               absl::StrCat(f.slot, "_", db), std::move(name),
                               server));
    }
  }
  return streams;
}

absl::StatusOr<OutboxdOptions> OptionsFromFlags(const OutboxdFlags& f) {
  if (f.pg.empty() ||
      absl::c_any_of(f.pg, [](const std::string& pg) { return pg.empty(); })) {
    return Invalid("--pg is required (libpq conninfo or URI)");
  }
  ASSIGN_OR_RETURN(bool cdc,
                   flags::ParseChoice<bool>(
                       "--source", f.source,
                       {{"cdc", true}, {"poll", false}, {"notify", false}}));
  OutboxdOptions o;
  if (!f.metrics_address.empty() && !SplitHostPort(f.metrics_address)) {
    return Invalid(absl::StrCat("--metrics-address: '", f.metrics_address,
                                "' is not HOST:PORT"));
  }
  o.metrics_address = f.metrics_address;
  ASSIGN_OR_RETURN(o.publisher, PublisherOptionsFromFlags(f));
  if (cdc) {
    ASSIGN_OR_RETURN(o.source, CdcOptionsFromFlags(f, o.publisher));
  } else {
    ASSIGN_OR_RETURN(o.source, PollOptionsFromFlags(f, o.publisher));
  }
  return o;
}

}  // namespace outboxd
