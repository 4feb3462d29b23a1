// outboxd: publishes transactional-outbox events from PostgreSQL to Kafka.
//
// Flags live here (README "Flags"); libraries take option structs.
// Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 1 after a runtime
// failure (its cause logged), 2 for bad flags.
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/algorithm/container.h"
#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/stop_signal.h"
#include "flags/flags.h"
#include "metrics/http_server.h"
#include "metrics/outboxd_metrics.h"
#include "outbox/cloudevents.h"
#include "outbox/value_format.h"
#include "pg/connection.h"
#include "pipeline/cdc_pipeline.h"
#include "pipeline/outbox_cleaner.h"
#include "pipeline/publisher.h"
#include "pipeline/slot_monitor.h"
#include "sources/poll_source.h"

ABSL_FLAG(std::string, pg, "",
          "PostgreSQL libpq conninfo or URI (required); its password is "
          "never printed. PGPASSWORD / PGPASSFILE work as usual; "
          "connect_timeout is 10 s unless it or PGCONNECT_TIMEOUT says "
          "otherwise. cdc: "
          "repeatable, one stream per --pg (several servers), each named "
          "<host[:port]>/<dbname> with slot --slot_<dbname>; with "
          "--databases each --pg is a template");
ABSL_FLAG(std::string, brokers, "",
          "Kafka bootstrap servers, HOST:PORT[,...] (required)");
ABSL_FLAG(std::string, table, "public.outbox",
          "outbox table, schema-qualified, or a comma-separated list of them "
          "(cdc: each routed the same way, header outbox.table names it; "
          "poll/notify: one table); \"\" for logical decoding messages only");
ABSL_FLAG(std::vector<std::string>, databases, {},
          "cdc: stream from these databases of the server --pg points to "
          "(of each --pg), in one process (--pg is the template: its dbname "
          "is replaced); slot --slot_<database> in each, one shared "
          "producer");
ABSL_FLAG(std::string, slot, "outbox_slot",
          "logical replication slot, created with pgoutput if missing");
ABSL_FLAG(std::string, publication, "outbox_pub",
          "publication, created FOR TABLE <every --table> WITH (publish = "
          "'insert') if missing; an existing one must publish inserts of "
          "every --table");
ABSL_FLAG(std::string, topic_prefix, "outbox.event.",
          "topic = prefix + aggregatetype");
ABSL_FLAG(std::string, topic, "",
          "one fixed topic for every event (overrides --topic-prefix "
          "routing)");
ABSL_FLAG(std::string, source, "cdc",
          "where events come from: cdc (WAL via logical replication), poll "
          "(SELECT ... FOR UPDATE SKIP LOCKED every --poll-interval) or "
          "notify (poll woken by LISTEN; install sql/outbox_notify.sql)");
ABSL_FLAG(absl::Duration, poll_interval, absl::Seconds(1),
          "poll/notify period");
ABSL_FLAG(int, batch_size, 500,
          "poll/notify: rows per batch (one transaction); a full batch is "
          "followed by the next at once");
ABSL_FLAG(std::string, poll_cleanup, "mark",
          "poll/notify: after acknowledgement, mark rows (published_at) or "
          "delete them");
ABSL_FLAG(absl::Duration, poll_grace, absl::ZeroDuration(),
          "poll/notify: take only rows whose created_at is at least this "
          "old, so a slower concurrent transaction with a lower seq is "
          "published first (README: the ordering hazard)");
ABSL_FLAG(std::string, notify_channel, "outbox",
          "notify: the LISTEN channel of sql/outbox_notify.sql");
ABSL_FLAG(std::string, message_prefix, "outbox",
          "publish transactional logical decoding messages with this prefix "
          "(pg_logical_emit_message(true, prefix, json)); \"\" disables");
ABSL_FLAG(std::vector<std::string>, kafka_property, {},
          "key=value passed to librdkafka; repeatable, applied after "
          "--kafka-config");
ABSL_FLAG(std::string, kafka_config, "",
          "file of librdkafka key=value lines (# comments)");
ABSL_FLAG(std::string, metrics_address, "127.0.0.1:9187",
          "host:port for /metrics (Prometheus), /healthz and /readyz; port "
          "0 picks a free port (logged); \"\" disables");
ABSL_FLAG(absl::Duration, stall_timeout, absl::Seconds(60),
          "events pending and nothing acknowledged by Kafka for this long: "
          "/readyz fails, outboxd_stalled{reason} is 1 and one warning is "
          "logged (README \"Stall alarm\"); 0 disables");
ABSL_FLAG(absl::Duration, slot_metrics_interval, absl::Seconds(10),
          "cdc: how often to read pg_replication_slots for "
          "outboxd_slot_retained_wal_bytes and outboxd_slot_wal_status (a "
          "normal connection of its own); 0 disables");
