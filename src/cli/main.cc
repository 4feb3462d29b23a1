// outboxd: publishes transactional-outbox events from PostgreSQL to Kafka.
//
// Flags live here (README "Flags"); cli/options.h makes outboxd's options of
// their values, and Run wires one Publisher of them.
// Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 1 after a runtime
// failure (its cause logged), 2 for bad flags.
#include <atomic>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "cli/options.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/stop_signal.h"
#include "flags/flags.h"
#include "metrics/http_server.h"
#include "metrics/outboxd_metrics.h"
#include "pg/connection.h"
#include "pipeline/cdc_pipeline.h"
#include "pipeline/publisher.h"
#include "pipeline/reconciler.h"
#include "sources/poll_source.h"
#include "upkeep/outbox_cleaner.h"
#include "upkeep/publication_monitor.h"
#include "upkeep/slot_monitor.h"

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
ABSL_FLAG(absl::Duration, max_batch_delay, absl::Milliseconds(10),
          "latency budget of batching live traffic: from 2,000 "
          "transactions/s, after a wakeup that read transactions, wait "
          "before reading the source again, in proportion to the rate and "
          "this long from 5,000/s on, so that several share one wakeup and "
          "one produce request; below 2,000/s no wait; 0: read at once");
ABSL_FLAG(absl::Duration, read_coalesce, absl::Milliseconds(10),
          "deprecated name of --max-batch-delay");
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
ABSL_FLAG(std::string, failover_slot, "auto",
          "cdc: create the slot as a failover slot, synchronized to physical "
          "standbys with sync_replication_slots = on so that a promoted "
          "standby has it: auto (where the server supports it, PostgreSQL "
          "17+), on (required: exit 1 on an older server) or off");
ABSL_FLAG(absl::Duration, republish_margin, absl::Hours(1),
          "--on-slot-loss=republish also takes rows whose created_at is at "
          "most this much before the last acknowledged commit time (covers "
          "long transactions and rows frozen by VACUUM); --cleanup-after "
          "keeps rows this much older than that commit time");
ABSL_FLAG(absl::Duration, reconcile_interval, absl::Seconds(30),
          "cdc: how often the reconciler looks for outbox rows older than "
          "--reconcile-margin that outboxd never published, and publishes "
          "them late (header outbox.reconciled; it confirms nothing); 0 "
          "disables; off when --table has no created_at column");
ABSL_FLAG(absl::Duration, reconcile_margin, absl::Minutes(1),
          "cdc: rows whose created_at is younger than this are not judged "
          "by the reconciler yet");
ABSL_FLAG(int, reconcile_batch, 100000,
          "cdc: the rows one reconciler pass fetches at most (its memory: "
          "about 100 bytes a row); a window with more (after a long stop) is "
          "judged over several passes that follow at once; 1 to 10000000");
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

// A flag that the --source (or --cloudevents=off) would ignore, given on the
// command line whatever its value, is refused (README "Flags": the mode
// column), rather than ignored. A --source that is none of the three is
// OptionsFromFlags' to refuse.
absl::Status RefuseFlagsOfOtherModes(const flags::ParsedCommandLine& cmd) {
  const std::string source = absl::GetFlag(FLAGS_source);
  if (source == "cdc") {
    RETURN_IF_ERROR(flags::OnlyFor(
        cmd, "--source=poll or notify",
        {FLAGS_poll_interval, FLAGS_batch_size, FLAGS_poll_cleanup,
         FLAGS_poll_grace, FLAGS_notify_channel}));
  } else if (source == "poll" || source == "notify") {
    // The slot, the stream's positions and what is built on them
    // (exactly-once transactions, lost-slot republishing, cleanup behind
    // the confirmed position), and logical decoding messages, which only
    // the stream carries.
    RETURN_IF_ERROR(flags::OnlyFor(
        cmd, "--source=cdc",
        {FLAGS_databases, FLAGS_slot, FLAGS_publication, FLAGS_status_interval,
         FLAGS_slot_metrics_interval, FLAGS_standby_poll_interval,
         FLAGS_message_prefix, FLAGS_on_slot_loss, FLAGS_failover_slot,
         FLAGS_republish_margin, FLAGS_reconcile_interval,
         FLAGS_reconcile_margin, FLAGS_reconcile_batch, FLAGS_cleanup_after,
         FLAGS_transactional_id, FLAGS_transaction_interval}));
    if (source == "poll") {
      RETURN_IF_ERROR(
          flags::OnlyFor(cmd, "--source=notify", {FLAGS_notify_channel}));
    }
  }
  if (absl::GetFlag(FLAGS_cloudevents) == "off") {
    return flags::OnlyFor(
        cmd, "--cloudevents=binary or structured",
        {FLAGS_cloudevents_source, FLAGS_column_content_type});
  }
  return absl::OkStatus();
}

