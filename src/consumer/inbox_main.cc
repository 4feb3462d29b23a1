// outbox-inbox: the idempotent consumer as a command-line tool. Consumes
// topics with a Kafka consumer group and applies each event exactly once to
// PostgreSQL by running --handler-sql in the transaction that records the
// event id (see consumer/inbox.h).
//
// Exit codes: 0 after SIGTERM/SIGINT, 1 after a runtime failure (cause
// logged), 2 for bad flags.
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/stop_signal.h"
#include "consumer/inbox.h"
#include "flags/flags.h"
#include "pg/connection.h"

ABSL_FLAG(std::string, pg, "",
          "PostgreSQL libpq conninfo or URI of the receiving database "
          "(required)");
ABSL_FLAG(std::string, brokers, "", "Kafka bootstrap servers (required)");
ABSL_FLAG(std::string, group, "", "Kafka consumer group id (required)");
ABSL_FLAG(std::string, topics, "",
          "comma-separated topics to consume, ^regex allowed (required)");
ABSL_FLAG(std::string, handler_sql, "",
          "SQL run once per new event, in the transaction that records its "
          "id (required). Parameters, all text: $1 key, $2 value, $3 headers "
          "(JSON object), $4 topic, $5 partition, $6 offset, $7 event id, $8 "
          "timestamp (ms), $9 the CloudEvents attributes (JSON object; NULL "
          "for a record that is not a CloudEvent; $2 is then its data); cast "
          "as needed ($2::jsonb, $6::bigint)");
ABSL_FLAG(std::string, processed_table, "inbox_processed",
          "table of processed event ids (created if missing)");
ABSL_FLAG(std::string, offsets_table, "inbox_offsets",
          "table of consumed offsets, committed with each effect");
ABSL_FLAG(std::string, sources_table, "inbox_sources",
          "table of the newest (outbox.lsn, outbox.index) per outbox.source");
ABSL_FLAG(int, max_attempts, 5,
          "attempts of the handler before --on-failure applies");
ABSL_FLAG(absl::Duration, retry_backoff, absl::Milliseconds(200),
          "first retry delay; doubles up to --max-retry-backoff");
ABSL_FLAG(absl::Duration, max_retry_backoff, absl::Seconds(10),
          "largest retry delay");
ABSL_FLAG(std::string, on_failure, "dead-letter",
          "after --max-attempts: dead-letter (to --dlq-topic, go on) or stop "
          "(exit 1, the offset is not committed)");
ABSL_FLAG(std::string, dlq_topic, "inbox.dlq", "dead-letter topic");
ABSL_FLAG(absl::Duration, dependency_wait, absl::Seconds(30),
          "how long an event waits for the events in its outbox.depends-on "
          "header");
ABSL_FLAG(std::string, on_missing_dependency, "dead-letter",
          "after --dependency-wait: dead-letter or proceed (apply anyway)");
ABSL_FLAG(std::string, value_format, "payload",
          "how outboxd encoded the values (its --value-format): payload, "
          "envelope-json or protobuf; the handler's $2 is the payload");
ABSL_FLAG(std::string, instance_id, "auto",
          "static group membership id (group.instance.id): a member "
          "restarted with the same id takes its partitions back at once. "
          "auto: <host name>-<n>, n the lowest number no other outbox-inbox "
          "of this group on this host holds (a lock file in "
          "$OUTBOX_INBOX_LOCK_DIR, default /tmp); none: dynamic membership");
ABSL_FLAG(absl::Duration, session_timeout, absl::Seconds(10),
          "how long the group waits for a silent member (crashed, or stopped "
          "and not restarted) before its partitions go to the others");
ABSL_FLAG(std::vector<std::string>, kafka_property, {},
          "key=value passed to librdkafka; repeatable");
ABSL_FLAG(std::string, log_level, "info",
          "trace, debug, info, warn, error, critical or off");