ABSL_FLAG(absl::Duration, status_interval, absl::Seconds(1),
          "interval of standby status updates to PostgreSQL");
ABSL_FLAG(absl::Duration, read_coalesce, absl::Milliseconds(5),
          "after reading live transactions, wait before reading the source "
          "again, 1 ms per 1,000 transactions/s from 2,000/s up to this, so "
          "that several share one wakeup and one Kafka batch (less CPU per "
          "event; adds at most this much latency); 0: read at once");
ABSL_FLAG(absl::Duration, standby_poll_interval, absl::Milliseconds(20),
          "while the slot is active in another process (a standby), how "
          "often to ask whether it still is (one query); a takeover starts "
          "within about this long");
ABSL_FLAG(std::string, column_id, "id", "outbox column: event id");
ABSL_FLAG(std::string, column_aggregate_type, "aggregatetype",
          "outbox column: aggregate type (routes the topic)");
ABSL_FLAG(std::string, column_aggregate_id, "aggregateid",
          "outbox column: aggregate id (the Kafka key)");
ABSL_FLAG(std::string, column_type, "type",
          "outbox column: event type (header eventType)");
ABSL_FLAG(std::string, column_payload, "payload",
          "outbox column: payload (the Kafka value)");
ABSL_FLAG(std::string, column_headers, "headers",
          "optional outbox column: jsonb object of string headers; \"\" to "
          "ignore");
ABSL_FLAG(std::string, column_depends_on, "depends_on",
          "optional outbox column: uuid[] of event ids this event depends "
          "on, published as header outbox.depends-on; \"\" to ignore");
ABSL_FLAG(std::string, column_content_type, "content_type",
          "optional outbox column: the payload's media type per row (the "
          "CloudEvents datacontenttype); absent or NULL: application/json "
          "for json/jsonb payloads, application/octet-stream for bytea, "
          "text/plain for text; \"\" to ignore");
ABSL_FLAG(std::string, cloudevents, "off",
          "publish CloudEvents 1.0 (Kafka protocol binding): off, binary "
          "(value = payload, ce_* and content-type headers) or structured "
          "(value = application/cloudevents+json document; needs "
          "--value-format=payload)");
ABSL_FLAG(std::string, cloudevents_source, "",
          "the CloudEvents source attribute, a URI-reference (default "
          "/outboxd/<system identifier>/<database>/<slot or table>, from "
          "outbox.source)");
ABSL_FLAG(std::string, ordering, "aggregate",
          "aggregate: key = aggregate id, order per aggregate across "
          "partitions; global: every event to partition 0 of --topic, one "
          "total order (outbox.lsn, outbox.index)");
ABSL_FLAG(std::string, dlq_topic, "outbox.dlq",
          "dead-letter topic for events that cannot be published");
ABSL_FLAG(std::string, on_invalid, "dead-letter",
          "what to do with an invalid event: dead-letter (to --dlq-topic, "
          "go on) or fail (stop without confirming past it)");
ABSL_FLAG(absl::Duration, cleanup_after, absl::ZeroDuration(),
          "cdc: delete outbox rows older than this whose transaction the "
          "slot has confirmed (needs DELETE on --table); 0 disables");
ABSL_FLAG(std::string, value_format, "payload",
          "Kafka record value: payload (the payload column, as Debezium), "
          "envelope-json (every field of the event as JSON) or protobuf "
          "(outboxd.v1.OutboxEvent, proto/outbox_event.proto)");
ABSL_FLAG(std::string, log_format, "text",
          "log line format on stderr: text or json (one object per line)");
ABSL_FLAG(std::string, log_level, "info",
          "trace, debug, info, warn, error, critical or off");
ABSL_FLAG(absl::Duration, shutdown_timeout, absl::Seconds(8),
          "on SIGTERM/SIGINT, how long to wait for outstanding "
          "acknowledgements");
ABSL_FLAG(std::string, delivery, "at-least-once",
          "at-least-once (a restart may resend what Kafka already has) or "
          "exactly-once (cdc only, Apache Kafka only: Kafka transactions "
          "with a checkpoint of this source's position; consumers must read "
          "with isolation.level=read_committed; see README Reliability)");
ABSL_FLAG(std::string, transactional_id, "",
          "--delivery=exactly-once: Kafka transactional.id, also the "
          "consumer group holding the checkpoint; one per source "
          "(default outboxd-<system identifier>-<database>-<slot>)");
ABSL_FLAG(absl::Duration, transaction_interval, absl::Milliseconds(100),
          "--delivery=exactly-once: commit the Kafka transaction at the "
          "first PostgreSQL commit after it is this old (adds up to this "
          "much latency)");
