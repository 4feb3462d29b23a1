// outboxd's options from its flags: the values of the command line
// (OutboxdFlags, read by cli/main.cc, where the flags are defined) become
// OutboxdOptions, area by area (the publisher, the CDC streams, the poller),
// each rule checked once. Pure: no flag registry, no I/O but reading
// --kafka-config, so every rule is a unit test (cli/options_test.cc).
//
// A value that parses but makes no sense is kInvalidArgument with one line
// naming the flag (dashed), which outboxd prints and exits 2 with. Flags
// given for another --source (or --cloudevents) mode are refused before, by
// cli/main.cc, which knows which flag was given.
#ifndef OUTBOXD_CLI_OPTIONS_H_
#define OUTBOXD_CLI_OPTIONS_H_

#include <cstddef>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "outbox/row_to_event.h"
#include "pipeline/publisher.h"
#include "sources/cdc_source.h"
#include "sources/poll_source.h"

namespace outboxd {

// The values of outboxd's flags as given (or defaulted), unchecked; one
// field per flag of the same name (README "Flags").
struct OutboxdFlags {
  std::vector<std::string> pg;  // every --pg, in order
  std::string brokers;
  std::string source;
  std::string metrics_address;

  // The Publisher.
  std::string topic_prefix;
  std::string topic;
  std::string ordering;
  std::string dlq_topic;
  std::string on_invalid;
  std::string value_format;
  std::string cloudevents;
  std::optional<std::string> cloudevents_source;  // nullopt: not given
  std::string kafka_config;
  std::vector<std::string> kafka_property;  // every one, in order
  std::string delivery;
  std::string transactional_id;
  absl::Duration transaction_interval;
  absl::Duration stall_timeout;
  absl::Duration max_batch_delay;
  bool max_batch_delay_given = false;
  // --read-coalesce, the deprecated name of --max-batch-delay; nullopt:
  // not given.
  std::optional<absl::Duration> read_coalesce;
  absl::Duration shutdown_timeout;
  absl::Duration reconnect_backoff_initial;
  absl::Duration reconnect_backoff_max;
  absl::Duration reconnect_give_up;

  // The outbox table(s), whatever the source.
  std::string table;
  OutboxColumns columns;  // --column-*

  // --source=cdc.
  std::vector<std::string> databases;
  std::string slot;
  std::string publication;
  std::string message_prefix;
  std::string on_slot_loss;
  std::string failover_slot;
  absl::Duration republish_margin;
  absl::Duration reconcile_interval;
  absl::Duration reconcile_margin;
  int reconcile_batch = 100000;
  absl::Duration cleanup_after;
  absl::Duration status_interval;
  absl::Duration standby_poll_interval;
  absl::Duration slot_metrics_interval;

  // --source=poll and notify.
  absl::Duration poll_interval;
  int batch_size = 0;
  std::string poll_cleanup;
  absl::Duration poll_grace;
  std::string notify_channel;
};

// One CDC stream of the run: its source (conninfo and slot included), its
// name (the log prefix "[name] " and the metrics' source label; "" when it
// is the only stream) and the index of its --pg (one slot monitor per
// server).
struct CdcStream {
  CdcSourceOptions source;  // its `republish` is MakeCdcSource's to set
  std::string name;
  size_t server = 0;
};

// --source=cdc: the streams, and the threads beside them.
struct CdcOptions {
  std::vector<CdcStream> streams;  // at least one
  // How often the slots are read for their metrics; 0: never.
  absl::Duration slot_metrics_interval;
  // Outbox rows older than this behind the confirmed position are
  // deleted; 0: none.
  absl::Duration cleanup_after;
  // The reconciler of each stream (pipeline/reconciler.h): how often; 0:
  // none. Rows younger than the margin are not judged.
  absl::Duration reconcile_interval;
  absl::Duration reconcile_margin;
  int reconcile_batch = 100000;  // rows a pass fetches at most
};

// Everything outboxd's flags make.
struct OutboxdOptions {
  PublisherOptions publisher;
  std::variant<CdcOptions, PollSourceOptions> source;  // poll: and notify
  std::string metrics_address;                         // "": no server
};

absl::StatusOr<OutboxdOptions> OptionsFromFlags(const OutboxdFlags& flags);

// The areas OptionsFromFlags puts together, each checking its own flags
// (and its rules that involve the others'), in this order.
absl::StatusOr<PublisherOptions> PublisherOptionsFromFlags(
    const OutboxdFlags& flags);
// `publisher`: for the rules that only cdc can honour.
absl::StatusOr<CdcOptions> CdcOptionsFromFlags(
    const OutboxdFlags& flags, const PublisherOptions& publisher);
absl::StatusOr<PollSourceOptions> PollOptionsFromFlags(
    const OutboxdFlags& flags, const PublisherOptions& publisher);

// The CDC streams of --pg (repeatable) and --databases, server by server,
// each a copy of `source` with its own conninfo and slot:
//  - one --pg: one stream, slot --slot, no name; with --databases one per
//    database, named by it, slot --slot_<database>, the --pg a template
//    whose dbname is replaced;
//  - several --pg: one stream per --pg (its own dbname), or with
//    --databases one per --pg and database, named <server>/<database>
//    (server: host[:port] as written in the --pg), slot --slot_<database>.
//    Two streams of one name (the same server and database) are refused;
//    the same server spelled two ways is not seen here (the second stream
//    would wait for the slot as a standby).
// --delivery=exactly-once publishes one database per process.
absl::StatusOr<std::vector<CdcStream>> StreamsFromFlags(
    const OutboxdFlags& flags, const CdcSourceOptions& source,
    DeliveryGuarantee delivery);

}  // namespace outboxd

#endif  // OUTBOXD_CLI_OPTIONS_H_
