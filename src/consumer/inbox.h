// Inbox: the receiving side of the outbox. An idempotent Kafka consumer that
// applies each event exactly once to a PostgreSQL database.
//
// For each record, in ONE PostgreSQL transaction:
//   1. INSERT the event id (header `id`) into the processed table
//      ON CONFLICT DO NOTHING; no row inserted => a duplicate: skipped,
//      logged and counted;
//   2. otherwise run the handler with the open transaction;
//   3. store the record's next offset in the offsets table (and, when the
//      record carries outbox.source / outbox.lsn / outbox.index, the newest
//      position of that source in the sources table; a polled record's
//      outbox.seq is not a commit position and is not stored there);
//   4. COMMIT. Only then is the Kafka offset committed (asynchronously,
//      at most every `kafka_commit_interval`, and synchronously on
//      revocation and close).
// The offsets table, not Kafka's committed offset, is where a partition
// resumes after a rebalance or a crash: the offset and the effect commit
// atomically, so a SIGKILL at any moment neither loses nor repeats an
// effect, even without the processed table. The processed table removes the
// other duplicates: the same event published twice (publisher restarts,
// at-least-once delivery) at different offsets.
//
// Failures: a handler error rolls back and is retried with exponential
// backoff; after `max_attempts` the record goes to `dlq_topic` (headers
// inbox.error, inbox.attempts, inbox.topic, inbox.partition, inbox.offset
// added) and is marked 'dead-lettered' in the processed table, or, with
// FailurePolicy::kStop, Run() returns the error without committing it.
// Errors of the inbox's own statements (database down) are not the
// handler's fault: Run() returns them (kUnavailable), nothing is skipped.
//
// Causal order: a record whose header outbox.depends-on lists event ids is
// deferred until each of them is 'applied' in the processed table (by this
// or any other consumer of the group). A deferred record blocks only its own
// partition (later records of that partition queue behind it, in memory,
// and the partition is paused when the queue is long); other partitions go
// on. After `dependency_wait` it is dead-lettered or applied anyway
// (MissingDependencyPolicy).
//
// Threading: Run() uses the calling thread only; the handler runs on it.
// One Inbox per thread; several processes with the same group share the
// topics' partitions.
//
// Inside, the Inbox wires four parts, each with one job: the InboxStore
// (SQL, the per-record transaction), the GroupConsumer (kafka/: the group,
// rebalances, pause/resume, offset commits), the DependencyGate (causal
// deferral) and the DeadLetterSink.
#ifndef OUTBOXD_CONSUMER_INBOX_H_
#define OUTBOXD_CONSUMER_INBOX_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "consumer/inbox_record.h"
#include "outbox/value_format.h"
#include "pg/connection.h"

namespace outboxd {

// Runs inside the open transaction `tx` (BEGIN issued, COMMIT after it
// returns OK). A non-OK status rolls the transaction back and counts as a
// failed attempt. The handler must not COMMIT or ROLLBACK itself.
using InboxHandler =
    std::function<absl::Status(PgConnection& tx, const InboxRecord& record)>;

enum class FailurePolicy {
  kDeadLetter,  // after max_attempts: to dlq_topic, go on
  kStop,        // after max_attempts: Run() returns the error
};

enum class MissingDependencyPolicy {
  kDeadLetter,  // after dependency_wait: to dlq_topic, go on
  kProceed,     // after dependency_wait: apply it anyway
};

struct InboxOptions {
  std::string conninfo;  // libpq conninfo or URI
  std::string brokers;
  std::string group_id;
  std::vector<std::string> topics;  // "^regex" allowed, as librdkafka
  // Tables, schema-qualified or not; created if missing when
  // create_tables is set.
  std::string processed_table = "inbox_processed";
  std::string offsets_table = "inbox_offsets";
  std::string sources_table = "inbox_sources";
  bool create_tables = true;

  int max_attempts = 5;
  absl::Duration retry_backoff = absl::Milliseconds(200);  // doubles
  absl::Duration max_retry_backoff = absl::Seconds(10);
  FailurePolicy on_failure = FailurePolicy::kDeadLetter;
  std::string dlq_topic = "inbox.dlq";

  absl::Duration dependency_wait = absl::Seconds(30);
  MissingDependencyPolicy on_missing_dependency =
      MissingDependencyPolicy::kDeadLetter;
  // Deferred records queued per partition before it is paused.
  size_t max_deferred_per_partition = 10000;

  // Static group membership (group.instance.id) when not empty: a member
  // restarted with the same id takes its partitions back at once, without a
  // rebalance; it must be unique among the group's live members (a second
  // member with the same id fences the first). Empty: dynamic membership.
  std::string instance_id;
  // How long the group coordinator waits for a silent member (crashed, or
  // stopped without restart) before giving its partitions to the others.
  absl::Duration session_timeout = absl::Seconds(10);

  absl::Duration kafka_commit_interval = absl::Seconds(1);
  // librdkafka properties applied after the inbox's defaults
  // (enable.auto.commit=false, auto.offset.reset=earliest, ...), to the
  // consumer and to the dead-letter producer.
  std::vector<std::pair<std::string, std::string>> kafka_properties;

  // How outboxd encoded the values (its --value-format). With envelope-json
  // or protobuf the record's value, id, position and dependencies are taken
  // from the decoded envelope; the handler sees the payload as `value`.
  ValueFormat value_format = ValueFormat::kPayload;
};

struct InboxStats {
  uint64_t applied = 0;
  uint64_t duplicates = 0;
  uint64_t dead_lettered = 0;
  uint64_t failed_attempts = 0;
  uint64_t deferred = 0;                      // records that had to wait
  uint64_t applied_without_dependencies = 0;  // kProceed after the wait
};

class Inbox {
 public:
  // Checks the options, connects to PostgreSQL, creates the tables (if
  // asked) and the Kafka clients. kInvalidArgument for bad options.
  static absl::StatusOr<std::unique_ptr<Inbox>> Create(InboxOptions options,
                                                       InboxHandler handler);
  ~Inbox();
  Inbox(const Inbox&) = delete;
  Inbox& operator=(const Inbox&) = delete;

  // Consumes until `stop` becomes true (then commits, leaves the group and
  // returns OK) or until a failure it must not skip (returned).
  absl::Status Run(const std::atomic<bool>& stop);

  // Safe to read after Run() returned (or from the handler).
  const InboxStats& stats() const;

 private:
  struct Impl;
  explicit Inbox(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The DDL of the three tables (idempotent), for users who create them
// themselves (create_tables = false). Names as in `options`.
absl::StatusOr<std::string> InboxTablesDdl(const InboxOptions& options);

}  // namespace outboxd

#endif  // OUTBOXD_CONSUMER_INBOX_H_