ABSL_FLAG(std::string, on_slot_loss, "fail",
          "cdc: when the slot outboxd streamed from is gone, invalidated or "
          "re-created (failover, dropped, max_slot_wal_keep_size): fail (exit "
          "1 naming the last acknowledged position) or republish (re-create "
          "the slot and publish again from --table every row that may have "
          "committed since; duplicates, no loss)");
ABSL_FLAG(absl::Duration, republish_margin, absl::Hours(1),
          "--on-slot-loss=republish also takes rows whose created_at is at "
          "most this much before the last acknowledged commit time (covers "
          "long transactions and rows frozen by VACUUM); --cleanup-after "
          "keeps rows this much older than that commit time");
ABSL_FLAG(absl::Duration, reconnect_backoff_initial, absl::Milliseconds(100),
          "first wait before reconnecting to PostgreSQL after the "
          "connection is lost (replication, or the poller's with "
          "--source=poll|notify) or the slot is active in another outboxd; "
          "doubles per attempt, jittered");
ABSL_FLAG(absl::Duration, reconnect_backoff_max, absl::Seconds(5),
          "cap of the reconnect backoff; also how often a standby outboxd "
          "checks whether the slot became free");
ABSL_FLAG(absl::Duration, reconnect_give_up, absl::ZeroDuration(),
          "exit 1 after being unable to stream (or poll) for this long (0: "
          "retry forever)");

namespace outboxd {
namespace {

constexpr char kUsage[] =
    "outboxd: publishes transactional-outbox events from PostgreSQL to "
    "Kafka\n\n"
    "usage: outboxd --pg=CONNINFO --brokers=HOST:PORT[,...] [flags]";

// A flag that `source` would ignore, given on the command line whatever its
// value, is refused (README "Flags": the mode column), rather than ignored.
absl::Status RefuseOtherModesFlags(const flags::ParsedCommandLine& cmd,
                                   const std::string& source) {
  if (source == "cdc") {
    return flags::OnlyFor(
        cmd, "--source=poll or notify",
        {FLAGS_poll_interval, FLAGS_batch_size, FLAGS_poll_cleanup,
         FLAGS_poll_grace, FLAGS_notify_channel});
  }
  // The slot, the stream's positions and what is built on them
  // (exactly-once transactions, lost-slot republishing, cleanup behind the
  // confirmed position), and logical decoding messages, which only the
  // stream carries.
  RETURN_IF_ERROR(flags::OnlyFor(
      cmd, "--source=cdc",
      {FLAGS_databases, FLAGS_slot, FLAGS_publication, FLAGS_status_interval,
       FLAGS_slot_metrics_interval, FLAGS_standby_poll_interval,
       FLAGS_message_prefix, FLAGS_on_slot_loss, FLAGS_republish_margin,
       FLAGS_cleanup_after, FLAGS_transactional_id,
       FLAGS_transaction_interval}));
  if (source == "poll") {
    return flags::OnlyFor(cmd, "--source=notify", {FLAGS_notify_channel});
  }
  return absl::OkStatus();
}

// --cloudevents and the flags that only it reads; needs
// pub.records.value_format.
absl::Status CloudEventsFromFlags(const flags::ParsedCommandLine& cmd,
                                  PublisherOptions& pub) {
  ASSIGN_OR_RETURN(pub.records.cloudevents.mode,
                   flags::ParsedFlag(FLAGS_cloudevents, ParseCloudEventsMode));
  if (pub.records.cloudevents.mode == CloudEventsMode::kOff) {
    return flags::OnlyFor(
        cmd, "--cloudevents=binary or structured",
        {FLAGS_cloudevents_source, FLAGS_column_content_type});
  }
  if (pub.records.cloudevents.mode == CloudEventsMode::kStructured &&
      pub.records.value_format != ValueFormat::kPayload) {
    // The document is the value: an envelope has no place in it.
    return absl::InvalidArgumentError(absl::StrCat(
        "--cloudevents=structured needs --value-format=payload (the "
        "CloudEvents document is the value), not '",
        ValueFormatName(pub.records.value_format), "'"));
  }
  pub.records.cloudevents.source = absl::GetFlag(FLAGS_cloudevents_source);
  if (flags::IsSet(cmd, FLAGS_cloudevents_source)) {
    RETURN_IF_ERROR(
        flags::ParsedFlag(FLAGS_cloudevents_source,
                          [](const std::string& s) -> absl::StatusOr<bool> {
                            RETURN_IF_ERROR(CheckCloudEventsSource(s));
                            return true;
                          })
            .status());
  }
  return absl::OkStatus();
}

// Every --pg (repeatable), in order; "--pg is required" when there is none
// or one is empty.
absl::StatusOr<std::vector<std::string>> PgFlags(
    const flags::ParsedCommandLine& cmd) {
  auto it = cmd.repeated.find("pg");
  if (it == cmd.repeated.end() || it->second.empty() ||
      absl::c_any_of(it->second,
                     [](const std::string& pg) { return pg.empty(); })) {
    return absl::InvalidArgumentError(
        "--pg is required (libpq conninfo or URI)");
  }
  return it->second;
}

// --slot_<database> is a slot name, and slot names are cluster-wide: the
// database (named by `flag`) must make a legal one.
absl::Status CheckSlotOfDatabase(absl::string_view flag,
                                 const std::string& slot,
                                 const std::string& db) {
  bool legal = !db.empty() && slot.size() + 1 + db.size() <= 63;
  for (char c : db) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) {
      legal = false;
    }
  }
  if (legal) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(flag, ": '", db,
                   "' cannot name a slot (--slot + '_' + database: lower "
                   "case letters, digits and underscores, at most 63)"));
}