// The command line's values, for OptionsFromFlags.
OutboxdFlags ReadFlags(const flags::ParsedCommandLine& cmd) {
  auto repeated = [&cmd](const std::string& name) {
    auto it = cmd.repeated.find(name);
    return it == cmd.repeated.end() ? std::vector<std::string>{} : it->second;
  };
  OutboxdFlags f;
  f.pg = repeated("pg");
  f.brokers = absl::GetFlag(FLAGS_brokers);
  f.source = absl::GetFlag(FLAGS_source);
  f.metrics_address = absl::GetFlag(FLAGS_metrics_address);

  f.topic_prefix = absl::GetFlag(FLAGS_topic_prefix);
  f.topic = absl::GetFlag(FLAGS_topic);
  f.ordering = absl::GetFlag(FLAGS_ordering);
  f.dlq_topic = absl::GetFlag(FLAGS_dlq_topic);
  f.on_invalid = absl::GetFlag(FLAGS_on_invalid);
  f.value_format = absl::GetFlag(FLAGS_value_format);
  f.cloudevents = absl::GetFlag(FLAGS_cloudevents);
  if (flags::IsSet(cmd, FLAGS_cloudevents_source)) {
    f.cloudevents_source = absl::GetFlag(FLAGS_cloudevents_source);
  }
  f.kafka_config = absl::GetFlag(FLAGS_kafka_config);
  f.kafka_property = repeated("kafka_property");
  f.delivery = absl::GetFlag(FLAGS_delivery);
  f.transactional_id = absl::GetFlag(FLAGS_transactional_id);
  f.transaction_interval = absl::GetFlag(FLAGS_transaction_interval);
  f.stall_timeout = absl::GetFlag(FLAGS_stall_timeout);
  f.max_batch_delay = absl::GetFlag(FLAGS_max_batch_delay);
  f.max_batch_delay_given = flags::IsSet(cmd, FLAGS_max_batch_delay);
  if (flags::IsSet(cmd, FLAGS_read_coalesce)) {
    f.read_coalesce = absl::GetFlag(FLAGS_read_coalesce);
  }
  f.shutdown_timeout = absl::GetFlag(FLAGS_shutdown_timeout);
  f.reconnect_backoff_initial = absl::GetFlag(FLAGS_reconnect_backoff_initial);
  f.reconnect_backoff_max = absl::GetFlag(FLAGS_reconnect_backoff_max);
  f.reconnect_give_up = absl::GetFlag(FLAGS_reconnect_give_up);

  f.table = absl::GetFlag(FLAGS_table);
  f.columns = {.id = absl::GetFlag(FLAGS_column_id),
               .aggregate_type = absl::GetFlag(FLAGS_column_aggregate_type),
               .aggregate_id = absl::GetFlag(FLAGS_column_aggregate_id),
               .type = absl::GetFlag(FLAGS_column_type),
               .payload = absl::GetFlag(FLAGS_column_payload),
               .headers = absl::GetFlag(FLAGS_column_headers),
               .depends_on = absl::GetFlag(FLAGS_column_depends_on),
               .content_type = absl::GetFlag(FLAGS_column_content_type)};

  f.databases = absl::GetFlag(FLAGS_databases);
  f.slot = absl::GetFlag(FLAGS_slot);
  f.publication = absl::GetFlag(FLAGS_publication);
  f.message_prefix = absl::GetFlag(FLAGS_message_prefix);
  f.on_slot_loss = absl::GetFlag(FLAGS_on_slot_loss);
  f.failover_slot = absl::GetFlag(FLAGS_failover_slot);
  f.republish_margin = absl::GetFlag(FLAGS_republish_margin);
  f.reconcile_interval = absl::GetFlag(FLAGS_reconcile_interval);
  f.reconcile_margin = absl::GetFlag(FLAGS_reconcile_margin);
  f.reconcile_batch = absl::GetFlag(FLAGS_reconcile_batch);
  f.cleanup_after = absl::GetFlag(FLAGS_cleanup_after);
  f.status_interval = absl::GetFlag(FLAGS_status_interval);
  f.standby_poll_interval = absl::GetFlag(FLAGS_standby_poll_interval);
  f.slot_metrics_interval = absl::GetFlag(FLAGS_slot_metrics_interval);

  f.poll_interval = absl::GetFlag(FLAGS_poll_interval);
  f.batch_size = absl::GetFlag(FLAGS_batch_size);
  f.poll_cleanup = absl::GetFlag(FLAGS_poll_cleanup);
  f.poll_grace = absl::GetFlag(FLAGS_poll_grace);
  f.notify_channel = absl::GetFlag(FLAGS_notify_channel);
  return f;
}