namespace outboxd {
namespace {

constexpr char kUsage[] =
    "outbox-inbox: applies outbox events from Kafka to PostgreSQL exactly "
    "once\n\n"
    "usage: outbox-inbox --pg=CONNINFO --brokers=HOST:PORT --group=ID "
    "--topics=T[,T] --handler-sql=SQL [flags]";

// Characters a lock file name and a group.instance.id may hold.
std::string Sanitized(absl::string_view text) {
  std::string out;
  for (char c : text) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    out.push_back(ok ? c : '_');
  }
  return out;
}

// --instance-id=auto: "<host>-<n>" with the lowest n whose lock file this
// process can lock. The lock is held until the process ends (the kernel
// releases it on a crash too), so two live members of one group on one host
// never share an id, and a member restarted alone gets its old id back.
absl::StatusOr<std::string> AutoInstanceId(const std::string& group) {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') {
    return absl::FailedPreconditionError(
        "--instance-id=auto: no host name; set --instance-id");
  }
  const char* env = std::getenv("OUTBOX_INBOX_LOCK_DIR");
  const std::string dir = env != nullptr && env[0] != '\0' ? env : "/tmp";
  for (int n = 0; n < 1000; ++n) {
    std::string path =
        absl::StrCat(dir, "/outbox-inbox-", Sanitized(group), "-", n, ".lock");
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("--instance-id=auto: cannot open ", path, ": ",
                       std::strerror(errno), "; set --instance-id"));
    }
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
      return absl::StrCat(Sanitized(host), "-", n);  // fd stays open
    }
    close(fd);
  }
  return absl::FailedPreconditionError(
      "--instance-id=auto: 1000 members on this host; set --instance-id");
}

absl::StatusOr<InboxOptions> OptionsFromFlags(
    const flags::ParsedCommandLine& cmd) {
  InboxOptions o;
  ASSIGN_OR_RETURN(o.conninfo, flags::RequiredFlag(FLAGS_pg));
  ASSIGN_OR_RETURN(o.brokers, flags::RequiredFlag(FLAGS_brokers));
  ASSIGN_OR_RETURN(o.group_id, flags::RequiredFlag(FLAGS_group));
  for (absl::string_view t :
       absl::StrSplit(absl::GetFlag(FLAGS_topics), ',', absl::SkipEmpty())) {
    o.topics.emplace_back(t);
  }
  if (o.topics.empty()) {
    return absl::InvalidArgumentError("--topics is required");
  }
  RETURN_IF_ERROR(flags::RequiredFlag(FLAGS_handler_sql).status());
  o.processed_table = absl::GetFlag(FLAGS_processed_table);
  o.offsets_table = absl::GetFlag(FLAGS_offsets_table);
  o.sources_table = absl::GetFlag(FLAGS_sources_table);
  auto ddl = InboxTablesDdl(o);
  if (!ddl.ok()) return ddl.status();
  o.max_attempts = absl::GetFlag(FLAGS_max_attempts);
  if (o.max_attempts < 1) {
    return absl::InvalidArgumentError("--max-attempts must be at least 1");
  }
  o.retry_backoff = absl::GetFlag(FLAGS_retry_backoff);
  o.max_retry_backoff = absl::GetFlag(FLAGS_max_retry_backoff);
  if (o.retry_backoff < absl::ZeroDuration() ||
      o.max_retry_backoff < o.retry_backoff) {
    return absl::InvalidArgumentError(
        "--retry-backoff must be >= 0 and <= --max-retry-backoff");
  }
  ASSIGN_OR_RETURN(
      o.on_failure,
      flags::ChoiceFlag<FailurePolicy>(
          FLAGS_on_failure, {{"dead-letter", FailurePolicy::kDeadLetter},
                             {"stop", FailurePolicy::kStop}}));
  ASSIGN_OR_RETURN(o.dlq_topic, flags::NonEmptyFlag(FLAGS_dlq_topic));
  ASSIGN_OR_RETURN(o.dependency_wait,
                   flags::NotNegativeFlag(FLAGS_dependency_wait));
  ASSIGN_OR_RETURN(o.on_missing_dependency,
                   flags::ChoiceFlag<MissingDependencyPolicy>(
                       FLAGS_on_missing_dependency,
                       {{"dead-letter", MissingDependencyPolicy::kDeadLetter},
                        {"proceed", MissingDependencyPolicy::kProceed}}));
  ASSIGN_OR_RETURN(o.value_format,
                   flags::ParsedFlag(FLAGS_value_format, ParseValueFormat));
  ASSIGN_OR_RETURN(o.session_timeout,
                   flags::BetweenFlag(FLAGS_session_timeout,
                                      absl::Milliseconds(1), absl::Hours(1)));
  o.instance_id = absl::GetFlag(FLAGS_instance_id);
  if (o.instance_id.empty()) {
    return absl::InvalidArgumentError(
        "--instance-id must not be empty (auto, none or an id)");
  }
  if (o.instance_id == "none") o.instance_id.clear();
  RETURN_IF_ERROR(
      flags::AppendKeyValueFlags(cmd, "kafka_property", &o.kafka_properties));
  return o;
}