// Flag values that parse but make no sense, as one line each.
absl::StatusOr<CdcPipelineOptions> OptionsFromFlags(
    const flags::ParsedCommandLine& cmd) {
  CdcPipelineOptions o;
  PublisherOptions& pub = o.publisher;
  CdcSourceOptions& cdc = o.source;
  ASSIGN_OR_RETURN(const std::vector<std::string> pgs, PgFlags(cmd));
  cdc.conninfo = pgs.front();
  ASSIGN_OR_RETURN(std::string brokers,
                   flags::RequiredFlag(FLAGS_brokers, "HOST:PORT[,...]"));
  for (absl::string_view b : absl::StrSplit(brokers, ',')) {
    size_t colon = b.rfind(':');
    int port = 0;
    if (colon == absl::string_view::npos || colon == 0 ||
        !absl::SimpleAtoi(b.substr(colon + 1), &port) || port <= 0 ||
        port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("--brokers: '", b, "' is not HOST:PORT"));
    }
  }
  ASSIGN_OR_RETURN(std::string source,
                   flags::OneOfFlag(FLAGS_source, {"cdc", "poll", "notify"}));
  RETURN_IF_ERROR(RefuseOtherModesFlags(cmd, source));
  if (pgs.size() > 1 && source != "cdc") {
    return absl::InvalidArgumentError(
        absl::StrCat("--pg: --source=", source,
                     " reads one database; several --pg need --source=cdc"));
  }
  RETURN_IF_ERROR(flags::PositiveFlag(FLAGS_poll_interval).status());
  ASSIGN_OR_RETURN(
      cdc.status_interval,
      flags::PositiveFlag(FLAGS_status_interval, absl::Minutes(10)));
  ASSIGN_OR_RETURN(pub.session.coalesce,
                   flags::BetweenFlag(FLAGS_read_coalesce, absl::ZeroDuration(),
                                      absl::Milliseconds(100)));
  ASSIGN_OR_RETURN(cdc.standby_poll_interval,
                   flags::BetweenFlag(FLAGS_standby_poll_interval,
                                      absl::Milliseconds(1), absl::Minutes(1)));
  ASSIGN_OR_RETURN(pub.shutdown_timeout,
                   flags::NotNegativeFlag(FLAGS_shutdown_timeout));
  ASSIGN_OR_RETURN(pub.session.stall_timeout,
                   flags::NotNegativeFlag(FLAGS_stall_timeout));
  RETURN_IF_ERROR(flags::NotNegativeFlag(FLAGS_slot_metrics_interval).status());
  pub.session.reconnect.initial_backoff =
      absl::GetFlag(FLAGS_reconnect_backoff_initial);
  pub.session.reconnect.max_backoff =
      absl::GetFlag(FLAGS_reconnect_backoff_max);
  if (pub.session.reconnect.initial_backoff <= absl::ZeroDuration() ||
      pub.session.reconnect.max_backoff <
          pub.session.reconnect.initial_backoff) {
    return absl::InvalidArgumentError(
        "--reconnect-backoff-initial must be positive and at most "
        "--reconnect-backoff-max");
  }
  ASSIGN_OR_RETURN(pub.session.reconnect.give_up_after,
                   flags::NotNegativeFlag(FLAGS_reconnect_give_up));
  ASSIGN_OR_RETURN(
      pub.delivery,
      flags::ChoiceFlag<DeliveryGuarantee>(
          FLAGS_delivery, {{"at-least-once", DeliveryGuarantee::kAtLeastOnce},
                           {"exactly-once", DeliveryGuarantee::kExactlyOnce}}));
  if (pub.delivery == DeliveryGuarantee::kExactlyOnce && source != "cdc") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--delivery=exactly-once is supported with --source=cdc only, not '",
        source, "'"));
  }
  pub.transactions.transactional_id = absl::GetFlag(FLAGS_transactional_id);
  ASSIGN_OR_RETURN(pub.transactions.batch.interval,
                   flags::BetweenFlag(FLAGS_transaction_interval,
                                      absl::ZeroDuration(), absl::Seconds(30)));
  if (pub.delivery == DeliveryGuarantee::kExactlyOnce &&
      pub.session.stall_timeout > absl::ZeroDuration() &&
      pub.session.stall_timeout <= pub.transactions.batch.interval) {
    // Events stay pending until their Kafka transaction commits.
    return absl::InvalidArgumentError(
        "--stall-timeout must be longer than --transaction-interval with "
        "--delivery=exactly-once (or 0)");
  }

  ASSIGN_OR_RETURN(
      cdc.on_slot_loss,
      flags::ChoiceFlag<SlotLossPolicy>(
          FLAGS_on_slot_loss, {{"fail", SlotLossPolicy::kFail},
                               {"republish", SlotLossPolicy::kRepublish}}));
  ASSIGN_OR_RETURN(cdc.republish_margin,
                   flags::NotNegativeFlag(FLAGS_republish_margin));

  std::string table = absl::GetFlag(FLAGS_table);
  if (absl::GetFlag(FLAGS_cleanup_after) > absl::ZeroDuration() &&
      table.empty()) {
    return absl::InvalidArgumentError(
        "--cleanup-after needs --table (it deletes the table's rows)");
  }
  if (cdc.on_slot_loss == SlotLossPolicy::kRepublish && table.empty()) {
    return absl::InvalidArgumentError(
        "--on-slot-loss=republish needs --table (logical decoding messages "
        "cannot be republished)");
  }
  if (!table.empty()) {
    ASSIGN_OR_RETURN(std::vector<QualifiedName> names,
                     flags::ParsedFlag(FLAGS_table, ParseQualifiedNameList));
    if (names.size() > 1 && source != "cdc") {
      // One poller reads one table, and outbox.source names that table.
      return absl::InvalidArgumentError(absl::StrCat(
          "--table: --source=", source,
          " publishes from one table; several tables need --source=cdc"));
    }
    cdc.setup.tables = names;
    cdc.mapper.tables = std::move(names);
  }
  cdc.setup.slot = absl::GetFlag(FLAGS_slot);
  cdc.setup.publication = absl::GetFlag(FLAGS_publication);
  if (cdc.setup.slot.empty() || cdc.setup.publication.empty()) {
    return absl::InvalidArgumentError(
        "--slot and --publication must not be empty");
  }
  for (char c : cdc.setup.slot) {
    // PostgreSQL's rule for slot names.
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--slot: '", cdc.setup.slot,
          "' may contain only lower case letters, digits and underscores"));
    }
  }
  for (const std::string& db : absl::GetFlag(FLAGS_databases)) {
    RETURN_IF_ERROR(CheckSlotOfDatabase("--databases", cdc.setup.slot, db));
  }
  if (const std::vector<std::string> dbs = absl::GetFlag(FLAGS_databases);
      !dbs.empty()) {
    for (size_t i = 0; i < dbs.size(); ++i) {
      for (size_t j = 0; j < i; ++j) {
        if (dbs[i] == dbs[j]) {
          return absl::InvalidArgumentError(
              absl::StrCat("--databases: '", dbs[i], "' given twice"));
        }
      }
    }
    if (pub.delivery == DeliveryGuarantee::kExactlyOnce) {
      return absl::InvalidArgumentError(
          "--databases: --delivery=exactly-once publishes one database per "
          "process (one transactional producer and checkpoint each)");
    }
  }
  if (pgs.size() > 1 && pub.delivery == DeliveryGuarantee::kExactlyOnce) {
    return absl::InvalidArgumentError(
        "--pg: --delivery=exactly-once publishes one database per process "
        "(one transactional producer and checkpoint each); give one --pg");
  }
  cdc.mapper.message_prefix = absl::GetFlag(FLAGS_message_prefix);
  cdc.mapper.columns.id = absl::GetFlag(FLAGS_column_id);
  cdc.mapper.columns.aggregate_type =
      absl::GetFlag(FLAGS_column_aggregate_type);
  cdc.mapper.columns.aggregate_id = absl::GetFlag(FLAGS_column_aggregate_id);
  cdc.mapper.columns.type = absl::GetFlag(FLAGS_column_type);
  cdc.mapper.columns.payload = absl::GetFlag(FLAGS_column_payload);
  cdc.mapper.columns.headers = absl::GetFlag(FLAGS_column_headers);
  cdc.mapper.columns.depends_on = absl::GetFlag(FLAGS_column_depends_on);
  cdc.mapper.columns.content_type = absl::GetFlag(FLAGS_column_content_type);
  for (const std::string* c :
       {&cdc.mapper.columns.id, &cdc.mapper.columns.aggregate_type,
        &cdc.mapper.columns.aggregate_id, &cdc.mapper.columns.type,
        &cdc.mapper.columns.payload}) {
    if (c->empty()) {
      return absl::InvalidArgumentError(
          "--column-* flags must not be empty "
          "(except --column-headers, --column-depends-on and "
          "--column-content-type)");
    }
  }

  pub.records.router.topic_prefix = absl::GetFlag(FLAGS_topic_prefix);
  pub.records.router.fixed_topic = absl::GetFlag(FLAGS_topic);
  std::string ordering = absl::GetFlag(FLAGS_ordering);
  if (ordering == "global") {
    if (pub.records.router.fixed_topic.empty()) {
      return absl::InvalidArgumentError(
          "--ordering=global needs --topic (one topic, one partition)");
    }
    if (source != "cdc") {
      // Polled records carry outbox.seq, which is insertion order, not
      // commit order: no (outbox.lsn, outbox.index) total order to promise.
      return absl::InvalidArgumentError(absl::StrCat(
          "--ordering=global needs --source=cdc: polled records carry "
          "outbox.seq, which is not commit order (README \"The ordering "
          "hazard of polling\"), not '",
          source, "'"));
    }
    pub.records.router.fixed_partition = 0;
  } else if (ordering != "aggregate") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--ordering must be aggregate or global, not '", ordering, "'"));
  }
  ASSIGN_OR_RETURN(pub.records.dlq_topic, flags::NonEmptyFlag(FLAGS_dlq_topic));
  // Flags that can only make topic names Kafka refuses. A prefix is illegal
  // when no aggregatetype can complete it into a legal name.
  if (absl::Status s =
          CheckTopicName(absl::StrCat(pub.records.router.topic_prefix, "x"));
      !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--topic-prefix makes no legal topic name: ", s.message()));
  }
  if (!pub.records.router.fixed_topic.empty()) {
    if (absl::Status s = CheckTopicName(pub.records.router.fixed_topic);
        !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--topic: ", s.message()));
    }
  }
  if (absl::Status s = CheckTopicName(pub.records.dlq_topic); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--dlq-topic: ", s.message()));
  }
  ASSIGN_OR_RETURN(
      pub.on_invalid,
      flags::ChoiceFlag<InvalidEventPolicy>(
          FLAGS_on_invalid, {{"dead-letter", InvalidEventPolicy::kDeadLetter},
                             {"fail", InvalidEventPolicy::kFail}}));

  ASSIGN_OR_RETURN(pub.records.value_format,
                   flags::ParsedFlag(FLAGS_value_format, ParseValueFormat));
  RETURN_IF_ERROR(CloudEventsFromFlags(cmd, pub));
  pub.producer.brokers = brokers;
  if (!absl::GetFlag(FLAGS_kafka_config).empty()) {
    ASSIGN_OR_RETURN(
        pub.producer.properties,
        flags::ParsedFlag(FLAGS_kafka_config, flags::ParseKeyValueFile));
  }
  RETURN_IF_ERROR(flags::AppendKeyValueFlags(cmd, "kafka_property",
                                             &pub.producer.properties));
  std::string metrics = absl::GetFlag(FLAGS_metrics_address);
  if (!metrics.empty()) {
    size_t colon = metrics.rfind(':');
    int port = 0;
    if (colon == std::string::npos ||
        !absl::SimpleAtoi(metrics.substr(colon + 1), &port) || port < 0 ||
        port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("--metrics-address: '", metrics, "' is not HOST:PORT"));
    }
  }
  return o;
}