// The slots as PostgreSQL sees them, in the streams' metrics: a thread per
// server (one connection and one query per round for every slot of the
// server).
std::vector<std::unique_ptr<SlotMonitor>> StartSlotMonitors(
    const CdcOptions& cdc, metrics::OutboxdMetrics& metrics) {
  std::vector<std::unique_ptr<SlotMonitor>> monitors;
  if (cdc.slot_metrics_interval <= absl::ZeroDuration()) return monitors;
  const std::vector<CdcStream>& streams = cdc.streams;
  for (size_t i = 0; i < streams.size(); ++i) {
    if (i > 0 && streams[i].server == streams[i - 1].server) continue;
    std::vector<WatchedSlot> slots;
    for (const CdcStream& s : streams) {
      if (s.server != streams[i].server) continue;
      slots.push_back({s.source.setup.slot, &metrics.ForSource(s.name)});
    }
    monitors.push_back(SlotMonitor::Start(
        {streams[i].source.conninfo, cdc.slot_metrics_interval},
        std::move(slots)));
  }
  return monitors;
}

// Whether each stream's publication still carries its tables, checked
// every --status-interval (a thread and a connection per stream with a
// --table), with or without a metrics server: the warning matters either
// way.
std::vector<std::unique_ptr<PublicationMonitor>> StartPublicationMonitors(
    const CdcOptions& cdc, metrics::OutboxdMetrics& metrics) {
  std::vector<std::unique_ptr<PublicationMonitor>> monitors;
  for (const CdcStream& s : cdc.streams) {
    if (s.source.setup.tables.empty()) continue;
    PublicationMonitorOptions o;
    o.conninfo = s.source.conninfo;
    o.publication = s.source.setup.publication;
    o.tables = s.source.setup.tables;
    o.interval = s.source.status_interval;
    o.reconciler = cdc.reconcile_interval > absl::ZeroDuration();
    o.name = s.name.empty() ? "" : absl::StrCat("[", s.name, "] ");
    o.missing = metrics.ForSource(s.name).publication_missing_tables;
    monitors.push_back(PublicationMonitor::Start(std::move(o)));
  }
  return monitors;
}