// The handler: --handler-sql with the record's parts as text parameters.
InboxHandler SqlHandler(std::string sql) {
  return [sql = std::move(sql)](PgConnection& tx,
                                const InboxRecord& r) -> absl::Status {
    std::string partition = absl::StrCat(r.partition);
    std::string offset = absl::StrCat(r.offset);
    std::string timestamp = absl::StrCat(r.timestamp_ms);
    std::string headers = r.HeadersJson();
    std::string cloudevent;
    if (r.cloudevent.has_value()) {
      cloudevent = CloudEventAttributesJson(*r.cloudevent);
    }
    for (const auto* v : {&r.key, &r.value}) {
      if (v->has_value() && (*v)->find('\0') != std::string::npos) {
        return absl::InvalidArgumentError(
            "key or value contains a NUL byte; --handler-sql takes text");
      }
    }
    const char* values[9] = {
        r.key.has_value() ? r.key->c_str() : nullptr,
        r.value.has_value() ? r.value->c_str() : nullptr,
        headers.c_str(),
        r.topic.c_str(),
        partition.c_str(),
        offset.c_str(),
        r.event_id.c_str(),
        timestamp.c_str(),
        r.cloudevent.has_value() ? cloudevent.c_str() : nullptr};
    constexpr Oid kText = 25;
    const Oid types[9] = {kText, kText, kText, kText, kText,
                          kText, kText, kText, kText};
    PgResult res(PQexecParams(tx.raw(), sql.c_str(), 9, types, values, nullptr,
                              nullptr, 0));
    ExecStatusType st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
      return StatusFromPgResult("--handler-sql", res.get(), tx.raw());
    }
    return absl::OkStatus();
  };
}

// The inbox's run, once its flags are read.
absl::Status Run(InboxOptions& options) {
  if (options.instance_id == "auto") {
    ASSIGN_OR_RETURN(options.instance_id, AutoInstanceId(options.group_id));
  }
  std::atomic<bool>& stop = InstallStopSignals();

  spdlog::info(
      "outbox-inbox {} starting: pg {} brokers {} group {} topics {} "
      "instance {} session timeout {}",
      OUTBOXD_VERSION, RedactConninfo(options.conninfo), options.brokers,
      options.group_id, absl::GetFlag(FLAGS_topics),
      options.instance_id.empty() ? "(dynamic)" : options.instance_id,
      absl::FormatDuration(options.session_timeout));
  auto inbox =
      Inbox::Create(options, SqlHandler(absl::GetFlag(FLAGS_handler_sql)));
  if (!inbox.ok()) {
    // Options the inbox refuses are bad flags too: exit 2.
    absl::Status s(inbox.status().code(),
                   absl::StrCat("cannot start: ", inbox.status().message()));
    return absl::IsInvalidArgument(s) ? flags::WithExitCode(s, 2) : s;
  }
  return (*inbox)->Run(stop);
}

int Main(int argc, char** argv) {
  const flags::Program program = {
      "outbox-inbox",           OUTBOXD_VERSION,    kUsage,
      "consumer/inbox_main.cc", {"kafka_property"}, &FLAGS_log_level};
  InboxOptions options;
  return flags::RunMain(
      argc, argv, program,
      [&](const flags::ParsedCommandLine& cmd) -> absl::Status {
        ASSIGN_OR_RETURN(options, OptionsFromFlags(cmd));
        return absl::OkStatus();
      },
      [&] { return Run(options); });
}

}  // namespace
}  // namespace outboxd

int main(int argc, char** argv) { return outboxd::Main(argc, argv); }