// The polling sources' options: the table and columns from `cdc`, the rest
// from the poll flags.
absl::StatusOr<PollSourceOptions> PollOptionsFromFlags(
    const CdcSourceOptions& cdc) {
  PollSourceOptions o;
  const std::string source = absl::GetFlag(FLAGS_source);
  if (cdc.mapper.tables.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--source=", source, " needs --table"));
  }
  o.poller.conninfo = cdc.conninfo;
  o.poller.table = cdc.mapper.tables.front();
  o.poller.columns = cdc.mapper.columns;
  ASSIGN_OR_RETURN(o.poller.batch_size,
                   flags::IntBetweenFlag(FLAGS_batch_size, 1, 1000000));
  ASSIGN_OR_RETURN(o.poller.cleanup,
                   flags::ChoiceFlag<PollCleanup>(
                       FLAGS_poll_cleanup, {{"mark", PollCleanup::kMark},
                                            {"delete", PollCleanup::kDelete}}));
  ASSIGN_OR_RETURN(o.poller.grace, flags::NotNegativeFlag(FLAGS_poll_grace));
  if (source == "notify") {
    ASSIGN_OR_RETURN(o.poller.notify_channel,
                     flags::NonEmptyFlag(FLAGS_notify_channel));
  }
  o.poll_interval = absl::GetFlag(FLAGS_poll_interval);
  return o;
}