// The reconciler of each stream with a --table (one thread each), comparing
// the table with `acknowledged[i]`, the ids stream i acknowledged.
std::vector<std::unique_ptr<Reconciler>> StartReconcilers(
    const CdcOptions& cdc, const PublisherOptions& publisher,
    const std::vector<AcknowledgedIds*>& acknowledged,
    metrics::OutboxdMetrics& metrics) {
  std::vector<std::unique_ptr<Reconciler>> reconcilers;
  for (size_t i = 0; i < cdc.streams.size(); ++i) {
    if (acknowledged[i] == nullptr) continue;
    const CdcStream& s = cdc.streams[i];
    ReconcilerOptions o;
    o.conninfo = s.source.conninfo;
    o.tables = s.source.setup.tables;
    o.columns = s.source.mapper.columns;
    o.slot = s.source.setup.slot;
    o.name = s.name.empty() ? "" : absl::StrCat("[", s.name, "] ");
    o.interval = cdc.reconcile_interval;
    o.margin = cdc.reconcile_margin;
    o.max_rows_per_pass = cdc.reconcile_batch;
    o.records = publisher.records;
    o.producer = publisher.producer;
    o.transactional = publisher.delivery == DeliveryGuarantee::kExactlyOnce;
    o.transactional_id = publisher.transactions.transactional_id;
    o.fail_on_invalid = publisher.on_invalid == InvalidEventPolicy::kFail;
    o.acknowledged = acknowledged[i];
    o.missing = metrics.ForSource(s.name).reconcile_missing;
    reconcilers.push_back(Reconciler::Start(std::move(o)));
  }
  return reconcilers;
}

// --cleanup-after: one thread for every (database, table), independent of
// the streams; each target decides from its slot's publisher state row.
std::unique_ptr<OutboxCleaner> StartCleaner(
    const CdcOptions& cdc, metrics::OutboxdMetrics* metrics,
    const std::vector<Reconciler*>& reconcilers) {
  if (cdc.cleanup_after <= absl::ZeroDuration()) return nullptr;
  OutboxCleanerOptions cleanup;
  const CdcSourceOptions& first = cdc.streams.front().source;
  cleanup.id_column = first.mapper.columns.id;
  cleanup.older_than = cdc.cleanup_after;
  cleanup.republish_margin = first.republish_margin;
  cleanup.metrics = metrics;
  for (size_t i = 0; i < cdc.streams.size(); ++i) {
    const CdcStream& s = cdc.streams[i];
    for (const QualifiedName& table : s.source.setup.tables) {
      cleanup.targets.push_back(
          {s.source.conninfo, table, s.source.setup.slot, s.name});
      if (Reconciler* r = reconcilers[i]; r != nullptr) {
        // Nothing the reconciler has not judged yet.
        cleanup.targets.back().judged_before = [r] {
          return r->judged_before_unix_us();
        };
      }
    }
  }
  return OutboxCleaner::Start(std::move(cleanup));
}

// The first line of a run: where it reads and where it publishes.
void LogStart(const OutboxdOptions& options) {
  const std::string& brokers = options.publisher.producer.brokers;
  if (const auto* poll = std::get_if<PollSourceOptions>(&options.source)) {
    spdlog::info("outboxd {} starting: pg {} brokers {} table {} source {}",
                 OUTBOXD_VERSION, RedactConninfo(poll->poller.conninfo),
                 brokers, poll->poller.table.ToString(),
                 poll->poller.notify_channel.empty() ? "poll" : "notify");
    return;
  }
  const std::vector<CdcStream>& streams =
      std::get<CdcOptions>(options.source).streams;
  std::vector<std::string> tables;
  for (const QualifiedName& t : streams.front().source.setup.tables) {
    tables.push_back(t.ToString());
  }
  size_t more = streams.back().server;
  spdlog::info("outboxd {} starting: pg {}{} brokers {} table {} slot {}",
               OUTBOXD_VERSION, RedactConninfo(streams.front().source.conninfo),
               more == 0 ? "" : absl::StrCat(" and ", more, " more --pg"),
               brokers, absl::StrJoin(tables, ","),
               streams.front().source.setup.slot);
}