// One CDC stream of the run: where it reads, its slot, its name (the log
// prefix "[name] " and the metrics' source label; "" when it is the only
// stream) and the index of its --pg (one slot monitor per server).
struct StreamSpec {
  std::string conninfo;
  std::string slot;
  std::string name;
  size_t server = 0;
};

// The CDC streams of --pg (repeatable) and --databases, server by server:
//  - one --pg: one stream, slot --slot, no name; with --databases one per
//    database, named by it, slot --slot_<database>, the --pg a template
//    whose dbname is replaced;
//  - several --pg: one stream per --pg (its own dbname), or with
//    --databases one per --pg and database, named <server>/<database>
//    (server: host[:port] as written in the --pg), slot --slot_<database>.
//    Two streams of one name (the same server and database) are refused;
//    the same server spelled two ways is not seen here (the second stream
//    would wait for the slot as a standby).
absl::StatusOr<std::vector<StreamSpec>> StreamsFromFlags(
    const std::vector<std::string>& pgs, const std::string& slot) {
  const std::vector<std::string> dbs = absl::GetFlag(FLAGS_databases);
  if (pgs.size() == 1 && dbs.empty()) {
    return std::vector<StreamSpec>{{pgs.front(), slot, "", 0}};
  }
  std::vector<StreamSpec> specs;
  for (size_t server = 0; server < pgs.size(); ++server) {
    absl::StatusOr<ConninfoTarget> target =
        ConninfoServerAndDatabase(pgs[server]);
    if (!target.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--pg: ", target.status().message()));
    }
    std::vector<std::string> databases = dbs;
    if (databases.empty()) {
      if (target->database.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--pg: '", RedactConninfo(pgs[server]),
            "' names no dbname; with several --pg each names its database "
            "(or --databases names them)"));
      }
      RETURN_IF_ERROR(CheckSlotOfDatabase("--pg", slot, target->database));
      databases.push_back(target->database);
    }
    for (const std::string& db : databases) {
      StreamSpec spec;
      ASSIGN_OR_RETURN(spec.conninfo, ConninfoWithDatabase(pgs[server], db));
      spec.slot = absl::StrCat(slot, "_", db);
      spec.name = pgs.size() == 1 ? db : absl::StrCat(target->server, "/", db);
      spec.server = server;
      for (const StreamSpec& other : specs) {
        if (other.name == spec.name) {
          return absl::InvalidArgumentError(absl::StrCat(
              "--pg: '", spec.name, "' twice (the same server and database)"));
        }
      }
      specs.push_back(std::move(spec));
    }
  }
  return specs;
}

// outboxd's run, once its flags are read: `poll` is set for --source=poll
// and notify; `specs`, for cdc, are its streams (StreamsFromFlags).
absl::Status Run(CdcPipelineOptions& options,
                 const std::optional<PollSourceOptions>& poll,
                 const std::vector<StreamSpec>& specs) {
  std::atomic<bool>& stop = InstallStopSignals();

  // Metrics: one registry for the run, served on --metrics-address; with
  // several streams a view per stream, its series labelled source=<name>.
  const bool several = !specs.empty() && !specs.front().name.empty();
  metrics::Registry registry;
  metrics::OutboxdMetrics outboxd_metrics(
      &registry, several ? metrics::Sources::kSeveral : metrics::Sources::kOne);
  std::unique_ptr<metrics::MetricsServer> metrics_server;
  if (std::string address = absl::GetFlag(FLAGS_metrics_address);
      !address.empty()) {
    ASSIGN_OR_RETURN(
        metrics_server,
        metrics::MetricsServer::Start(address, &registry, [&outboxd_metrics] {
          return outboxd_metrics.NotReadyReason();
        }));
    spdlog::info("metrics on http://{}:{}/metrics", metrics_server->host(),
                 metrics_server->port());
    options.metrics = &outboxd_metrics;
  }
  // Polled positions are row seqs and batch numbers, not LSNs.
  if (poll.has_value()) outboxd_metrics.DropStageLsn();
  // cdc: the slots as PostgreSQL sees them, on a thread per server (one
  // connection and one query per round for every slot of the server).
  std::vector<std::unique_ptr<SlotMonitor>> slot_monitors;
  if (absl::Duration every = absl::GetFlag(FLAGS_slot_metrics_interval);
      !poll.has_value() && options.metrics != nullptr &&
      every > absl::ZeroDuration()) {
    for (size_t i = 0; i < specs.size(); ++i) {
      if (i > 0 && specs[i].server == specs[i - 1].server) continue;
      std::vector<WatchedSlot> slots;
      for (const StreamSpec& s : specs) {
        if (s.server != specs[i].server) continue;
        slots.push_back({s.slot, several ? &outboxd_metrics.ForSource(s.name)
                                         : &outboxd_metrics});
      }
      slot_monitors.push_back(
          SlotMonitor::Start({specs[i].conninfo, every}, std::move(slots)));
    }
  }

  // --cleanup-after: one thread for every (database, table), independent of
  // the streams; each target decides from its slot's publisher state row.
  OutboxCleanerOptions cleanup;
  cleanup.id_column = options.source.mapper.columns.id;
  cleanup.older_than = absl::GetFlag(FLAGS_cleanup_after);
  cleanup.republish_margin = options.source.republish_margin;
  cleanup.metrics = options.metrics;
  auto clean = [&cleanup](const CdcSourceOptions& source,
                          const std::string& name) {
    if (cleanup.older_than <= absl::ZeroDuration()) return;
    for (const QualifiedName& table : source.setup.tables) {
      cleanup.targets.push_back(
          {source.conninfo, table, source.setup.slot, name});
    }
  };
  std::unique_ptr<OutboxCleaner> cleaner;

  spdlog::info("outboxd {} starting: pg {}{} brokers {} table {} slot {}",
               OUTBOXD_VERSION, RedactConninfo(options.source.conninfo),
               specs.empty() || specs.back().server == 0
                   ? ""
                   : absl::StrCat(" and ", specs.back().server, " more --pg"),
               options.publisher.producer.brokers, absl::GetFlag(FLAGS_table),
               options.source.setup.slot);
  // Where events come from: one line per source.
  RunMetrics run_metrics(options.metrics);
  PublisherOptions publisher_options = options.publisher;
  publisher_options.stop_fd = StopSignalFd();  // a stop wakes the loop
  if (several) {
    // One source per stream, one Publisher and producer for all.
    std::vector<std::unique_ptr<EventSource>> sources;
    std::vector<PublisherStream> streams;
    for (const StreamSpec& spec : specs) {
      CdcPipelineOptions o = options;
      o.source.conninfo = spec.conninfo;
      o.source.setup.slot = spec.slot;
      // The stream's view (labelled source=<name>; nothing serves it when
      // metrics are off).
      metrics::OutboxdMetrics& view = outboxd_metrics.ForSource(spec.name);
      sources.push_back(MakeCdcSource(o, view, stop));
      streams.push_back({sources.back().get(), &view, spec.name});
      clean(o.source, spec.name);
    }
    if (!cleanup.targets.empty()) cleaner = OutboxCleaner::Start(cleanup);
    Publisher publisher(publisher_options, std::move(streams),
                        run_metrics.get());
    return publisher.Run(stop);
  }
  std::unique_ptr<EventSource> source;
  if (!poll.has_value()) {
    source = MakeCdcSource(options, run_metrics.get(), stop);
    clean(options.source, "");
    if (!cleanup.targets.empty()) cleaner = OutboxCleaner::Start(cleanup);
  } else {  // poll, notify
    source = NewPollSource(*poll, run_metrics.get());
  }
  Publisher publisher(publisher_options,
                      {PublisherStream{source.get(), nullptr, ""}},
                      run_metrics.get());
  return publisher.Run(stop);
}

int Main(int argc, char** argv) {
  const flags::Program program = {
      "outboxd",        OUTBOXD_VERSION,          kUsage,
      "cli/main.cc",    {"kafka_property", "pg"}, &FLAGS_log_level,
      &FLAGS_log_format};
  CdcPipelineOptions options;
  std::optional<PollSourceOptions> poll;
  std::vector<StreamSpec> specs;
  return flags::RunMain(
      argc, argv, program,
      [&](const flags::ParsedCommandLine& cmd) -> absl::Status {
        ASSIGN_OR_RETURN(options, OptionsFromFlags(cmd));
        if (absl::GetFlag(FLAGS_source) != "cdc") {
          ASSIGN_OR_RETURN(poll, PollOptionsFromFlags(options.source));
          return absl::OkStatus();
        }
        ASSIGN_OR_RETURN(std::vector<std::string> pgs, PgFlags(cmd));
        ASSIGN_OR_RETURN(specs,
                         StreamsFromFlags(pgs, options.source.setup.slot));
        return absl::OkStatus();
      },
      [&] { return Run(options, poll, specs); });
}

}  // namespace
}  // namespace outboxd

int main(int argc, char** argv) { return outboxd::Main(argc, argv); }