// outboxd's run, once its flags are read: a Publisher of one stream per
// source (cdc: one per database, sharing the producer).
absl::Status Run(const OutboxdOptions& options) {
  std::atomic<bool>& stop = InstallStopSignals();
  const auto* cdc = std::get_if<CdcOptions>(&options.source);
  // Metrics: one registry for the run, served on --metrics-address (when
  // not, nobody reads it); each stream's per-source series are labelled
  // source=<name> when streams are named (--databases, several --pg).
  metrics::Registry registry;
  metrics::OutboxdMetrics outboxd_metrics(&registry);
  std::unique_ptr<metrics::MetricsServer> metrics_server;
  if (!options.metrics_address.empty()) {
    ASSIGN_OR_RETURN(
        metrics_server,
        metrics::MetricsServer::Start(
            options.metrics_address, &registry,
            [&outboxd_metrics] { return outboxd_metrics.NotReadyReason(); }));
    spdlog::info("metrics on http://{}:{}/metrics", metrics_server->host(),
                 metrics_server->port());
  }
  LogStart(options);

  std::vector<std::unique_ptr<EventSource>> sources;
  std::vector<PublisherStream> streams;
  std::vector<std::unique_ptr<SlotMonitor>> slot_monitors;
  std::vector<std::unique_ptr<PublicationMonitor>> publication_monitors;
  // Each stream's acknowledged ids and reconciler (--reconcile-interval),
  // then the cleaner that asks them: destroyed in the reverse order.
  std::vector<std::unique_ptr<AcknowledgedIds>> acknowledged;
  std::vector<std::unique_ptr<Reconciler>> reconcilers;
  std::unique_ptr<OutboxCleaner> cleaner;
  if (cdc != nullptr) {
    std::vector<AcknowledgedIds*> ids;
    for (const CdcStream& s : cdc->streams) {
      ids.push_back(nullptr);
      if (cdc->reconcile_interval > absl::ZeroDuration() &&
          !s.source.setup.tables.empty()) {
        acknowledged.push_back(std::make_unique<AcknowledgedIds>());
        ids.back() = acknowledged.back().get();
      }
      sources.push_back(MakeCdcSource({options.publisher, s.source, ids.back()},
                                      outboxd_metrics.ForSource(s.name), stop));
      streams.push_back({sources.back().get(), s.name, ids.back()});
    }
    if (metrics_server != nullptr) {
      slot_monitors = StartSlotMonitors(*cdc, outboxd_metrics);
    }
    publication_monitors = StartPublicationMonitors(*cdc, outboxd_metrics);
    reconcilers =
        StartReconcilers(*cdc, options.publisher, ids, outboxd_metrics);
    std::vector<Reconciler*> by_stream;
    for (size_t i = 0, next = 0; i < ids.size(); ++i) {
      by_stream.push_back(ids[i] == nullptr ? nullptr
                                            : reconcilers[next++].get());
    }
    cleaner = StartCleaner(
        *cdc, metrics_server != nullptr ? &outboxd_metrics : nullptr,
        by_stream);
  } else {
    // Polled positions are row seqs and batch numbers, not LSNs.
    outboxd_metrics.ForSource().DropStageLsn();
    sources.push_back(NewPollSource(std::get<PollSourceOptions>(options.source),
                                    outboxd_metrics));
    streams.push_back({sources.back().get(), ""});
  }
  PublisherOptions publisher_options = options.publisher;
  publisher_options.stop_fd = StopSignalFd();  // a stop wakes the loop
  Publisher publisher(publisher_options, std::move(streams), outboxd_metrics,
                      KafkaSinkFactory());
  return publisher.Run(stop);
}

int Main(int argc, char** argv) {
  const flags::Program program = {
      "outboxd",        OUTBOXD_VERSION,          kUsage,
      "cli/main.cc",    {"kafka_property", "pg"}, &FLAGS_log_level,
      &FLAGS_log_format};
  OutboxdOptions options;
  return flags::RunMain(
      argc, argv, program,
      [&](const flags::ParsedCommandLine& cmd) -> absl::Status {
        RETURN_IF_ERROR(RefuseFlagsOfOtherModes(cmd));
        ASSIGN_OR_RETURN(options, OptionsFromFlags(ReadFlags(cmd)));
        if (flags::IsSet(cmd, FLAGS_read_coalesce)) {
          spdlog::warn(
              "--read-coalesce is deprecated: use --max-batch-delay (same "
              "meaning)");
        }
        return absl::OkStatus();
      },
      [&] { return Run(options); });
}

}  // namespace
}  // namespace outboxd

int main(int argc, char** argv) { return outboxd::Main(argc, argv); }
